"""Importing HyenaDNA Hugging Face ("-hf") checkpoints: numerical parity with the reference outputs stored in
tests/data/hyenadna_hf (produced by the reference ``modeling_hyena.py``; see NOTES.md there), the tokenizer's
token ids, conversion to a native checkpoint, a checkpoint of another shape checked against an independent
float64 re-implementation of the reference forward, and the error paths (nothing half-loaded, no pickle
execution)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import dnalm
from dnalm.checkpoint import CheckpointError
from dnalm.cli import main as cli_main
from dnalm.models.hyena import HyenaConfig
from dnalm.formats.hyenadna_hf import HyenaDNAClassifier, is_hf_folder, load_hf, save_hf
from dnalm.models.lm import DNALM
from dnalm.tokenizer import SEP, UNK

DATA = Path(__file__).resolve().parent / "data"
HF = DATA / "hyenadna_hf"
TINY, TINY_CLS = HF / "tiny", HF / "tiny_cls"
LOGITS_TOL, HIDDEN_TOL = 1e-5, 3e-5  # NOTES.md "Observed tolerances" (float32, CPU)


def expected(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "expected.safetensors"))


def inputs(folder: Path) -> list[dict]:
    return json.loads((folder / "inputs.json").read_text())["inputs"]


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.float() - b.float()).abs().max())


@pytest.fixture(scope="module")
def lm() -> DNALM:
    return dnalm.load(TINY)


@pytest.fixture(scope="module")
def clf() -> HyenaDNAClassifier:
    return dnalm.load(TINY_CLS)


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    return dst


# ------------------------------------------------------------------------------------------ tokenizer


def test_fixture_inputs_are_the_stated_lambda_slices():
    """The inputs are real sequence: the slices inputs.json names, checked against our own copy of lambda."""
    lam = "".join(l.strip() for l in (DATA / "phage_lambda.fa").read_text().splitlines() if not l.startswith(">"))
    ins = inputs(TINY)
    assert ins[0]["sequence"] == lam[1000:1300] and ins[1]["sequence"] == lam[20000:20512]
    seg = list(lam[30000:30087])
    seg[20:30] = [c.lower() for c in seg[20:30]]
    seg[50], seg[60] = "n", "N"
    assert ins[2]["sequence"] == "ACGTacgtNN" + "".join(seg)


@pytest.mark.parametrize("folder", [TINY, TINY_CLS], ids=["tiny", "tiny_cls"])
def test_tokenizer_reproduces_checkpoint_ids(folder):
    model = dnalm.load(folder)
    exp = expected(folder)
    for x in inputs(folder):
        ids, _ = model.tokenizer.encode(x["sequence"])
        assert ids == x["input_ids"] == exp[f"{x['name']}.input_ids"][0].tolist()
        assert ids[-1] == SEP and len(ids) == len(x["sequence"]) + 1  # [SEP] appended, nothing prepended
    in2 = inputs(folder)[2]
    assert in2["input_ids"][4:8] == [UNK] * 4  # 'acgt' -> [UNK]: the reference does not upper-case
    seqs = [x["sequence"] for x in inputs(folder)]
    assert torch.equal(model.tokenizer.batch(seqs)["input_ids"], exp["batch_left_padded.input_ids"])
    if "batch_right_padded.input_ids" in exp:
        model.tokenizer.padding_side = "right"
        assert torch.equal(model.tokenizer.batch(seqs)["input_ids"], exp["batch_right_padded.input_ids"])


def test_lowercase_convention_can_be_switched_off():
    """lowercase="upper" reads soft-masked bases as bases: in2's ids and logits change, in0's do not."""
    native = load_hf(TINY, lowercase="upper", append_sep=False)
    x0, x2 = inputs(TINY)[0], inputs(TINY)[2]
    ids2, lower = native.tokenizer.encode(x2["sequence"])
    assert UNK not in ids2 and sum(lower) == 15 and ids2[-1] != SEP
    ids0, _ = native.tokenizer.encode(x0["sequence"])
    assert ids0 == x0["input_ids"][:-1]


# ------------------------------------------------------------------------------------------ causal LM parity


@pytest.mark.parametrize("name", ["in0", "in1", "in2"])
def test_causal_lm_reproduces_reference(lm, name):
    exp = expected(TINY)
    with torch.no_grad():
        out = lm(exp[f"{name}.input_ids"], output_hidden_states=True)
    hs = out.hidden_states
    assert len(hs) == lm.config.n_layer + 2
    assert maxdiff(out.logits, exp[f"{name}.logits"]) < LOGITS_TOL
    assert maxdiff(hs[0], exp[f"{name}.embeddings"]) < HIDDEN_TOL
    for i in range(lm.config.n_layer):
        assert maxdiff(hs[i + 1], exp[f"{name}.hidden_after_layer{i}"]) < HIDDEN_TOL
    assert maxdiff(hs[-1], exp[f"{name}.last_hidden_state"]) < HIDDEN_TOL


def test_causal_lm_left_padded_batch(lm):
    """Pads are processed like tokens (no mask exists), exactly as the reference does."""
    exp = expected(TINY)
    with torch.no_grad():
        logits = lm(exp["batch_left_padded.input_ids"]).logits
    assert maxdiff(logits, exp["batch_left_padded.logits"]) < LOGITS_TOL


def test_layer0_filter_and_mixer(lm):
    exp = expected(TINY)
    layer = lm.backbone.layers[0]
    with torch.no_grad():
        k = layer.mixer.long_filter(301)  # (D, L)
        mixed = layer.mixer(layer.norm1(exp["in0.embeddings"]))
    assert maxdiff(k.t()[None], exp["debug.layer0.filter_k_L301"]) < HIDDEN_TOL
    assert maxdiff(mixed, exp["debug.in0.layer0_mixer_output"]) < HIDDEN_TOL


def test_lm_head_is_the_files_own_tensor(lm):
    """The fixture's lm_head differs from the embedding on purpose; tying would be off by ~1.4."""
    assert lm.lm_head is not None and not lm.config.tie_embeddings
    assert not torch.equal(lm.lm_head.weight, lm.embed.weight)


