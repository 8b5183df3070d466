"""LoRA adapters (dnalm/models/lora.py) on every family: exact start, merge == unmerged, only adapters train,
the base never changes, adapters save and load on their own."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dnalm
from dnalm.cli import main
from dnalm.checkpoint import CheckpointError, is_adapter_dir, read_adapter, save_adapter, save_pretrained
from dnalm.config import ConfigError, to_dict
from dnalm.eval.finetune import load_classifier
from dnalm.formats import load_adapter_model
from dnalm.models import get_preset
from dnalm.models.lm import DNALM
from dnalm.models.lora import (
    LoRAConfig,
    LoRAError,
    LoRALinear,
    add_lora,
    count_trainable,
    fingerprint,
    lora_modules,
    lora_state_dict,
    merge_lora,
    set_merged,
)
from realdata import ecoli_ids, perturbed

FAMILIES = ["hyenadna-tiny-1k", "transformer-tiny-1k", "striped-hyena-tiny", "striped-hyena2-tiny", "dnahnet-tiny-3"]


def _model(preset):
    torch.manual_seed(0)
    return perturbed(DNALM(get_preset(preset)), std=0.02).eval()


def _nonzero_adapters(m, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in lora_modules(m).values():
            mod.lora_B.copy_(0.05 * torch.randn(mod.lora_B.shape, generator=g))


@pytest.mark.parametrize("preset", FAMILIES)
def test_lora_starts_at_the_base_and_merges_exactly(preset):
    m = _model(preset)
    x = torch.stack([ecoli_ids(96, 0), ecoli_ids(96, 5000)])  # (2, 96) real E. coli bases
    with torch.no_grad():
        base = m(x).logits
        names = add_lora(m, LoRAConfig(rank=4, alpha=8.0))
        assert names and all(isinstance(m.get_submodule(n), LoRALinear) for n in names)
        # B = 0: the adapted model starts as its base (to rounding: an adapted HyenaDNA leaves the fused path)
        assert torch.allclose(m(x).logits, base, atol=1e-5, rtol=0)
        _nonzero_adapters(m)
        adapted = m(x).logits
        assert (adapted - base).abs().max() > 1e-3
        # the reference: every adapted layer's weight replaced by W + alpha/r B A, in a plain copy of the base
        ref = _model(preset)
        for n in names:
            mod = m.get_submodule(n)
            ref.get_submodule(n).weight.add_(2.0 * mod.lora_B @ mod.lora_A)
        assert torch.allclose(ref(x).logits, adapted, atol=1e-5, rtol=0)
        set_merged(m, True)
        assert torch.allclose(m(x).logits, adapted, atol=1e-5, rtol=0)
        set_merged(m, False)
        assert torch.allclose(m(x).logits, adapted, atol=1e-5, rtol=0)
        merge_lora(m)
        assert not lora_modules(m)
        assert set(m.state_dict()) == set(ref.state_dict())
        assert torch.allclose(m(x).logits, adapted, atol=1e-5, rtol=0)


@pytest.mark.parametrize("preset", FAMILIES)
def test_only_adapters_train_and_the_base_is_untouched(preset):
    m = _model(preset)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    names = add_lora(m, LoRAConfig(rank=2, alpha=4.0))
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.{k}" for n in names for k in ("lora_A", "lora_B")}
    assert count_trainable(m) == sum(2 * (m.get_submodule(n).in_features + m.get_submodule(n).out_features)
                                     for n in names)  # fmt: skip
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    x = ecoli_ids(65).unsqueeze(0)
    m.train()
    for _ in range(2):
        loss = F.cross_entropy(m(x[:, :-1]).logits[0], x[0, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = m.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # base keys unchanged, same names
    assert any(m.get_submodule(n).lora_B.abs().sum() > 0 for n in names)


def test_targets_patterns_and_errors():
    m = _model("striped-hyena2-tiny")
    names = add_lora(copy.deepcopy(m), LoRAConfig(targets=["Wqkv"]))
    assert names == ["backbone.layers.3.mixer.Wqkv"]
    names = add_lora(copy.deepcopy(m), LoRAConfig(targets=["mlp.l3", "layers.0.mixer.in_proj"]))
    assert names == ["backbone.layers.0.mixer.in_proj"] + [f"backbone.layers.{i}.mlp.l3" for i in range(4)]
    with pytest.raises(LoRAError, match="mlp.l4 match no linear layer"):
        add_lora(copy.deepcopy(m), LoRAConfig(targets=["mlp.l4"]))
    hy = _model("hyenadna-tiny-1k")
    names = add_lora(hy, LoRAConfig())  # the default skips what a family lacks (no Wqkv in HyenaDNA)
    assert not any("implicit_filter" in n for n in names)  # filter MLPs are not projections
    with pytest.raises(LoRAError, match="already"):
        add_lora(hy, LoRAConfig())
    for bad in ({"rank": 0}, {"alpha": -1}, {"dropout": 1.0}, {"targets": []}):
        with pytest.raises(ConfigError):
            LoRAConfig(**bad)


def test_bf16_base_stays_bf16_with_float32_adapters():
    m = _model("striped-hyena2-tiny").to(torch.bfloat16)
    add_lora(m, LoRAConfig(rank=4))
    for mod in lora_modules(m).values():
        assert mod.weight.dtype == torch.bfloat16 and mod.lora_A.dtype == torch.float32
    x = ecoli_ids(33).unsqueeze(0)
    loss = F.cross_entropy(m(x[:, :-1]).logits[0], x[0, 1:])
    loss.backward()
    assert all(mod.lora_A.grad is not None and mod.weight.grad is None for mod in lora_modules(m).values())


def test_lm_adapter_saves_small_and_loads_through_dnalm_load(tmp_path):
    m = _model("transformer-tiny-1k")
    base_dir = save_pretrained(m, tmp_path / "base")
    names = add_lora(m, LoRAConfig(rank=4, alpha=8.0))
    _nonzero_adapters(m)
    meta = {"kind": "lm", "base_model": str(base_dir), "base_config": to_dict(m.config),
            "base_fingerprint": fingerprint(m), "lora": LoRAConfig(rank=4, alpha=8.0).to_dict(), "adapted": names}
    save_adapter(tmp_path / "ad", lora_state_dict(m), meta)
    assert is_adapter_dir(tmp_path / "ad")
    got_meta, tensors = read_adapter(tmp_path / "ad")
    assert set(tensors) == {f"{n}.{k}" for n in names for k in ("lora_A", "lora_B")}
    size = (tmp_path / "ad" / "adapter.safetensors").stat().st_size
    assert size < (base_dir / "model.safetensors").stat().st_size / 3
    x = ecoli_ids(64).unsqueeze(0)
    with torch.no_grad():
        want = m(x).logits
        loaded = dnalm.load(tmp_path / "ad")  # base + adapters, merged
        assert not lora_modules(loaded)
        assert torch.allclose(loaded(x).logits, want, atol=1e-5, rtol=0)
    # a different base (other weights, same config) is refused
    other = perturbed(_model("transformer-tiny-1k"), seed=5)
    save_pretrained(other, tmp_path / "other")
    with pytest.raises(CheckpointError, match="weights differ"):
        load_adapter_model(tmp_path / "ad", base=tmp_path / "other")
    with pytest.raises(CheckpointError, match="differs from the adapter's base"):
        load_adapter_model(tmp_path / "ad", base="hyenadna-tiny-1k")


# ------------------------------------------------------------------------------------------ fine-tuning

TINY = Path(__file__).parent / "data" / "ecoli_hyena_tiny"  # a real trained E. coli HyenaDNA (2 x 32)
GUE = Path(__file__).parent / "data" / "gue_prom_core_tata_small"  # real GUE prom_core_tata rows


def _gue_args(out):
    return [str(TINY), "--train", str(GUE / "train.csv"), "--dev", str(GUE / "dev.csv"), "--test",
            str(GUE / "test.csv"), "-o", str(out), "--quiet", "--epochs", "1", "--batch-size", "16", "--max-train", "96"]


def test_cli_lora_finetune_saves_adapters_predicts_and_merges(tmp_path, capsys):
    out = tmp_path / "lora"
    assert main(["finetune", *_gue_args(out), "--mode", "lora", "--lora-rank", "4", "--lora-alpha", "8"]) == 0
    text = capsys.readouterr().out
    assert "trainable parameters (adapters + head)" in text
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "lora" and report["lora"]["rank"] == 4 and report["lora"]["adapted_layers"] == 8
    base = dnalm.load(TINY)
    n_adapter = sum(4 * (base.get_submodule(n).in_features + base.get_submodule(n).out_features)
                    for n in report["lora"]["adapted"])  # fmt: skip
    assert report["trainable_parameters"] == n_adapter + 2 * 32 + 2  # adapters + the 2-class head
    assert is_adapter_dir(out) and not (out / "model.safetensors").exists()
    meta, tensors = read_adapter(out)
    assert meta["base_model"] == str(TINY.resolve()) and meta["lora"]["alpha"] == 8.0
    assert {k for k in tensors if not k.startswith("lm.")} == {"head.proj.weight", "head.proj.bias"}
    assert (out / "adapter.safetensors").stat().st_size < (TINY / "model.safetensors").stat().st_size
    # the base did not move: the adapter's fingerprint is the base file's
    clf, classes = load_classifier(out)
    assert meta["base_fingerprint"] == fingerprint(clf.lm)
    assert any(float(m.lora_B.abs().sum()) > 0 for m in lora_modules(clf.lm).values())
    pred = tmp_path / "pred.tsv"
    assert main(["predict", str(out), "--csv", str(GUE / "test.csv"), "-o", str(pred), "--quiet"]) == 0
    rows = [r.split("\t") for r in pred.read_text().splitlines() if not r.startswith("#")][1:]
    acc = np.mean([r[1] == lab for r, lab in zip(rows, [ln.split(",")[1] for ln in
                                                           (GUE / "test.csv").read_text().splitlines()[1:]])])
    assert abs(acc - report["test"]["accuracy"]) < 1e-9  # predict reproduces the run's test accuracy
    # merged export: a standalone classifier with the adapter model's logits
    merged = tmp_path / "merged"
    assert main(["export", str(out), "--merge-lora", "--out", str(merged)]) == 0
    assert "differ from the adapter model's by" in capsys.readouterr().out
    mclf, mclasses = load_classifier(merged)
    assert mclasses == classes and not lora_modules(mclf.lm)
    from dnalm.eval.embed import batch_ids

    x, mask = batch_ids(clf.lm, [ecoli_ids(70, 100).numpy().astype("uint8"), ecoli_ids(50, 900).numpy().astype("uint8")])
    with torch.no_grad():
        assert torch.allclose(mclf(x, mask), clf(x, mask), atol=1e-5, rtol=0)


def test_cli_lora_errors(tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["finetune", *_gue_args(out), "--mode", "lora", "--lora-targets", "Wqkv"]) == 2
    assert "Wqkv match no linear layer" in capsys.readouterr().err
    assert main(["finetune", *_gue_args(out), "--mode", "lora", "--max-memory", "0.001"]) == 2
    err = capsys.readouterr().err  # refused before loading: by the weights check or by the LoRA estimate
    assert ("LoRA training of" in err or "weights alone do not fit" in err) and "needs" in err and not out.exists()
    assert main(["export", str(TINY), "--merge-lora", "--out", str(out)]) == 2
    assert "not a LoRA adapter directory" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ causal LM LoRA


def test_train_lora_continues_a_published_model_on_a_new_genome(tmp_path, capsys):
    """dnalm train with init_from the E. coli model and train.lora: only adapters train on phage lambda, the
    run keeps RUN/adapter (small) and RUN/model (merged), and the model section comes from init_from."""
    cfg = tmp_path / "lora.yaml"
    cfg.write_text(
        f"out_dir: {tmp_path / 'run'}\n"
        f"data: {{inputs: [{Path(__file__).parent / 'data' / 'phage_lambda.fa'}], seq_len: 128}}\n"
        f"train: {{steps: 6, batch_size: 4, lr: 3.0e-3, eval_every: 6, eval_tokens: 2048, log_every: 1, "
        f"ckpt_every: 3, threads: 1, init_from: {TINY}, lora: {{rank: 2, alpha: 4, targets: [in_proj, fc2]}}}}\n"
    )
    assert main(["train", "--config", str(cfg)]) == 0
    run = tmp_path / "run"
    meta, tensors = read_adapter(run / "adapter")
    assert meta["kind"] == "lm" and meta["base_model"] == str(TINY.resolve())
    assert meta["adapted"] == [f"backbone.layers.{i}.{n}" for i in range(2) for n in ("mixer.in_proj", "mlp.fc2")]
    base = dnalm.load(TINY)
    merged = dnalm.load(run)  # RUN/model: merged
    adapter = dnalm.load(run / "adapter")  # base + adapter, merged on load
    x = ecoli_ids(100).unsqueeze(0)
    with torch.no_grad():
        assert torch.allclose(merged(x).logits, adapter(x).logits, atol=1e-5, rtol=0)
        assert (merged(x).logits - base(x).logits).abs().max() > 1e-4  # the adapters learned something
    bs, ms = base.state_dict(), merged.state_dict()
    changed = {k for k in bs if not torch.equal(bs[k], ms[k])}
    assert changed == {f"{n}.weight" for n in meta["adapted"]}  # nothing but the adapted matrices moved
    # no init_from: an error before any work
    cfg.write_text("preset: hyenadna-tiny-1k\n" + cfg.read_text().replace(f"init_from: {TINY}, ", ""))
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "bad")]) == 2
    assert "set train.init_from" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ memory estimate


@pytest.mark.parametrize("preset", ["hyenadna-tiny-1k", "striped-hyena2-tiny", "dnahnet-tiny-3"])
def test_lora_memory_estimate_against_saved_tensors(preset):
    """The estimate's activations against the bytes autograd really saves in a LoRA step (frozen base,
    float32), and its adapter count against the real model's; it may overestimate a little, never under."""
    from dnalm.scaling.lora import lora_memory

    cfg, B, L = get_preset(preset), 2, 256
    torch.manual_seed(0)  # dnaHNet's routing, so its saved tensors, depend on the weights (1.04-1.39x over seeds 0-5)
    m = DNALM(cfg)
    add_lora(m, LoRAConfig(rank=8))
    params = {p.untyped_storage().data_ptr() for p in m.parameters()}
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m.norm_f(m.backbone(m.embed(torch.stack([ecoli_ids(L, 0), ecoli_ids(L, 999)]))).hidden)
    est = lora_memory(cfg, LoRAConfig(rank=8), L, B, weight_bytes=4)
    assert 1.0 <= est.parts["activations"] / sum(seen.values()) <= 1.35
    assert est.adapter_params == count_trainable(m)
    assert est.base_params == sum(p.numel() for p in m.parameters()) - count_trainable(m)


