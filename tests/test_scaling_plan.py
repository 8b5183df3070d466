"""The compute planner: the seeds' orders of magnitude, memory arithmetic checked by hand, the activation
model against the tensors autograd really saves, fitted-law recommendations, and the CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from dnalm.cli import main
from dnalm.models.lm import DNALM
from dnalm.models import get_preset
from dnalm.scaling.plan import (
    HARDWARE,
    activation_elements,
    memory_per_gpu,
    parse_gpus,
    plan_command,
    shape_from_config,
    shape_from_params,
)


def _fits(plan, label: str) -> bool:
    (m,) = [m for m in plan.memory if m.label == label]
    return m.fits(plan.gpu, plan.usable)


def test_evo1_7b_on_300b_tokens():
    plan = plan_command(params=7e9, tokens=300e9, context=8192, gpus="64xH100")
    assert plan.flops_6nd == pytest.approx(1.3e22, rel=0.05)  # Evo: ~1.3e22 training FLOPs
    # the released Evo 1 config: 6.45B parameters; its per-layer count is ~6ND at 8k, 1.5x at 131k
    p8 = plan_command(preset="evo-1-8k", tokens=300e9, gpus="64xH100")
    p131 = plan_command(preset="evo-1-131k", tokens=300e9, gpus="64xH100")
    assert p8.flops_full == pytest.approx(p8.flops_6nd, rel=0.05)
    assert 1.4 < p131.flops_full / p131.flops_6nd < 1.6


def test_evo2_40b_on_9_3t_tokens():
    plan = plan_command(params=40e9, tokens=9.3e12, context=8192, gpus="2048xH100")
    assert plan.flops_6nd == pytest.approx(2.2e24, rel=0.05)
    preset = plan_command(preset="evo2-40b-8k", tokens=9.3e12, gpus="2048xH100")
    assert preset.flops_6nd == pytest.approx(2.2e24, rel=0.05)


def test_gpu_days_arithmetic():
    plan = plan_command(params=1e9, tokens=1e11, context=2048, gpus="16xA100-80GB", mfu=0.5)
    # 6e20 FLOPs at 0.5 * 312e12 FLOP/s = 3.846e6 GPU-seconds = 44.52 GPU-days, 2.78 days on 16 GPUs
    assert plan.gpu_days() == pytest.approx(6e20 / (0.5 * 312e12) / 86400)
    assert plan.wall_days() == pytest.approx(plan.gpu_days() / 16)


def test_7b_at_131k_needs_sharding_and_checkpointing():
    kw = dict(params=7e9, tokens=300e9, context=131072, n_layer=32, d_model=4096)
    one = plan_command(gpus="1xH100", **kw)
    assert not any(m.fits(one.gpu, one.usable) for m in one.memory)
    eight = plan_command(gpus="8xH100", **kw)
    assert _fits(eight, "FSDP x8 + act. ckpt")
    assert not _fits(eight, "FSDP x8")  # activations at 131k need checkpointing
    assert not _fits(eight, "DDP + act. ckpt")  # 16 bytes per parameter need sharding
    assert not _fits(eight, "ZeRO-2 x8 + act. ckpt")  # bf16 weights alone are 13 GiB
    assert "FSDP" in eight.suggestion and "checkpointing" in eight.suggestion


def test_memory_arithmetic_hand_checked():
    """N = 1e9 as 16 Transformer++ layers of width 2048 (SwiGLU 5504), 4096 tokens, 8 GPUs; numbers by hand:
    states 2 + 2 + 12 bytes per parameter; per layer and token 2 norms x 3d + attention 7d + MLP 4f =
    48,640 bf16 elements = 97,280 bytes; final RMSNorm 3d x 2 bytes; logits 16 x (2 + 4 + 4) bytes."""
    shape = shape_from_params(1e9, n_layer=16, d_model=2048)
    assert shape.mlp_hidden == 5504
    ddp = memory_per_gpu(shape, 4096, "DDP")
    assert (ddp.weights, ddp.grads, ddp.optimizer, ddp.buffers) == (2e9, 2e9, 12e9, 0)
    assert ddp.activations == 16 * 97_280 * 4096 + 12_288 * 4096 == 6_425_673_728
    assert ddp.logits == 655_360
    assert ddp.total == 22_426_329_088
    z1 = memory_per_gpu(shape, 4096, "ZeRO-1", 8)
    assert (z1.weights, z1.grads, z1.optimizer) == (2e9, 2e9, 1.5e9)
    z2 = memory_per_gpu(shape, 4096, "ZeRO-2", 8)
    assert (z2.weights, z2.grads, z2.optimizer) == (2e9, 0.25e9, 1.5e9)
    fsdp = memory_per_gpu(shape, 4096, "FSDP", 8, activation_checkpointing=True)
    assert (fsdp.weights, fsdp.grads, fsdp.optimizer) == (0.25e9, 0.25e9, 1.5e9)
    assert fsdp.buffers == 3 * 2 * (4 * 2048**2 + 3 * 2048 * 5504) == 303_562_752  # one layer, bf16 x 3
    # checkpointing keeps 16 bf16 layer inputs plus one layer's activations while it is recomputed
    assert fsdp.activations == 16 * 2 * 2048 * 4096 + 97_280 * 4096 + 12_288 * 4096 == 717_225_984
    cp = memory_per_gpu(shape, 4096, "FSDP", 8, activation_checkpointing=True, context_parallel=4)
    assert cp.activations == pytest.approx(fsdp.activations / 4)


def _saved_elements(config, B: int, L: int) -> float:
    """Elements autograd saves for the backward pass (unique storages, parameters excluded)."""
    torch.manual_seed(0)
    model = DNALM(config)
    params = {p.untyped_storage().data_ptr() for p in list(model.parameters()) + list(model.buffers())}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randint(7, 11, (B, L)))
    return sum(seen.values()) / 4  # float32 model


@pytest.mark.parametrize(
    "preset,kind",
    [
        ("hyenadna-tiny-1k", None),
        ("transformer-tiny-1k", None),
        ("striped-hyena-tiny", "hyena"),
        ("striped-hyena2-tiny", "se"),
        ("striped-hyena2-tiny", "mr"),
        ("striped-hyena2-tiny", "li"),
    ],
)
def test_activation_model_matches_saved_tensors(preset, kind):
    """Per-layer saved elements = (model with 4 layers - model with 2 layers) / 2, against the formula."""
    base = get_preset(preset)
    B, L = 2, 256

    def with_layers(n):
        return dataclasses.replace(base, n_layer=n, **({"layers": [kind] * n} if kind else {}))

    measured = (_saved_elements(with_layers(4), B, L) - _saved_elements(with_layers(2), B, L)) / 2 / (B * L)
    shape = shape_from_config(with_layers(2))
    half, fp32 = activation_elements(
        shape.layers[-1], shape.d_model, shape.mlp_hidden, L, B, shape.order, shape.norm, mixed_precision=False
    )
    assert measured == pytest.approx(half + fp32, rel=0.05)


def test_parse_gpus():
    assert parse_gpus("64xH100") == (64, HARDWARE["H100"])
    assert parse_gpus("8*a100-40gb") == (8, HARDWARE["A100-40GB"])
    assert parse_gpus("H200")[0] == 1
    with pytest.raises(ValueError, match="known"):
        parse_gpus("4xV100")
    for gpu in HARDWARE.values():
        assert gpu.peak_tflops > 0 and gpu.memory_gib > 0 and "nvidia" in gpu.source.lower()


def test_law_recommendation_is_the_constrained_minimum(tmp_path):
    law = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}  # Hoffmann et al. 2022
    path = tmp_path / "fit.json"
    path.write_text(json.dumps({"families": {"transformer": {"parametric": law, "flops_per_param_token": 6.0}}}))
    C = 1e21
    plan = plan_command(law=str(path), compute=C, context=2048, gpus="8xH100")
    N = plan.shape.n_params
    assert 6 * N * plan.tokens == pytest.approx(C)
    # brute force along the iso-FLOP curve: no N does better
    grid = np.geomspace(N / 10, N * 10, 20001)
    loss = law["E"] + law["A"] / grid ** law["alpha"] + law["B"] / (C / (6 * grid)) ** law["beta"]
    assert grid[np.argmin(loss)] == pytest.approx(N, rel=1e-3)
    assert "tokens per parameter" in plan.law_note


def test_cli_plan(capsys, tmp_path):
    out = tmp_path / "plan.json"
    argv = ["plan", "--params", "7e9", "--tokens", "300e9", "--context", "131072", "--gpus", "8xH100"]
    assert main(argv + ["--n-layer", "32", "--d-model", "4096", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "1.260e+22" in text and "suggested layout: FSDP" in text
    data = json.loads(out.read_text())
    assert data["memory_gib"]["FSDP x8 + act. ckpt"]["fits"] is True
    assert main(["plan", "--preset", "evo-1-131k", "--tokens", "300e9", "--gpus", "64xH100"]) == 0
    assert "per-layer count" in capsys.readouterr().out
    assert main(["plan", "--tokens", "1e9"]) == 2  # no model given
    assert "--params" in capsys.readouterr().err
    assert main(["plan", "--params", "1e9", "--tokens", "1e9", "--gpus", "2xB300"]) == 2


def test_activation_model_hnet_whole_model():
    """dnaHNet: stages see data-dependent numbers of positions, so the whole model is compared, with the
    stage lengths the router really chose."""
    import copy

    from dnalm.models.hnet import HNetConfig

    cfg = HNetConfig(
        d_model=32, inner_d_model=[48, 64], encoder_layout=["t1m1", "m1"], decoder_layout=["m1t1", "m1"],
        main_layout="t1", attn_head_dim=16, d_state=16, mamba_headdim=16, ssd_chunk_size=32, max_len=512,
    )  # fmt: skip
    B, L = 2, 256
    torch.manual_seed(0)
    model = DNALM(cfg)
    ids = torch.randint(7, 11, (B, L))
    with torch.no_grad():
        routes = model.backbone.boundaries(model.embed(ids))
    shares = [1.0] + [int(r.boundary.sum()) / (B * L) for r in routes]
    measured = _saved_elements(cfg, B, L) / (B * L)  # same seed, same weights, same routing
    shape = shape_from_config(cfg)
    level = {w: i for i, w in enumerate(cfg.widths)}
    predicted = 3 * cfg.d_model  # the shell's final norm
    for spec in shape.layers:
        spec = copy.copy(spec)
        lv = level[spec.width]
        spec.share = shares[lv]
        if spec.kind == "routing":
            spec.next_share = shares[lv + 1] / shares[lv]
        half, fp32 = activation_elements(
            spec, shape.d_model, shape.mlp_hidden, int(L * spec.share), B, mixed_precision=False
        )
        predicted += spec.share * (half + fp32)
    assert measured == pytest.approx(predicted, rel=0.08)