def test_score_and_generate_use_the_checkpoint_conventions(lm):
    """score() equals log-likelihoods read off the reference logits (the first base is not scored: no [BOS];
    the [SEP] target is not scored); greedy generation continues after the last base, not after [SEP]."""
    exp = expected(TINY)
    x = inputs(TINY)[0]
    ids = exp["in0.input_ids"][0]
    logp = torch.log_softmax(exp["in0.logits"][0].double(), -1)  # (L, V)
    ref = sum(float(logp[t, ids[t + 1]]) for t in range(len(ids) - 2))  # targets: bases 1..n-1
    assert abs(float(dnalm.score(lm, x["sequence"])) - ref) < 1e-3
    assert dnalm.score(lm, x["sequence"], reduce="none").shape == (len(x["sequence"]) - 1,)
    out = dnalm.generate(lm, x["sequence"][:50], n_tokens=3, temperature=0)
    with torch.no_grad():
        step = lm(ids[None, :50]).logits[0, -1, 7:11]  # after base 50, over A C G T
    assert out[0] == "ACGT"[int(step.argmax())]


# ------------------------------------------------------------------------------------------ classifier parity


@pytest.mark.parametrize("name", ["in0", "in1", "in2"])
def test_classifier_reproduces_reference(clf, name):
    exp = expected(TINY_CLS)
    with torch.no_grad():
        out = clf(exp[f"{name}.input_ids"], output_hidden_states=True)
    assert maxdiff(out.logits, exp[f"{name}.pooled_logits"]) < LOGITS_TOL
    assert maxdiff(out.token_logits, exp[f"{name}.token_logits"]) < LOGITS_TOL
    assert maxdiff(out.hidden_states[-1], exp[f"{name}.last_hidden_state"]) < HIDDEN_TOL


