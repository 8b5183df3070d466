"""dnaHNet: dynamic-chunking pieces against direct definitions, the ratio loss minimum, step-mode
generation against the full forward pass, config validation, and a short training run on real E. coli."""

from __future__ import annotations

import gzip
from importlib import resources

import numpy as np
import pytest
import torch

import dnalm
from dnalm.config import ConfigError
from dnalm.models import model_config_from_dict
from dnalm.models.hnet import HNetConfig
from dnalm.models.hnet import (
    Router,
    chunk,
    ema_smooth,
    nucleotide_boundaries,
    parse_layout,
    ratio_loss,
    ste_ones,
)
from dnalm.models.lm import DNALM, lm_loss
from dnalm.tokenizer import BOS, encode_bytes


def _small(**kw) -> HNetConfig:
    base = dict(
        d_model=32,
        inner_d_model=[32, 64],
        target_ratios=[3.0, 2.0],
        encoder_layout=["t1m2", "m1t1"],
        decoder_layout=["m2t1", "t1m1"],
        main_layout="t1m1",
        attn_head_dim=16,
        d_state=8,
        mamba_headdim=16,
        ssd_chunk_size=8,
        max_len=200,
    )
    base.update(kw)
    return HNetConfig(**base)


def _ecoli_ids(start: int, length: int) -> np.ndarray:
    """Real E. coli K-12 MG1655 bases from the embedded genome (dnalm/resources, NC_000913.3)."""
    path = resources.files("dnalm") / "resources" / "ecoli_k12_mg1655.fa.gz"
    chunks, have = [], 0
    with gzip.open(str(path), "rb") as f:
        f.readline()  # header
        for line in f:
            chunks.append(line.strip())
            have += len(chunks[-1])
            if have >= start + length:
                break
    return encode_bytes(b"".join(chunks)[start : start + length])[0]


# ------------------------------------------------------------------------------------------ the pieces


