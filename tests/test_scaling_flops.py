"""Analytic FLOPs per token against PyTorch's FLOP counter, and parameter counts against real models.

The measured side is ``torch.utils.flop_counter.FlopCounterMode`` run on small real models, through
``dnalm.scaling.flops.measure_flops``, which fills two gaps of the counter with torch's own formulas:
CPU attention is not registered (it gets ``sdpa_flop_count``), and grouped-convolution backward is
over-counted (``groups`` ignored; a depthwise conv's backward comes out ~C times too large).
"""

from __future__ import annotations

import math

import pytest
import torch

from dnalm.models.hnet import HNetConfig
from dnalm.models.striped_hyena import StripedHyenaConfig
from dnalm.models.lm import DNALM
from dnalm.models import get_preset, list_presets
from dnalm.scaling.flops import count_params, flops_per_token, measure_flops, rfft_flops


def _small_hnet() -> HNetConfig:
    return HNetConfig(
        d_model=32, inner_d_model=[48, 64], encoder_layout=["t1m1", "m1"], decoder_layout=["m1t1", "m1"],
        main_layout="t1", attn_head_dim=16, d_state=16, mamba_headdim=16, ssd_chunk_size=32, max_len=512,
    )  # fmt: skip


CONFIGS = {
    "hyena": lambda: get_preset("hyenadna-tiny-1k"),
    "transformer": lambda: get_preset("transformer-tiny-1k"),
    "striped_hyena_v1": lambda: get_preset("striped-hyena-tiny"),
    "striped_hyena_v2": lambda: get_preset("striped-hyena2-tiny"),
    "hnet": _small_hnet,
}


def _measure(config, B: int, L: int, train: bool) -> tuple[float, list[float] | None]:
    """Measured FLOPs per token of DNALM(config) on random A/C/G/T ids (counts do not depend on the values,
    except dnaHNet's routing), and for dnaHNet the positions each stage actually kept."""
    torch.manual_seed(0)
    model = DNALM(config)
    ids = torch.randint(7, 11, (B, L))
    lengths = None
    if config.family == "hnet":
        with torch.no_grad():
            routes = model.backbone.boundaries(model.embed(ids))
        lengths = [L] + [int(r.boundary.sum()) for r in routes]
    return measure_flops(model, ids, train=train), lengths


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forward_matches_flop_counter(name):
    config = CONFIGS[name]()
    B = 1 if name == "hnet" else 2  # dnaHNet pads chunk counts across a batch; one sequence is exact
    measured, lengths = _measure(config, B, 256, train=False)
    bd = flops_per_token(config, 256, batch_size=B, stage_lengths=lengths)
    assert measured == pytest.approx(bd.matmul, rel=0.02), bd.table()
    assert bd.forward > bd.matmul or not bd.fft_terms  # FFT terms are counted, and kept apart


@pytest.mark.parametrize("name", ["hyena", "transformer", "striped_hyena_v2"])
def test_training_is_three_forwards(name):
    config = CONFIGS[name]()
    measured, _ = _measure(config, 2, 128, train=True)
    bd = flops_per_token(config, 128, batch_size=2)
    # a flash-style attention backward recomputes Q K^T: half an attention core more than 3x forward
    expected = 3 * bd.matmul + 0.5 * bd.terms.get("attention_core", 0.0)
    assert measured == pytest.approx(expected, rel=0.03)


def test_batch_amortises_per_sequence_work():
    cfg = get_preset("hyenadna-tiny-1k")
    one, eight = flops_per_token(cfg, 1024, 1), flops_per_token(cfg, 1024, 8)
    assert eight.terms["filter_mlp"] == pytest.approx(one.terms["filter_mlp"] / 8)
    assert eight.fft_terms["filter_fft"] == pytest.approx(one.fft_terms["filter_fft"] / 8)
    assert eight.terms["in_proj"] == one.terms["in_proj"]


def test_fft_terms_follow_spec_estimate():
    """docs/architectures.md §4: an FFT long convolution costs about 10 d log2(L) per token (filter FFT amortised)."""
    cfg = get_preset("hyenadna-small-32k")
    for L in (4096, 32768):
        bd = flops_per_token(cfg, L, batch_size=1024)
        spec = 10 * cfg.d_model * math.log2(L) * cfg.n_layer
        assert bd.fft == pytest.approx(spec, rel=0.2)
    assert rfft_flops(1024) == 2.5 * 1024 * 10


def test_causal_savings_halve_attention_core():
    cfg = get_preset("transformer-tiny-1k")
    dense, causal = flops_per_token(cfg, 1024), flops_per_token(cfg, 1024, causal_savings=True)
    assert causal.terms["attention_core"] == pytest.approx(dense.terms["attention_core"] * 1025 / 2048)
    assert causal.terms["mlp"] == dense.terms["mlp"]


def test_evo1_per_layer_count_at_8k_and_131k():
    """Evo 1 7B: the full count is ~6N per token at 8k; at 131k its 3 attention layers' core grows by
    4 d (131072 - 8192) per token each (x3 for training), which is what separates the two."""
    short, long = get_preset("evo-1-8k"), get_preset("evo-1-131k")
    b8, b131 = flops_per_token(short, 8192, 8), flops_per_token(long, 131072, 8)
    assert b8.training == pytest.approx(b8.six_n, rel=0.05)
    attn_growth = 3 * 3 * 4 * 4096 * (131072 - 8192)
    fft_growth = 3 * (b131.fft - b8.fft)
    filter_growth = 3 * (b131.terms["modal_filter"] - b8.terms["modal_filter"])  # sqrt(L) table rounding
    assert b131.training - b8.training == pytest.approx(attn_growth + fft_growth + filter_growth, rel=1e-9)
    assert 1.4 < b131.training / b131.six_n < 1.6


@pytest.mark.parametrize("name", list_presets())
def test_count_params_matches_model(name):
    config = get_preset(name)
    with torch.device("meta"):  # 7B/40B presets cost nothing on the meta device
        model = DNALM(config)
    assert count_params(config) == model.num_parameters()


def test_count_params_other_configs():
    for config in (
        _small_hnet(),
        HNetConfig(),
        StripedHyenaConfig(version=2, n_layer=7, tie_embeddings=False),
        StripedHyenaConfig(version=1, n_layer=9),
    ):
        assert count_params(config) == DNALM(config).num_parameters()


def test_unknown_family_is_a_clear_error():
    class Odd:
        family = "mystery"

    with pytest.raises(ValueError, match="mystery"):
        flops_per_token(Odd(), 128)
