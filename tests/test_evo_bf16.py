"""Evo 1 / Evo 2 checkpoints in their released dtypes: the weights stay bf16 in memory (poles and residues
float32, as released), and every block computes in float32 (a float32 copy of one block at a time) or in
bf16 where this CPU is fast in it.

Each parity fixture is written in the release dtypes with dnalm's own exporter (``export_evo2`` /
``export_evo1`` with ``dtype=torch.bfloat16``). The independent reference for the float32 computation is the
same bf16 file loaded the old way, converted to float32 on load (``dnalm.load(path, dtype=torch.float32)``):
the two must agree to 1e-6 (they do exactly: every bf16 value is a float32 value, and the same float32
operations run). The bf16 computation is compared with it loosely (measured: logits within about 0.3 max abs,
0.01-0.04 mean abs, on these tiny random models whose logits span about +-5).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import dnalm
from dnalm.cli import main
from dnalm.eval.longcontext import estimate_memory, forward_long
from dnalm.formats.evo import evo2_yaml, export_evo1, export_evo2
from dnalm.memory import NotEnoughMemoryError
from dnalm.models import get_preset
from dnalm.scaling.flops import count_params
from dnalm.scaling.memory import check_model_memory, meta_model_as_loaded

DATA = Path(__file__).parent / "data"
EVO = DATA / "evo"
EXPORT = {"evo2_tiny": export_evo2, "evo2_rope": export_evo2, "evo1_tiny": export_evo1, "evo1_131k": export_evo1}
FILTER_COEFFS = ("poles", "residues", "log_poles")  # float32 in the releases
GiB = 2**30


@pytest.fixture(scope="module")
def bf16_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evo_bf16")
    out = {}
    for name, export in EXPORT.items():
        export(dnalm.load(EVO / name), root / name, dtype=torch.bfloat16)
        out[name] = root / name
    return out


def _ids(name: str, n: int = 400) -> torch.Tensor:
    seq = (DATA / "phage_lambda.fa").read_text().split("\n", 1)[1].replace("\n", "")[5000 : 5000 + n]
    return torch.tensor([list((seq[:100] + seq[100:200].lower() + seq[200:]).encode())])  # lower case kept


@pytest.mark.parametrize("name", list(EXPORT))
def test_weights_stay_in_their_stored_dtypes(bf16_dirs, name):
    model = dnalm.load(bf16_dirs[name])
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    coeffs = [n for n in dtypes if n.rsplit(".", 1)[-1] in FILTER_COEFFS]
    assert coeffs and all(dtypes[n] == torch.float32 for n in coeffs)
    assert all(dt == torch.bfloat16 for n, dt in dtypes.items() if n not in coeffs)
    assert model.compute == "float32"  # dnalm.load reproduces the reference's float32 numbers by default
    ref = dnalm.load(bf16_dirs[name], dtype=torch.float32)  # the old behaviour: float32 throughout
    assert all(p.dtype == torch.float32 for p in ref.parameters())


@pytest.mark.parametrize("name", list(EXPORT))
def test_float32_compute_equals_a_float32_model(bf16_dirs, name):
    """One block at a time in float32 gives the float32 model's logits and hidden states (1e-6; in fact
    exactly), in the ordinary forward and in forward_long, and leaves the stored bf16 weights untouched."""
    model = dnalm.load(bf16_dirs[name])  # compute="float32" by default
    ref = dnalm.load(bf16_dirs[name], dtype=torch.float32)
    stored = {n: (p.data_ptr(), p.dtype) for n, p in model.named_parameters()}
    ids = _ids(name)
    with torch.no_grad():
        got, want = model(ids, output_hidden_states=True), ref(ids, output_hidden_states=True)
    assert float((got.logits - want.logits).abs().max()) <= 1e-6
    for a, b in zip(got.hidden_states, want.hidden_states):
        assert a.dtype == torch.float32 and float((a - b).abs().max()) <= 1e-6
    lp = forward_long(model, ids[0], "logprobs", chunk=128)
    lp_ref = forward_long(ref, ids[0], "logprobs", chunk=128)
    assert float((lp - lp_ref).abs().max()) <= 1e-6
    assert {n: (p.data_ptr(), p.dtype) for n, p in model.named_parameters()} == stored


@pytest.mark.parametrize("name", list(EXPORT))
def test_bf16_compute_is_close(bf16_dirs, name):
    model = dnalm.load(bf16_dirs[name])
    model.compute = "weights"
    ref = dnalm.load(bf16_dirs[name], dtype=torch.float32)
    ids = _ids(name)
    with torch.no_grad():
        diff = (model(ids).logits - ref(ids).logits).abs()
    assert float(diff.max()) < 0.5 and float(diff.mean()) < 0.05
    lp = forward_long(model, ids[0], "logprobs", chunk=128)  # the model's own setting: bf16 matmuls
    assert float((lp - forward_long(ref, ids[0], "logprobs", chunk=128)).abs().mean()) < 0.05


def test_auto_computes_in_bf16_only_where_this_cpu_is_fast(bf16_dirs, monkeypatch):
    import dnalm.runtime as rt

    model = dnalm.load(bf16_dirs["evo2_tiny"])
    model.compute = "auto"
    monkeypatch.setattr(rt, "fast_bf16", lambda: False)
    assert model.compute_mode() == "float32" and model.upcasts()
    monkeypatch.setattr(rt, "fast_bf16", lambda: True)
    assert model.compute_mode() == "weights" and not model.upcasts()
    with rt.computing("float32"):  # what --precision fp32 sets around a command
        assert model.upcasts()
    assert dnalm.load(EVO / "evo2_tiny").compute_mode() is None  # float32 files: nothing to decide


def test_precision_flag_chooses_the_computation(bf16_dirs, tmp_path):
    """dnalm score on the bf16 folder: --precision fp32 gives the float32 model's numbers."""
    fa = tmp_path / "x.fa"
    seq = (DATA / "phage_lambda.fa").read_text().split("\n", 1)[1].replace("\n", "")[:300]
    fa.write_text(">lambda\n" + seq + "\n")
    ref = dnalm.score(dnalm.load(bf16_dirs["evo2_tiny"], dtype=torch.float32), seq, reduce="mean")
    got = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.tsv"
        assert main(["score", str(bf16_dirs["evo2_tiny"]), "--fasta", str(fa), "--precision", precision, "--reduce", "mean",
                     "-o", str(out), "--quiet"]) == 0  # fmt: skip
        row = [ln for ln in out.read_text().splitlines() if ln.startswith("lambda")][0].split("\t")
        got[precision] = float(row[3])
    assert abs(got["fp32"] - float(ref)) < 1e-5
    assert abs(got["bf16"] - float(ref)) < 0.05