@pytest.mark.parametrize("side", ["left", "right"])
def test_classifier_padded_batches(clf, side):
    exp = expected(TINY_CLS)
    with torch.no_grad():
        out = clf(exp[f"batch_{side}_padded.input_ids"])
    assert maxdiff(out.logits, exp[f"batch_{side}_padded.pooled_logits"]) < LOGITS_TOL
    assert out.pooled_index.tolist() == exp[f"batch_{side}_padded.pooled_index"].tolist()


def test_classifier_mask_pooling_and_classify(clf):
    """attention_mask pools each row's last real token: on a right-padded batch that is the reference's rule;
    classify() runs each sequence unpadded, which equals the reference's single-input outputs."""
    exp = expected(TINY_CLS)
    ids = exp["batch_right_padded.input_ids"]
    with torch.no_grad():
        masked = clf(ids, attention_mask=ids != 4)
    assert maxdiff(masked.logits, exp["batch_right_padded.pooled_logits"]) < LOGITS_TOL
    got = clf.classify([x["sequence"] for x in inputs(TINY_CLS)])
    want = torch.cat([exp[f"in{i}.pooled_logits"] for i in range(3)])
    assert maxdiff(got, want) < LOGITS_TOL


def test_classifier_fine_tunes(clf):
    """A gradient step on the imported classifier reaches the backbone and lowers the loss on its batch."""
    import copy

    model = copy.deepcopy(clf).train()
    exp = expected(TINY_CLS)
    ids = exp["batch_right_padded.input_ids"][:, :128]  # the first 128 tokens of each row: no padding
    labels = torch.tensor([0, 1, 1])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    loss0 = F.cross_entropy(model(ids).logits, labels)
    loss0.backward()
    assert model.lm.backbone.layers[0].mixer.in_proj.weight.grad.abs().sum() > 0
    opt.step()
    loss1 = F.cross_entropy(model(ids).logits, labels)
    assert loss1.item() < loss0.item()


# ------------------------------------------------------------------------------------------ convert


@pytest.mark.parametrize("folder", [TINY, TINY_CLS], ids=["tiny", "tiny_cls"])
def test_convert_writes_native_checkpoint_with_same_outputs(tmp_path, folder, capsys):
    dst = tmp_path / "converted"
    assert cli_main(["convert", str(folder), "--out", str(dst)]) == 0
    assert "differ from the import by 0" in capsys.readouterr().out
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "model.safetensors"]
    assert not is_hf_folder(dst)
    model = dnalm.load(dst)
    assert type(model) is (HyenaDNAClassifier if folder == TINY_CLS else DNALM)
    assert model.tokenizer.to_dict() == load_hf(folder).tokenizer.to_dict()
    exp = expected(folder)
    with torch.no_grad():
        for x in inputs(folder):
            assert model.tokenizer.encode(x["sequence"])[0] == x["input_ids"]
            out = model(exp[f"{x['name']}.input_ids"]).logits
            key = "pooled_logits" if folder == TINY_CLS else "logits"
            assert maxdiff(out, exp[f"{x['name']}.{key}"]) < LOGITS_TOL
    # a second convert to the same place is refused without --force
    assert cli_main(["convert", str(folder), "--out", str(dst)]) == 2
    assert cli_main(["convert", str(folder), "--out", str(dst), "--force", "--no-verify"]) == 0


# ------------------------------------------------------------------------------------------ other shapes