def test_lora_memory_of_an_evo2_7b_shape_is_estimated_without_allocating():
    from dnalm.scaling.lora import lora_memory

    est = lora_memory(get_preset("evo2-7b-8k"), LoRAConfig(rank=8), 1024, 1, weight_bytes=2)
    assert est.adapted_layers == 32 * 3 + 5 * 2 + 27 * 2  # every block's MLP, attention Wqkv/out, Hyena in/out
    assert 6.4e9 < est.base_params < 6.6e9 and est.adapter_params == 17_891_328
    assert 20 * 2**30 < est.total < 30 * 2**30


def test_adapters_on_fp8_input_projections_act_and_learn():
    """Released Evo 2 configs run Hyena in_proj through emulated FP8, which reads the weight itself; the
    adapter's branch must still be added (it was silently skipped: a LoRA that did not move nor learn)."""
    from dnalm.models.striped_hyena import set_fp8_input_projections

    torch.manual_seed(0)
    m = DNALM(get_preset("striped-hyena2-tiny")).eval()
    set_fp8_input_projections(m, True)
    x = ecoli_ids(64).unsqueeze(0)
    with torch.no_grad():
        base = m(x).logits
    add_lora(m, LoRAConfig(rank=2, alpha=4.0, targets="in_proj"))
    _nonzero_adapters(m)
    with torch.no_grad():
        assert (m(x).logits - base).abs().max() > 1e-3
    m.train()
    m(x).logits.square().mean().backward()
    assert all(float(mod.lora_A.grad.norm()) > 0 for mod in lora_modules(m).values())
