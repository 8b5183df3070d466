"""HyenaDNA operator, block and backbone: shapes, causality on real E. coli sequence, the implicit filter
against its published formula (docs/architectures.md §1), the operator against a naive direct-convolution reference (orders 2 and 3),
the eval-mode filter-FFT cache, and the checkpoint layout."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dnalm.models.hyena import HyenaConfig
from dnalm.models.hyena import HyenaBackbone, HyenaBlock, HyenaOperator
from dnalm.models.lm import DNALM
from dnalm.ops.fftconv import direct_long_conv
from dnalm.tokenizer import BOS
from realdata import ecoli_ids, perturbed

def small_config(**kw) -> HyenaConfig:
    return HyenaConfig(**{"n_layer": 2, "d_model": 16, "l_max": 258, "filter_order": 8, **kw})


def test_backbone_shapes_dtype_and_hidden_states():
    cfg = small_config()
    bb = HyenaBackbone(cfg)
    assert len(bb.layers) == 2 and all(isinstance(b, HyenaBlock) for b in bb.layers)
    x = torch.randn(3, 50, 16)
    out = bb(x, output_hidden_states=True)
    assert out.hidden.shape == (3, 50, 16) and out.hidden.dtype == torch.float32
    assert len(out.hidden_states) == 2 and out.hidden_states[-1] is out.hidden
    assert bb(x).hidden_states is None
    assert bb.layers[0].mixer.long_filter(50).shape == (16, 50)


def test_lm_is_causal_on_real_sequence():
    """Changing bases after position t never changes the logits at positions <= t."""
    torch.manual_seed(0)
    model = perturbed(DNALM(small_config(l_max=302))).eval()
    ids = torch.cat([torch.tensor([BOS]), ecoli_ids(300)])[None]  # (1, 301)
    ids2 = ids.clone()
    ids2[0, 200:] = torch.cat([torch.tensor([BOS]), ecoli_ids(300, start=5000)])[200:]  # other real bases
    assert (ids2 != ids).any()
    with torch.no_grad():
        a, b = model(ids).logits, model(ids2).logits
    first_change = int((ids2 != ids)[0].nonzero()[0])
    assert (a[:, :first_change] - b[:, :first_change]).abs().max() < 1e-5
    assert (a[:, first_change:] - b[:, first_change:]).abs().max() > 1e-3


def _filter_from_spec(op: HyenaOperator, cfg: HyenaConfig, L: int) -> torch.Tensor:
    """docs/architectures.md §1, written out: features at l_max positions, sin MLP with one freq, window."""
    lm = cfg.l_max
    i = torch.arange(lm, dtype=torch.float64)
    t = i / (lm - 1)
    bands = (cfg.emb_dim - 1) // 2
    f = torch.linspace(1e-4, bands - 1, bands, dtype=torch.float64)
    w = 2 * math.pi * i / lm
    z = torch.cat([t[:, None], torch.cos(-f * w[:, None]), torch.sin(-f * w[:, None])], 1)  # (l_max, emb_dim)
    mlp = op.filter_fn.implicit_filter
    freq = mlp.freq.double()
    h = z
    for k in range(cfg.num_inner_mlps + 1):
        lin = getattr(mlp, str(2 * k))
        h = torch.sin(freq * F.linear(h, lin.weight.double(), lin.bias.double()))
    h = F.linear(h, getattr(mlp, str(2 * cfg.num_inner_mlps + 2)).weight.double())  # (l_max, C)
    C = h.shape[1]
    delta = torch.linspace(math.log(0.01) / 1.5, math.log(0.01) / 0.3, C, dtype=torch.float64)
    h = h * (torch.exp(-t[:, None] * delta.abs()) + cfg.modulation_shift)
    return h[:L].T  # (C, L): built at l_max, first L used


@pytest.mark.parametrize("L", [1, 37, 258])
def test_implicit_filter_matches_spec_formula(L):
    cfg = small_config()
    op = perturbed(HyenaOperator(cfg))
    k = op.long_filter(L)
    assert k.shape == (16, L) and k.dtype == torch.float32
    torch.testing.assert_close(k.double(), _filter_from_spec(op, cfg, L), atol=1e-5, rtol=1e-4)
    # time is normalised to l_max: a shorter input sees a prefix of the same filter
    torch.testing.assert_close(k, op.long_filter(258)[:, :L])


def _naive_operator(op: HyenaOperator, u: torch.Tensor) -> torch.Tensor:
    """Order-N Hyena with explicit loops: causal short conv by shifts, direct long conv in float64."""
    B, L, D = u.shape
    W = op.short_filter.weight.double()[:, 0]  # (3D, k), last tap = current input (cross-correlation)
    k = W.shape[1]
    z = (u.double() @ op.in_proj.weight.double().T + op.in_proj.bias.double()).transpose(1, 2)  # (B, ND, L)
    s = op.short_filter.bias.double()[:, None].expand(-1, L).clone()[None].repeat(B, 1, 1)
    for j in range(k):  # tap j multiplies u[t - (k-1-j)]
        lag = k - 1 - j
        s[..., lag:] += W[:, j, None] * z[..., : L - lag]
    parts = s.split(D, dim=1)
    x0, gates, v = parts[0], parts[1:-1], parts[-1]
    h = op.long_filter(L).double()
    bias = op.filter_fn.bias.double()
    for o, x in enumerate(reversed(gates)):
        v = v * x
        v = direct_long_conv(v, h[o * D : (o + 1) * D], bias[o * D : (o + 1) * D])
    y = (x0 * v).transpose(1, 2)  # (B, L, D)
    return y @ op.out_proj.weight.double().T + op.out_proj.bias.double()


@pytest.mark.parametrize("order,short", [(2, 3), (3, 3), (2, 4)])
def test_operator_matches_naive_reference(order, short):
    cfg = small_config(order=order, short_filter_order=short)
    op = perturbed(HyenaOperator(cfg), seed=order).train()
    u = torch.randn(2, 61, 16, generator=torch.Generator().manual_seed(3))
    y = op(u)
    assert y.shape == (2, 61, 16)
    if order == 3:
        assert op.in_proj.out_features == 4 * 16 and op.long_filter(61).shape == (32, 61)
    torch.testing.assert_close(y.double(), _naive_operator(op, u), atol=1e-5, rtol=1e-4)


def test_too_long_input_is_a_clear_error():
    bb = HyenaBackbone(small_config(l_max=64))
    with pytest.raises(ValueError, match="l_max=64"):
        bb(torch.randn(1, 65, 16))
    with pytest.raises(ValueError, match="l_max=64"):
        bb.layers[0].mixer.long_filter(65)


def test_eval_filter_cache_is_used_and_invalidated():
    torch.manual_seed(1)
    model = perturbed(DNALM(small_config())).eval()
    op = model.backbone.layers[0].mixer
    ids = ecoli_ids(100)[None]
    with torch.no_grad():
        y1 = model(ids).logits
        assert op._fft_cache is not None  # filled in eval + no_grad
        cached = op._fft_cache[1]
        torch.testing.assert_close(model(ids).logits, y1)
        assert op._fft_cache[1] is cached  # reused
    with torch.enable_grad():
        y_grad = model(ids).logits  # autograd path: no cache, same numbers
    torch.testing.assert_close(y_grad, y1, atol=1e-6, rtol=1e-6)
    # an optimizer step changes the filter weights in place: the cache must notice
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    model(ids).logits.square().mean().backward()
    opt.step()
    assert op._fft_cache is None  # train() dropped it
    model.eval()
    with torch.no_grad():
        y2 = model(ids).logits
    with torch.enable_grad():
        y2_ref = model(ids).logits
    assert (y2 - y1).abs().max() > 1e-4
    torch.testing.assert_close(y2, y2_ref, atol=1e-6, rtol=1e-6)
    # load_state_dict (copy_ in place) also invalidates
    fresh = DNALM(small_config()).eval()
    with torch.no_grad():
        fresh(ids)
        fresh.load_state_dict(model.state_dict())
        torch.testing.assert_close(fresh(ids).logits, y2, atol=1e-6, rtol=1e-6)


def test_gradients_reach_filter_and_freq():
    model = perturbed(DNALM(small_config())).train()
    model(ecoli_ids(80)[None]).logits.logsumexp(-1).mean().backward()
    mixer = model.backbone.layers[1].mixer
    fn = mixer.filter_fn
    for p in [fn.implicit_filter.freq, fn.bias, mixer.short_filter.weight, mixer.in_proj.weight]:
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_bf16_autocast_keeps_float32_residual():
    model = perturbed(DNALM(small_config())).eval()
    x = model.embed(ecoli_ids(120)[None])
    with torch.no_grad():
        ref = model.backbone(x).hidden
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.backbone(x).hidden
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def test_init_and_state_dict_layout(tmp_path):
    cfg = small_config(n_layer=8, d_model=64, d_inner=256)
    torch.manual_seed(0)
    model = DNALM(cfg)
    blk = model.backbone.layers[0]
    assert blk.mixer.in_proj.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert blk.mixer.out_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.1)
    assert blk.mlp.fc2.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.1)
    assert blk.mixer.filter_fn.bias.std().item() == pytest.approx(1.0, rel=0.3)
    assert (blk.mixer.filter_fn.implicit_filter.freq == 10.0).all()
    assert blk.norm1.eps == cfg.block_ln_eps
    keys = model.state_dict().keys()
    p = "backbone.layers.0.mixer.filter_fn."
    expected = {"pos_emb.z", "modulation.deltas", "implicit_filter.freq", "implicit_filter.6.weight"}
    assert {p + k for k in expected} <= keys
    assert p + "pos_emb.t" not in keys and not any(k.endswith(".1.freq") for k in keys)
    # safetensors round trip (no aliased tensors), same outputs
    from dnalm.checkpoint import load_pretrained, save_pretrained

    perturbed(model)
    save_pretrained(model, tmp_path / "ckpt")
    loaded = load_pretrained(tmp_path / "ckpt").eval()
    ids = ecoli_ids(64)[None]
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model.eval()(ids).logits)


def test_bf16_weights_filter_and_fft_stay_float32():
    """A model cast to bf16 (inference) still builds its filters and runs its FFTs in float32."""
    model = perturbed(DNALM(small_config())).eval()
    x = model.embed(ecoli_ids(120)[None])
    with torch.no_grad():
        ref = model.backbone(x).hidden
        model.backbone.to(torch.bfloat16)
        assert model.backbone.layers[0].mixer.long_filter(120).dtype == torch.float32
        out = model.backbone(x.bfloat16()).hidden
    assert out.dtype == torch.float32  # the residual stream
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def test_cpu_fast_paths_match_plain_modules():
    """The shift-and-add short conv (hand-written backward, in_proj's bias folded in) against nn.Conv1d in
    float64, values and gradients, with and without a history."""
    torch.manual_seed(0)
    op = HyenaOperator(small_config()).double()
    z = torch.randn(2, op.short_filter.in_channels, 37, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, op.short_filter.in_channels, 37, dtype=torch.float64)
    ins = (z, op.short_filter.weight, op.short_filter.bias)
    conv1d = op.short_filter(z)[..., :37]  # nn.Conv1d padded k-1 on both sides, first L kept: causal
    g_ref = torch.autograd.grad((conv1d * w).sum(), ins)
    g = torch.autograd.grad((op.short_conv(z) * w).sum(), ins)
    torch.testing.assert_close(op.short_conv(z), conv1d)
    hist = torch.randn(2, z.shape[1], 2, dtype=torch.float64)  # k-1 inputs before z (a continued sequence)
    want = F.conv1d(torch.cat([hist, z], -1), op.short_filter.weight, op.short_filter.bias, groups=z.shape[1])
    torch.testing.assert_close(op.short_conv(z, hist), want)
    b_in = torch.randn(z.shape[1], dtype=torch.float64, requires_grad=True)  # in_proj's bias, folded in
    for L in (37, 2, 1):  # shorter than the filter too
        zl = z[..., :L]
        ins2 = (zl, op.short_filter.weight, op.short_filter.bias, b_in)
        got = op._short_conv_biased(zl, b_in)
        want = op.short_filter(zl + b_in[:, None])[..., :L]
        torch.testing.assert_close(got, want)
        for a, e in zip(torch.autograd.grad((got * w[..., :L]).sum(), ins2),
                        torch.autograd.grad((want * w[..., :L]).sum(), ins2)):
            torch.testing.assert_close(a, e)
    for a, e in zip(g, g_ref):
        torch.testing.assert_close(a, e)


def test_compile_is_off_by_default_and_opt_in(monkeypatch):
    """DNALM_COMPILE=1 wraps each block's forward in torch.compile (lazily; not run here: minutes of CPU);
    without it the blocks are plain eager modules."""
    from dnalm.ops import compile as comp

    monkeypatch.delenv(comp.ENV, raising=False)
    assert not comp.compile_enabled()
    bb = HyenaBackbone(small_config())
    assert "forward" not in vars(bb.layers[0])  # the class's own eager forward
    monkeypatch.setenv(comp.ENV, "1")
    assert comp.compile_enabled()
    bb = HyenaBackbone(small_config())
    assert "forward" in vars(bb.layers[0]) and bb.layers[0].forward is not HyenaBlock.forward
    monkeypatch.setenv(comp.ENV, "0")
    assert not comp.compile_enabled()


def test_bf16_autocast_backward_matches_float32():
    """The hand-written backwards (short conv, gated FFT conv) under CPU bf16 autocast, as `precision: bf16`
    trains: gradients exist, are finite and close to float32's."""
    torch.manual_seed(0)
    model = DNALM(HyenaConfig(n_layer=2, d_model=32, l_max=130, filter_order=16))
    x = torch.cat([torch.tensor([BOS]), ecoli_ids(127)])[None]  # (1, 128)
    grads = []
    for autocast in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(x[:, :-1]).logits.float()[0], x[0, 1:])
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.isfinite(grads[1]).all() and grads[0].shape == grads[1].shape
    assert F.cosine_similarity(grads[0], grads[1], dim=0) > 0.95