def reference_forward(state: dict[str, torch.Tensor], cfg: dict, ids: torch.Tensor) -> torch.Tensor:
    """The reference HyenaDNAForCausalLM forward (NOTES.md "Forward math"), in float64, read straight from
    the HF state dict: nothing here uses dnalm's model or its key mapping."""
    g = lambda k: state[k].double()  # noqa: E731
    P, D, L = "hyena.backbone.", cfg["d_model"], ids.shape[1]
    x = g(P + "embeddings.word_embeddings.weight")[ids]  # (B, L, D)
    for i in range(cfg["n_layer"]):
        p = f"{P}layers.{i}."
        r = x
        a = F.layer_norm(r, (D,), g(p + "norm1.weight"), g(p + "norm1.bias"), 1e-5)
        u = F.linear(a, g(p + "mixer.in_proj.weight"), g(p + "mixer.in_proj.bias")).transpose(1, 2)  # (B, 3D, L)
        w, c = g(p + "mixer.short_filter.weight")[:, 0], g(p + "mixer.short_filter.bias")  # (3D, 3), (3D,)
        up = F.pad(u, (2, 0))  # u[t<0] = 0: out[t] = w0 u[t-2] + w1 u[t-1] + w2 u[t] + c
        u = w[:, 0, None] * up[..., :L] + w[:, 1, None] * up[..., 1 : L + 1] + w[:, 2, None] * up[..., 2:] + c[:, None]
        x0, x1, v = u.split(D, dim=1)
        f = p + "mixer.filter_fn."
        z, t = g(f + "pos_emb.z")[0, :L], g(f + "pos_emb.t")[0, :L]  # (L, emb), (L, 1)
        freq = g(f + "implicit_filter.1.freq")
        h = torch.sin(freq * F.linear(z, g(f + "implicit_filter.0.weight"), g(f + "implicit_filter.0.bias")))
        for j in range(1, cfg["num_inner_mlps"] + 1):
            w, b = g(f + f"implicit_filter.{2 * j}.weight"), g(f + f"implicit_filter.{2 * j}.bias")
            h = torch.sin(freq * F.linear(h, w, b))
        h = F.linear(h, g(f + f"implicit_filter.{2 * cfg['num_inner_mlps'] + 2}.weight"))  # (L, D)
        h = h * (torch.exp(-t * g(f + "modulation.deltas")[0].abs()) + 0.05)
        k = h.t()  # (D, L)
        v = v * x1
        n = 2 * L
        y = torch.fft.irfft(torch.fft.rfft(v, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :L]  # causal, linear
        y = y + v * g(f + "bias")[:, None]
        y = (y * x0).transpose(1, 2)  # (B, L, D)
        r = F.linear(y, g(p + "mixer.out_proj.weight"), g(p + "mixer.out_proj.bias")) + r
        b2 = F.layer_norm(r, (D,), g(p + "norm2.weight"), g(p + "norm2.bias"), 1e-5)
        m = F.gelu(F.linear(b2, g(p + "mlp.fc1.weight"), g(p + "mlp.fc1.bias")), approximate="tanh")
        x = F.linear(m, g(p + "mlp.fc2.weight"), g(p + "mlp.fc2.bias")) + r
    hf = F.layer_norm(x, (D,), g(P + "ln_f.weight"), g(P + "ln_f.bias"), cfg["layer_norm_epsilon"])
    return hf @ g("lm_head.weight").t()  # (B, L, V)


def other_shape_model() -> DNALM:
    """Wider, deeper, longer max_seq_len, another filter order / MLP depth / emb_dim than tiny, with every
    parameter and the z table perturbed (so nothing keeps a constructor value)."""
    cfg = HyenaConfig(n_layer=3, d_model=160, l_max=4608, filter_order=48, emb_dim=7, num_inner_mlps=1,
                      d_inner=384, ln_eps=1e-6, tie_embeddings=False)
    torch.manual_seed(1)
    model = DNALM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
        for layer in model.backbone.layers:
            z = layer.mixer.filter_fn.pos_emb.z
            z.add_(0.02 * torch.randn_like(z))
    return model.eval()


def chr2_ids(tokenizer, start: int, n: int) -> torch.Tensor:
    """Token ids of hg38 chr2 bases [start, start+n) (soft-masked: lower case -> [UNK] here) + [SEP]."""
    with gzip.open(DATA / "human_chr2_1-100000_softmasked.fa.gz", "rt") as fh:
        seq = "".join(l.strip() for l in fh if not l.startswith(">"))
    ids, _ = tokenizer.encode(seq[start : start + n])
    return torch.tensor([ids])


def test_export_format_writes_a_folder_that_loads_back(tmp_path, capsys):
    """`dnalm export --format hyenadna-hf`: a native HyenaDNA run's model written in the HF layout through the
    format registry; dnalm.load detects it and gives the same logits on the same token ids."""
    from dnalm.checkpoint import save_pretrained

    torch.manual_seed(0)
    native = DNALM(HyenaConfig(n_layer=2, d_model=32, l_max=130, filter_order=16, emb_dim=5)).eval()
    save_pretrained(native, tmp_path / "native")
    out = tmp_path / "hf"
    assert cli_main(["export", str(tmp_path / "native"), "--format", "hyenadna-hf", "--out", str(out)]) == 0
    assert "(hyenadna-hf)" in capsys.readouterr().out and is_hf_folder(out)
    again = dnalm.load(out)
    ids = torch.tensor([[7, 8, 9, 10, 7, 7, 9, 10, 8, 11, 7]])
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, native(ids).logits, rtol=1e-5, atol=1e-5)
    assert cli_main(["export", str(tmp_path / "native"), "--format", "no-such-format", "--out", str(tmp_path / "x")]) == 2
    assert "unknown checkpoint format 'no-such-format'" in capsys.readouterr().err


