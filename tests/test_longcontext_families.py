"""One-pass long-sequence inference (dnalm.eval.longcontext.forward_long) equals the ordinary forward for every
family with a one-pass schedule: StripedHyena 1 (modal "hyena" + attention), StripedHyena 2 (SE, MR, LI +
attention), dnaHNet (Mamba-2 + attention, routing, EMA dechunking) and Transformer++; every hidden state,
the logits and the per-base log-likelihoods, within 1e-5 in float32, on real sequence (phiX174, human chr2).

Chunks are deliberately small and not aligned with anything (halos of the short filters, SE/MR filters and
Mamba-2's conv cross chunk edges; attention combines earlier keys with the chunk's own causally), and FFT
channel groups split the channels unevenly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dnalm.data.sequences import read_sequences
from dnalm.eval import longcontext as LC
from dnalm.models import get_preset
from dnalm.models.hnet import HNetConfig
from dnalm.models.lm import DNALM, meta_model
from dnalm.models.striped_hyena import StripedHyenaConfig
from dnalm.tokenizer import BOS

DATA = Path(__file__).parent / "data"


def phix_ids(n: int) -> torch.Tensor:
    rec = next(read_sequences(DATA / "phage_phix174.fa"))
    return torch.from_numpy(np.concatenate([[BOS], rec.ids[:n]]).astype(np.int64))


def human_ids(start: int, n: int) -> torch.Tensor:
    rec = next(read_sequences(DATA / "human_chr2_1-100000_softmasked.fa.gz"))
    return torch.from_numpy(np.concatenate([[BOS], rec.ids[start : start + n]]).astype(np.int64))


def _model(config, seed: int = 0) -> DNALM:
    torch.manual_seed(seed)
    return DNALM(config).eval()


def striped(version: int) -> DNALM:
    layers = ["hyena", "attn", "hyena"] if version == 1 else ["se", "mr", "li", "attn", "se"]
    return _model(StripedHyenaConfig(version=version, n_layer=len(layers), d_model=48, n_head=4, max_len=2100,
                                     layers=layers, mlp_hidden=96, mr_len=40, filter_groups=6))


def hnet(ratios) -> DNALM:
    inner = [48, 64][: len(ratios)]
    return _model(HNetConfig(d_model=32, inner_d_model=inner, target_ratios=list(ratios),
                             encoder_layout=["t1m2"] * len(ratios), decoder_layout=["m2t1"] * len(ratios),
                             main_layout="t1m1", attn_head_dim=16, d_state=16, mamba_headdim=16,
                             ssd_chunk_size=32, max_len=2100))


def _check_all(model: DNALM, ids: torch.Tensor, chunk: int, group: int | None = None) -> None:
    assert LC.one_pass_supported(model)
    with torch.no_grad():
        ref = model(ids[None], output_hidden_states=True)
    n = len(ref.hidden_states)
    for layer in range(n):
        h = LC.forward_long(model, ids, "hidden", layer=layer, chunk=chunk, channel_group=group)
        torch.testing.assert_close(h, ref.hidden_states[layer][0].float(), rtol=1e-5, atol=1e-5,
                                   msg=lambda m: f"hidden state {layer} of {n}: {m}")
    logits = LC.forward_long(model, ids, "logits", chunk=chunk, channel_group=group)
    torch.testing.assert_close(logits, ref.logits[0], rtol=1e-5, atol=1e-5)
    lp = LC.forward_long(model, ids, "logprobs", chunk=chunk, channel_group=group)
    ref_lp = torch.log_softmax(ref.logits[0, :-1], -1).gather(-1, ids[1:, None])[:, 0]
    torch.testing.assert_close(lp, ref_lp, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("version", [1, 2])
def test_striped_hyena_one_pass_equals_forward(version):
    _check_all(striped(version), phix_ids(2000), chunk=333, group=7)


@pytest.mark.parametrize("ratios", [(3.0,), (2.0, 2.0)])
def test_dnahnet_one_pass_equals_forward(ratios):
    """Chunks of 96 positions (3 SSD chunks) against the ordinary forward; the routers of a random model
    keep about half the positions, so the deeper stages see real chunk sequences."""
    model = hnet(ratios)
    ids = human_ids(30_000, 1500)
    _check_all(model, ids, chunk=96)
    routes = model.backbone.boundaries(model.embed(ids[None]))
    assert 0 < int(routes[0].boundary.sum()) < len(ids)


def test_one_pass_memory_estimates_grow_with_length():
    """Estimates exist for every supported family, on meta-device models (nothing allocated), and grow
    with the length; a 7B-class StripedHyena 2 at 1M tokens is far above this machine."""
    for model in (striped(1), striped(2), hnet((2.0, 2.0))):
        small, big = LC.estimate_memory(model, 10_000), LC.estimate_memory(model, 100_000)
        assert 0 < small.total < big.total
    meta = meta_model(get_preset("evo2-7b"))
    est = LC.estimate_memory(meta, 1_000_000, "logprobs")
    assert est.parts["weights"] > 20 * 2**30 and est.total > 40 * 2**30


@pytest.mark.parametrize("fixture", ["evo1_tiny", "evo2_tiny", "evo2_rope"])
def test_imported_evo_fixtures_one_pass_equals_forward(fixture):
    """The released layouts (Evo 1 column split, Evo 2 interleave, bf16 RoPE rule), as dnalm.load reads them."""
    import dnalm

    model = dnalm.load(DATA / "evo" / fixture).float().eval()
    ids = torch.as_tensor(model.tokenizer.model_ids(phix_ids(700).numpy()[1:]), dtype=torch.long)
    _check_all(model, ids, chunk=160, group=5)


def test_bf16_weights_stay_bf16_and_compute_in_float32_on_request():
    """Weights kept in bf16 (as released): compute="float32" converts one block at a time for its pass and
    equals the float32 model of the same (bf16-rounded) weights; afterwards every weight is bf16 again.
    compute="weights" runs the matmuls in bf16 (the path taken on CPUs with native bf16): close to it."""
    model = striped(2).to(torch.bfloat16)
    for n, p in model.named_parameters():
        if n.endswith(("log_poles", "residues")):  # filter coefficients stay float32, as the releases store them
            p.data = p.data.float()
    before = {n: (p.dtype, p.clone()) for n, p in model.named_parameters()}
    ids = phix_ids(1200)
    ref = LC.forward_long(_float_copy(model), ids, "logprobs", chunk=300)
    up = LC.forward_long(model, ids, "logprobs", chunk=300, compute="float32")
    torch.testing.assert_close(up, ref, rtol=1e-5, atol=1e-5)
    for n, p in model.named_parameters():
        assert p.dtype == before[n][0] and torch.equal(p, before[n][1]), n
    low = LC.forward_long(model, ids, "logprobs", chunk=300, compute="weights")
    assert (low - ref).abs().mean() < 0.05


def _float_copy(model):
    import copy

    return copy.deepcopy(model).float()