def test_ema_matches_direct_loop():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3, 29, 5, generator=gen)
    P = torch.rand(3, 29, generator=gen).clamp(1e-4, 1 - 1e-4)
    for chunk_size in (4, 8, 64):
        out = ema_smooth(z, P, chunk_size)
        ref = torch.zeros_like(z)
        prev = torch.zeros(3, 5)
        for j in range(29):
            prev = P[:, j, None] * z[:, j] + (1 - P[:, j, None]) * prev
            ref[:, j] = prev
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("N", [2.0, 3.0, 4.5])
def test_ratio_loss_minimum_at_one_over_N(N):
    # evaluate the implementation on inputs with F = G = x: the minimum (= 1) sits at x = 1/N
    n = 1800
    xs, values = np.arange(1, n) / n, []
    for x in xs:
        b = torch.zeros(1, n, dtype=torch.bool)
        b[0, : int(round(x * n))] = True
        loss, Fr, G = ratio_loss(b, torch.full((1, n), float(x)), torch.ones_like(b), N)
        values.append(float(loss))
    best = xs[int(np.argmin(values))]
    assert abs(best - 1 / N) < 2e-3
    assert abs(min(values) - 1.0) < 1e-4
    # off the diagonal the loss is bilinear: pushing G down while F sits above 1/N is rewarded, which is
    # what drives the router toward the target
    b = torch.zeros(1, n, dtype=torch.bool)
    b[0, : n // 2] = True
    lo = ratio_loss(b, torch.full((1, n), 0.2), torch.ones_like(b), N)[0]
    hi = ratio_loss(b, torch.full((1, n), 0.8), torch.ones_like(b), N)[0]
    assert float(lo) < float(hi) if N > 2 else float(lo) == pytest.approx(float(hi))


def test_ratio_loss_ignores_padding_and_is_batch_level():
    b = torch.tensor([[1, 0, 0, 1], [1, 1, 0, 0]], dtype=torch.bool)
    p = torch.tensor([[1.0, 0.2, 0.1, 0.7], [1.0, 0.9, 0.5, 0.5]])
    valid = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    _, Fr, G = ratio_loss(b, p, valid, 2.0)
    assert abs(float(Fr) - 4 / 6) < 1e-6  # pooled over the batch, not a mean of per-sample fractions
    assert abs(float(G) - (1 + 0.2 + 0.1 + 0.7 + 1 + 0.9) / 6) < 1e-6


def test_chunk_with_unequal_counts():
    h = torch.arange(2 * 6 * 2, dtype=torch.float32).reshape(2, 6, 2)
    b = torch.tensor([[1, 0, 1, 1, 0, 0], [1, 0, 0, 0, 0, 1]], dtype=torch.bool)
    out, mask, index = chunk(h, b)
    assert out.shape == (2, 3, 2)
    assert mask.tolist() == [[True, True, True], [True, True, False]]
    for i in range(2):
        ref = h[i, b[i]]
        torch.testing.assert_close(out[i, : len(ref)], ref)
        assert index[i, : len(ref)].tolist() == torch.nonzero(b[i]).flatten().tolist()


def test_router_first_position_and_cosine():
    torch.manual_seed(0)
    r = Router(8)
    torch.testing.assert_close(r.q_proj.weight, torch.eye(8))
    h = torch.randn(2, 7, 8)
    p = r(h)
    assert torch.all(p[:, 0] == 1.0)
    cos = torch.nn.functional.cosine_similarity(h[:, 1:], h[:, :-1], dim=-1)
    torch.testing.assert_close(p[:, 1:], (1 - cos) / 2, atol=1e-6, rtol=1e-5)
    h2 = h.clone()
    h2[:, 3] = h2[:, 2] * 2.5  # same direction as its predecessor: p = 0
    assert float(r(h2)[0, 3].detach()) < 1e-6


def test_ste_is_one_forward_and_identity_backward():
    c = torch.tensor([0.3, 0.9, 0.51], requires_grad=True)
    out = ste_ones(c)
    assert torch.equal(out, torch.ones(3))
    (out * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    torch.testing.assert_close(c.grad, torch.tensor([1.0, 2.0, 3.0]))


def test_parse_layout():
    assert parse_layout("t1m4") == ["t", "m", "m", "m", "m"]
    with pytest.raises(ValueError, match="layout"):
        parse_layout("x3")


# ------------------------------------------------------------------------------------------ the model


@pytest.mark.parametrize("stages", [1, 2])
def test_forward_outputs_and_init(stages):
    torch.manual_seed(0)
    cfg = _small() if stages == 2 else _small(inner_d_model=[64], target_ratios=[4.0], encoder_layout=["m2t1"], decoder_layout=["t1m2"])
    model = DNALM(cfg)
    ids = torch.from_numpy(_ecoli_ids(10_000, 2 * 120).astype(np.int64)).reshape(2, 120)
    out = model(ids, output_hidden_states=True)
    assert out.logits.shape == (2, 120, cfg.vocab_size)
    assert len(out.hidden_states) == 5 and all(h.shape == (2, 120, 32) for h in out.hidden_states)
    keys = {f"stage{s}/{k}" for s in range(stages) for k in ("ratio_loss", "compression", "boundary_prob")}
    assert set(out.metrics) == keys
    routes = model.backbone.boundaries(model.embed(ids))
    expected = sum(
        ratio_loss(r.boundary, r.prob, r.valid, n)[0] for r, n in zip(routes, cfg.target_ratios)
    ) * cfg.ratio_loss_alpha
    torch.testing.assert_close(out.aux_loss, expected)
    stage = model.backbone.stage0
    assert torch.all(stage.residual_proj.weight == 0)
    torch.testing.assert_close(stage.router.k_proj.weight, torch.eye(32))


def test_gradients_reach_router_and_every_parameter():
    torch.manual_seed(0)
    cfg = _small()
    model = DNALM(cfg)
    ids = torch.from_numpy(_ecoli_ids(50_000, 3 * 96).astype(np.int64)).reshape(3, 96)
    out = model(ids)
    (lm_loss(out.logits[:, :-1], ids[:, 1:]) + out.aux_loss).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert float(model.backbone.stage0.router.q_proj.weight.grad.abs().sum()) > 0
    assert float(model.backbone.stage0.residual_proj.weight.grad.abs().sum()) > 0


def test_deeper_boundaries_start_at_shallower_ones():
    torch.manual_seed(1)
    model = DNALM(_small()).eval()
    ids = torch.from_numpy(_ecoli_ids(123_000, 2 * 150).astype(np.int64)).reshape(2, 150)
    routes = model.backbone.boundaries(model.embed(ids))
    b0, b1 = nucleotide_boundaries(routes, 150)
    assert b0[:, 0].all() and b1[:, 0].all()
    assert not (b1 & ~b0).any()  # a stage-1 chunk starts where a stage-0 chunk starts
    assert int(b1.sum()) == int(routes[1].boundary.sum())


@pytest.mark.parametrize("stages,split", [(1, 1), (2, 40), (2, 1)])
def test_step_mode_logits_match_full_forward(stages, split):
    torch.manual_seed(2)
    if stages == 2:
        cfg = _small()
    else:
        cfg = _small(inner_d_model=[48], target_ratios=[3.0], encoder_layout=["t1m1"], decoder_layout=["m1t1"], attn_head_dim=16)
    model = DNALM(cfg).eval()
    L = 90
    seq = _ecoli_ids(200_000, 2 * (L - 1)).astype(np.int64).reshape(2, L - 1)
    ids = torch.from_numpy(np.concatenate([np.full((2, 1), BOS), seq], axis=1))
    bb = model.backbone
    with torch.no_grad():
        full = model(ids).logits  # (2, L, V)
        x = model.embed(ids)
        y, state = bb.prefill(x[:, :split])
        outs = [y]
        for t in range(split, L):
            y_t, state = bb.step(x[:, t], state)
            outs.append(y_t[:, None])
        stepped = torch.nn.functional.linear(model.norm_f(torch.cat(outs, 1)), model.head_weight)
    torch.testing.assert_close(stepped, full, atol=1e-4, rtol=1e-4)
    # the deeper network moved only on boundary tokens: per sample, its steps = stage-0 boundaries stepped
    routes = bb.boundaries(x)
    stepped_b = torch.stack(state.boundaries, 1)  # (B, L - split)
    torch.testing.assert_close(stepped_b, routes[0].boundary[:, split:])


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="inner_d_model"):
        HNetConfig(inner_d_model=[96])
    with pytest.raises(ConfigError, match="never shrink"):
        HNetConfig(d_model=128, inner_d_model=[96, 128])
    with pytest.raises(ConfigError, match=r"target_ratios\[1\]"):
        HNetConfig(target_ratios=[3.0, 1.0])
    with pytest.raises(ConfigError, match=r"encoder_layout\[0\]"):
        HNetConfig(encoder_layout=["q4", "m4t1"])
    with pytest.raises(ConfigError, match="attn_head_dim"):
        HNetConfig(d_model=48, attn_head_dim=32)
    cfg = model_config_from_dict({"family": "hnet", "target_ratios": [2, 2]})
    assert cfg.target_ratios == [2.0, 2.0] and cfg.n_stages == 2
    with pytest.raises(ConfigError, match="unknown key"):
        model_config_from_dict({"family": "hnet", "ratio_alpha": 0.1})


def test_short_training_on_ecoli_lowers_the_loss():
    # a plain PyTorch loop: DNALM + lm_loss + aux_loss on real E. coli windows
    torch.manual_seed(0)
    cfg = _small(d_model=32, inner_d_model=[32, 32], main_layout="t1")
    model = DNALM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    genome = _ecoli_ids(300_000, 40_000)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(25):
        starts = rng.integers(0, len(genome) - 128, size=4)
        seq = np.stack([genome[s : s + 128] for s in starts]).astype(np.int64)
        ids = torch.from_numpy(np.concatenate([np.full((4, 1), BOS), seq], axis=1))
        out = model(ids[:, :-1])
        nll = lm_loss(out.logits, ids[:, 1:])
        (nll + out.aux_loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(float(nll.detach()))
    # from a uniform guess over the 16-token vocabulary (2.77 nats) toward the 4 bases (1.39 nats)
    assert np.mean(losses[:3]) > 2.3
    assert np.mean(losses[-5:]) < 1.6


def test_presets_are_cpu_sized_and_run():
    from dnalm.models import get_preset

    for name, ratios in (("dnahnet-tiny-32", [3.0, 2.0]), ("dnahnet-tiny-22", [2.0, 2.0]), ("dnahnet-tiny-3", [3.0])):
        cfg = get_preset(name)
        assert cfg.target_ratios == ratios and cfg.encoder_layout[0] == "t1m4"
        model = DNALM(cfg)
        assert 0.5e6 <= model.num_parameters() <= 2e6
    out = model(torch.from_numpy(_ecoli_ids(0, 64).astype(np.int64))[None])
    assert out.logits.shape == (1, 64, cfg.vocab_size) and torch.isfinite(out.logits).all()


def test_generate_with_recurrent_steps_equals_recompute():
    # DNALM.generate: batched samples step the deeper stages sample by sample; same seed, same bases
    # as recomputing the whole prefix for every token
    torch.manual_seed(3)
    model = DNALM(_small()).eval()
    prompt = "ATGAAACGCATTAGCACCACCATTACCACCACCATCACCATTACCACAGGTAACGGTGCGGGCTGA"  # E. coli thrL CDS (start)
    fast = dnalm.generate(model, prompt, 24, seed=7, num_samples=3)
    slow = dnalm.generate(model, prompt, 24, seed=7, num_samples=3, use_cache=False)
    assert fast == slow and len(fast) == 3 and all(len(s) == 24 for s in fast)


def test_trainer_weight_decay_skips_the_router():
    from dnalm.train.optim import param_groups

    model = DNALM(_small())
    plain = {id(p) for p in param_groups(model, 0.1)[1]["params"]}
    for name, p in model.named_parameters():
        if "router" in name or name.endswith(("A_log", "dt_bias", ".D")):
            assert id(p) in plain, name