@pytest.mark.parametrize("weights", ["bin", "safetensors"])
def test_other_shape_roundtrip_matches_float64_reference(tmp_path, weights):
    """A native HyenaDNA of another shape, exported to the HF layout + config, re-imported: same outputs as
    the native model, and as an independent float64 reference of the HF forward, on 4,000 real bases."""
    native = other_shape_model()
    folder = save_hf(native, tmp_path / "hf", weights=weights)
    cfg = json.loads((folder / "config.json").read_text())
    assert (cfg["max_seq_len"], cfg["filter_order"], cfg["n_layer"], cfg["d_model"]) == (4608, 48, 3, 160)
    if weights == "bin":
        state = torch.load(folder / "pytorch_model.bin", weights_only=True)
        f = "hyena.backbone.layers.0.mixer.filter_fn.implicit_filter."
        assert state[f + "1.freq"].data_ptr() == state[f + "3.freq"].data_ptr()  # shared, as the reference
    else:
        state = load_file(str(folder / "model.safetensors"))
        assert not any(k.endswith("implicit_filter.3.freq") for k in state)  # one freq key per filter
    imported = dnalm.load(folder)
    n = 4_000 if weights == "bin" else 1_500  # thousands of tokens once; the other layout more briefly
    ids = chr2_ids(imported.tokenizer, 20_000, n)  # (1, n + 1), includes soft-masked repeats
    assert (ids == UNK).sum() > 100
    with torch.no_grad():
        got = imported(ids).logits
        want_native = native(ids).logits
    assert maxdiff(got, want_native) < 1e-6
    if weights == "bin":  # the float64 reference once (it is the slow part)
        ref = reference_forward(state, cfg, ids)
        assert float(ref.abs().max()) > 0.5  # logits of a real scale, so the bound below means something
        assert maxdiff(got, ref) < 2e-5
    # and a batch through the classification layout of the same shape
    clf = HyenaDNAClassifier(native.config, num_labels=3, pad_token_id=4)
    clf.lm.load_state_dict({k: v for k, v in native.state_dict().items() if k != "lm_head.weight"}, strict=False)
    back = dnalm.load(save_hf(clf, tmp_path / "hf_cls", weights=weights))
    with torch.no_grad():
        assert maxdiff(back(ids[:, :300]).logits, clf.eval()(ids[:, :300]).logits) < 1e-6


def test_long_input_is_refused(tmp_path, lm):
    too_long = "ACGT" * 257  # 1028 bases + [SEP] > max_seq_len 1026
    with pytest.raises(ValueError, match="1029 tokens exceed the model's maximum of 1026"):
        lm.tokenizer.encode(too_long)
    with pytest.raises(ValueError, match="exceeds the model's maximum length 1026"):
        lm(torch.full((1, 1027), 7))