def test_generation_on_bf16_weights(bf16_dirs, monkeypatch, capsys):
    """Where blocks would upcast, generation uses a float32 copy of the model when it fits (same tokens as the
    float32 model), else bf16; either way the stored weights are bf16 again afterwards."""
    path = bf16_dirs["evo2_tiny"]
    model, ref = dnalm.load(path), dnalm.load(path, dtype=torch.float32)
    monkeypatch.setenv("DNALM_MAX_MEMORY", "24")
    want = dnalm.generate(ref, "ACGTTGCAacgt", n_tokens=30, seed=4)
    assert dnalm.generate(model, "ACGTTGCAacgt", n_tokens=30, seed=4) == want
    assert "float32 copy of the weights for generation" in capsys.readouterr().err
    monkeypatch.setenv("DNALM_MAX_MEMORY", "0.0001")
    out = dnalm.generate(model, "ACGTTGCAacgt", n_tokens=30, seed=4)
    assert len(out) == 30 and set(out) <= set("ACGT")
    assert "generating in the weights' dtype" in capsys.readouterr().err
    assert all(p.dtype == torch.bfloat16 for n, p in model.named_parameters() if not n.endswith(FILTER_COEFFS))


@pytest.mark.parametrize("name", ["evo2_tiny", "evo1_tiny"])
def test_prefill_and_steps_equal_the_forward_pass_in_float32_compute(bf16_dirs, name):
    from dnalm.generation import prefill_logits, step_logits

    model = dnalm.load(bf16_dirs[name])
    model.compute = "float32"
    ids = _ids(name, 120)
    with torch.no_grad():
        full = model(ids).logits
        logits, state = prefill_logits(model, ids[:, :100])
        steps = [logits[:, -1]]
        for t in range(100, ids.shape[1] - 1):
            out, state = step_logits(model, ids[:, t], state)
            steps.append(out)
    assert float((logits - full[:, :100]).abs().max()) < 1e-4
    assert float((torch.stack(steps, 1) - full[:, 99:-1]).abs().max()) < 1e-4


def _sparse_evo2(folder: Path, preset: str) -> Path:
    """An Evo 2 folder of a released shape whose .pt is a sparse file of the release's size (bf16, poles and
    residues float32): the memory checks read the config and the file sizes, never the bytes."""
    cfg = get_preset(preset)
    folder.mkdir()
    (folder / "config.yml").write_text(evo2_yaml(cfg, preset))
    with open(folder / f"{preset}.pt", "wb") as fh:
        fh.truncate(2 * count_params(cfg) + 8 * cfg.d_model * cfg.state_size * cfg.n_layer)
    return folder


def test_memory_checks_count_stored_weights_and_one_block_copy(tmp_path, capsys):
    """An evo2-7b-shaped checkpoint passes on 24 GiB (its bf16 weights plus one block's float32 copy); the
    evo2-40b shape is refused, by the torch-free preflight as by the full check."""
    seven = _sparse_evo2(tmp_path / "evo2_7b", "evo2-7b-8k")
    need = check_model_memory(seven, "dnalm score", 8192, 1, max_memory=24 * GiB)
    parts = need.parts
    assert parts["weights (as stored)"] == (seven / "evo2-7b-8k.pt").stat().st_size
    assert 0 < parts["one block's float32 copy"] < GiB
    assert need.total < 18 * GiB
    meta = meta_model_as_loaded(get_preset("evo2-7b-8k"), seven)
    est = estimate_memory(meta, 8192, "logprobs")
    assert est.parts["one block's float32 copy"] > 0 and est.total < 18 * GiB
    assert abs(est.parts["weights"] - parts["weights (as stored)"]) < 0.01 * parts["weights (as stored)"]
    forty = _sparse_evo2(tmp_path / "evo2_40b", "evo2-40b")
    with pytest.raises(NotEnoughMemoryError, match="weights alone do not fit"):
        check_model_memory(forty, "dnalm score", 8192, 1, max_memory=24 * GiB)
    fa = DATA / "phage_phix174.fa"
    assert main(["score", str(forty), "--fasta", str(fa), "--max-memory", "24"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weights alone do not fit" in err[0] and "24.0 GiB is available (--max-memory)" in err[0]
    assert main(["info", str(seven)]) == 0
