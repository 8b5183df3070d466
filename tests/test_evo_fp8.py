"""Emulated FP8 E4M3 for Evo 2's Hyena input projections (dnalm.models.striped_hyena.fp8_e4m3): the cast
against an independent E4M3 rounding written here, per-tensor / per-sequence scaling, the switch, and
what it does to the imported fixture. Whether it reproduces the released evo2_1b_base cannot be checked
without those weights (README)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from dnalm.formats.evo import export_evo2, load_evo2
from dnalm.models.striped_hyena import HyenaMixer, fp8_e4m3, set_fp8_input_projections

DATA = Path(__file__).parent / "data" / "evo"


def e4m3_reference(v: float) -> float:
    """Round to the nearest FP8 E4M3 value (3 mantissa bits, bias 7, subnormals below 2^-6, max 448), ties
    to even; saturating."""
    if v == 0:
        return 0.0
    a = min(abs(v), 448.0)
    e = max(math.floor(math.log2(a)), -6)  # subnormals share the 2^-6 binade's step
    step = 2.0 ** (e - 3)
    q = a / step
    r = math.floor(q)
    frac = q - r
    if frac > 0.5 or (frac == 0.5 and r % 2 == 1):
        r += 1
    return math.copysign(min(r * step, 448.0), v)


def test_cast_matches_an_independent_e4m3_rounding():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, generator=g) * torch.exp(torch.randn(2000, generator=g) * 3)
    got = fp8_e4m3(x)
    scale = 448.0 / float(x.abs().max())
    want = torch.tensor([e4m3_reference(float(v) * scale) / scale for v in x], dtype=torch.float32)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    assert float(got.abs().max()) == pytest.approx(float(x.abs().max()), rel=1e-6)  # amax maps to 448 exactly
    normal = x.abs() > x.abs().max() * 2.0**-8  # above the subnormal range after scaling
    assert float(((got - x).abs() / x.abs())[normal].max()) <= 2.0**-4  # 3 mantissa bits


def test_per_sequence_scaling_and_straight_through_gradient():
    x = torch.stack([torch.linspace(-1, 1, 50), 1000 * torch.linspace(-1, 1, 50)])[:, :, None].repeat(1, 1, 4)
    per_seq = fp8_e4m3(x, (1, 2))
    torch.testing.assert_close(per_seq[1] / 1000, per_seq[0])  # each sequence scaled by its own amax
    assert not torch.allclose(fp8_e4m3(x)[0], per_seq[0])  # one scale for both squeezes the small row
    w = torch.randn(8, 4, requires_grad=True)
    fp8_e4m3(w).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_switch_and_config(tmp_path, monkeypatch):
    ref = load_evo2(DATA / "evo2_tiny")  # the fixture's config: use_fp8_input_projections False
    assert not ref.config.fp8_input_projections
    folder = tmp_path / "fp8"
    shutil.copytree(DATA / "evo2_tiny", folder)
    for p in folder.iterdir():
        p.chmod(0o644)
    cfg = folder / "config.yml"
    cfg.write_text(cfg.read_text().replace("use_fp8_input_projections: False", "use_fp8_input_projections: True"))
    on = load_evo2(folder)
    assert on.config.fp8_input_projections and all(m.fp8 for m in on.modules() if isinstance(m, HyenaMixer))
    monkeypatch.setenv("DNALM_EVO2_FP8", "0")
    assert not load_evo2(folder).config.fp8_input_projections
    monkeypatch.delenv("DNALM_EVO2_FP8")
    assert not load_evo2(folder, fp8=False).config.fp8_input_projections
    ids = torch.tensor([list(b"ATGAAACGCATTAGCACCACCATTACCACCACCATCACCATTACCACAGGTAACGGTGCGGGCTGA")])
    with torch.no_grad():
        a, b = ref(ids).logits, on(ids).logits
        mixer = on.backbone.layers[0].mixer
        x = torch.randn(1, ids.shape[1], on.config.d_model)
        want = torch.nn.functional.linear(fp8_e4m3(x, (1, 2)), fp8_e4m3(mixer.in_proj.weight))
        torch.testing.assert_close(mixer._in_proj(x, (1, 2)), want, rtol=0, atol=0)
    diff = float((a - b).abs().max())
    assert 1e-4 < diff and float((a - b).abs().mean()) < 0.2  # FP8 moves the logits, but it is the same model
    set_fp8_input_projections(on, False)
    with torch.no_grad():
        assert torch.equal(on(ids).logits, a)
    set_fp8_input_projections(on, True)
    export_evo2(on, tmp_path / "out", name="m")  # the flag travels with the export
    assert "use_fp8_input_projections: True" in (tmp_path / "out" / "config.yml").read_text()
    assert load_evo2(tmp_path / "out").config.fp8_input_projections