# ------------------------------------------------------------------------------------------ bad input


def edited_state(folder: Path, tmp_path: Path, edit) -> Path:
    dst = copy_folder(folder, tmp_path / "edited")
    state = torch.load(dst / "pytorch_model.bin", weights_only=True)
    edit(state)
    torch.save(state, dst / "pytorch_model.bin")
    return dst


def edited_config(folder: Path, tmp_path: Path, edit) -> Path:
    dst = copy_folder(folder, tmp_path / "edited")
    cfg = json.loads((dst / "config.json").read_text())
    edit(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


F0 = "hyena.backbone.layers.0.mixer.filter_fn."


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("hyena.backbone.layers.1.mlp.fc1.bias"), r"missing keys: hyena\.backbone\.layers\.1\.mlp\.fc1\.bias"),
        (lambda s: s.__setitem__("hyena.backbone.extra.weight", torch.zeros(3)), r"unexpected keys: hyena\.backbone\.extra\.weight"),
        (lambda s: s.__setitem__("lm_head.weight", torch.zeros(16, 64)), r"shape mismatch: lm_head\.weight: file \(16, 64\) vs expected \(16, 128\)"),
        (lambda s: s.__setitem__(F0 + "implicit_filter.3.freq", s[F0 + "implicit_filter.1.freq"] + 1), r"implicit_filter\.3\.freq differs"),
        (lambda s: s.__setitem__(F0 + "pos_emb.t", s[F0 + "pos_emb.t"] * 0.5), r"pos_emb\.t is not linspace"),
    ],
    ids=["missing", "unexpected", "shape", "freq-copies", "time-axis"],
)
def test_bad_weights_name_the_key(tmp_path, edit, message):
    bad = edited_state(TINY, tmp_path, edit)
    with pytest.raises(CheckpointError, match=message):
        dnalm.load(bad)
    dst = tmp_path / "out"
    assert cli_main(["convert", str(bad), "--out", str(dst)]) == 2
    assert not dst.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())  # nothing half-written


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.__setitem__("rotary_dim", 8), r"field 'rotary_dim' is not understood"),
        (lambda c: c.__setitem__("hyena_order", 3), r"field 'hyena_order' is 3"),
        (lambda c: c.__setitem__("short_filter_order", 4), r"field 'short_filter_order' is 4"),
        (lambda c: c.__setitem__("d_model", "128"), r"field 'd_model' must be int"),
        (lambda c: c.__setitem__("n_layer", 3), r"missing keys: hyena\.backbone\.layers\.2\."),
        (lambda c: c.__setitem__("filter_order", 32), r"shape mismatch: .*implicit_filter\.0\.weight: file \(64, 5\) vs expected \(32, 5\)"),
    ],
    ids=["unknown-field", "order", "short-filter", "type", "n_layer", "filter_order"],
)
def test_bad_config_names_the_field(tmp_path, edit, message):
    with pytest.raises(CheckpointError, match=message):
        dnalm.load(edited_config(TINY, tmp_path, edit))


def test_pickle_code_is_never_executed(tmp_path):
    """A .bin whose unpickling would run code (here: create a file) is refused, and the code does not run."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = copy_folder(TINY, tmp_path / "evil")
    torch.save({"hyena.backbone.x": Payload()}, bad / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"weights_only=True"):
        dnalm.load(bad)
    assert not marker.exists()


def test_missing_lm_head_falls_back_to_tied_embedding(tmp_path):
    folder = edited_state(TINY, tmp_path, lambda s: s.pop("lm_head.weight"))
    model = dnalm.load(folder)
    assert model.config.tie_embeddings and model.lm_head is None
    exp = expected(TINY)
    with torch.no_grad():
        h = model(exp["in0.input_ids"], output_hidden_states=True).hidden_states[-1]
    assert maxdiff(h, exp["in0.last_hidden_state"]) < HIDDEN_TOL  # the backbone is unaffected


def test_classifier_without_pad_token_pools_last_for_batch_one_only(tmp_path):
    model = dnalm.load(edited_config(TINY_CLS, tmp_path, lambda c: c.pop("pad_token_id")))
    exp = expected(TINY_CLS)
    with torch.no_grad():
        assert maxdiff(model(exp["in0.input_ids"]).logits, exp["in0.pooled_logits"]) < LOGITS_TOL
        with pytest.raises(ValueError, match="batch size 1 only"):
            model(exp["batch_left_padded.input_ids"])


def test_bare_model_layout_and_sharded_safetensors(tmp_path):
    """A HyenaDNAModel save (keys 'backbone.*', no head) split into two safetensors shards + index loads;
    its backbone reproduces the reference hidden states."""
    dst = copy_folder(TINY, tmp_path / "bare")
    state = torch.load(dst / "pytorch_model.bin", weights_only=True)
    (dst / "pytorch_model.bin").unlink()
    bare = {k[len("hyena."):]: v.clone() for k, v in state.items() if k.startswith("hyena.")}
    keys = sorted(bare)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2], "model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}
    for name, ks in shards.items():
        save_file({k: bare[k] for k in ks}, str(dst / name))
    index = {"weight_map": {k: name for name, ks in shards.items() for k in ks}}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    cfg = json.loads((dst / "config.json").read_text())
    cfg["architectures"] = ["HyenaDNAModel"]
    (dst / "config.json").write_text(json.dumps(cfg))
    model = dnalm.load(dst)
    assert isinstance(model, DNALM) and model.lm_head is None
    exp = expected(TINY)
    with torch.no_grad():
        hs = model(exp["in1.input_ids"], output_hidden_states=True).hidden_states
    assert maxdiff(hs[-1], exp["in1.last_hidden_state"]) < HIDDEN_TOL
    (dst / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shard 'model-00002-of-00002.safetensors' is missing"):
        dnalm.load(dst)


def test_constant_frequency_when_train_freq_is_false(tmp_path):
    """train_freq false: the reference's Sin frequency is a plain attribute (activation_freq), not saved."""
    def drop_freq(s):
        for k in [k for k in s if k.endswith(".freq")]:
            s.pop(k)

    folder = edited_state(TINY, tmp_path, drop_freq)
    with pytest.raises(CheckpointError, match=r"missing keys: .*implicit_filter\.1\.freq"):
        dnalm.load(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["train_freq"] = False
    (folder / "config.json").write_text(json.dumps(cfg))
    model = dnalm.load(folder)
    freq = model.backbone.layers[1].mixer.filter_fn.implicit_filter.freq
    assert torch.equal(freq, torch.full((1, 64), 10.0))
    with pytest.raises(CheckpointError, match=r"unexpected keys: .*implicit_filter\.1\.freq"):
        dnalm.load(edited_config(TINY, tmp_path / "b", lambda c: c.__setitem__("train_freq", False)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_parity(lm):
    exp = expected(TINY)
    model = dnalm.load(TINY, device="cuda")
    with torch.no_grad():
        got = model(exp["in1.input_ids"].cuda()).logits.cpu()
    assert maxdiff(got, exp["in1.logits"]) < 1e-4


def test_info_describes_a_hyenadna_hf_folder(capsys):
    """`dnalm eval` opens a -hf folder; `dnalm info` must too (it once failed with KeyError: 'model')."""
    from dnalm.cli import main
    from dnalm.formats.hyenadna_hf import read_hf_config

    folder = Path(__file__).parent / "data" / "hyenadna_hf" / "tiny"
    assert main(["info", str(folder)]) == 0
    out = capsys.readouterr().out
    c = read_hf_config(folder).config
    assert f"{c.n_layer} layers, d_model {c.d_model}, max length {c.l_max:,}" in out
    assert "HyenaDNA Hugging Face folder" in out and "parameters" in out
