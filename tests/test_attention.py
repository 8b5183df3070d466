"""Causal attention with RoPE: against a naive masked-softmax reference, RoPE's relative-position
property and interpolation, and prefill + step (KV cache) against the full forward."""

from __future__ import annotations

import math

import pytest
import torch

from dnalm.models.attention import CausalSelfAttention, KVCache, RotaryEmbedding, apply_rope, rope_angles


def _attn(d=32, h=4, max_len=64, seed=0, **kw) -> CausalSelfAttention:
    torch.manual_seed(seed)
    m = CausalSelfAttention(d, h, max_len, **kw)
    for p in m.parameters():  # non-trivial weights and biases
        torch.nn.init.normal_(p, std=0.3)
    return m.eval()


def _x(B, L, D, seed=1, dtype=torch.float32):
    return torch.randn(B, L, D, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _naive_rope(x: torch.Tensor, positions: torch.Tensor, base: float, interp: float) -> torch.Tensor:
    """RoPE as a complex rotation of the pairs (x_i, x_{i + hd/2}) by e^{i * pos/interp * base^(-2i/hd)}."""
    hd = x.shape[-1]
    z = torch.complex(x[..., : hd // 2].double(), x[..., hd // 2 :].double())
    theta = torch.tensor(
        [[p / interp * base ** (-2 * i / hd) for i in range(hd // 2)] for p in positions.tolist()], dtype=torch.float64
    )
    z = z * torch.polar(torch.ones_like(theta), theta)
    return torch.cat([z.real, z.imag], dim=-1)


def _naive_attention(m: CausalSelfAttention, x: torch.Tensor, base=10000.0, interp=1.0) -> torch.Tensor:
    """Loop-free but independent: explicit weights, explicit mask, explicit softmax, float64."""
    B, L, D = x.shape
    H, hd = m.n_head, m.head_dim
    W, b = m.Wqkv.weight.double(), m.Wqkv.bias.double() if m.Wqkv.bias is not None else 0
    qkv = x.double() @ W.T + b  # (B, L, 3D)
    q, k, v = (qkv[..., i * D : (i + 1) * D].reshape(B, L, H, hd).transpose(1, 2) for i in range(3))
    pos = torch.arange(L)
    q, k = _naive_rope(q, pos, base, interp), _naive_rope(k, pos, base, interp)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)  # (B, H, L, L)
    future = torch.triu(torch.ones(L, L, dtype=torch.bool), diagonal=1)
    scores = scores.masked_fill(future, float("-inf"))
    y = torch.softmax(scores, dim=-1) @ v  # (B, H, L, hd)
    y = y.transpose(1, 2).reshape(B, L, D)
    Wo, bo = m.out_proj.weight.double(), m.out_proj.bias.double() if m.out_proj.bias is not None else 0
    return y @ Wo.T + bo


@pytest.mark.parametrize("bias,base,interp", [(False, 10000.0, 1.0), (True, 10000.0, 1.0), (False, 1e6, 4.0)])
def test_matches_naive_masked_softmax(bias, base, interp):
    m = _attn(bias=bias, rope_base=base, rope_interp=interp)
    x = _x(2, 23, 32)
    with torch.no_grad():
        y = m(x)
    torch.testing.assert_close(y.double(), _naive_attention(m, x, base, interp), atol=2e-5, rtol=1e-4)


def test_causal_future_tokens_do_not_matter():
    m = _attn()
    x = _x(1, 30, 32)
    x2 = x.clone()
    x2[:, 12:] = _x(1, 18, 32, seed=5)
    with torch.no_grad():
        y, y2 = m(x), m(x2)
    torch.testing.assert_close(y[:, :12], y2[:, :12], atol=1e-6, rtol=1e-6)
    assert (y[:, 12:] - y2[:, 12:]).abs().max() > 1e-2


def test_rope_dot_product_depends_only_on_relative_position():
    rope = RotaryEmbedding(16, 8)
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(16, generator=g), torch.randn(16, generator=g)

    def dot(m, n):
        cq, sq = rope(m, 1)
        ck, sk = rope(n, 1)
        return (apply_rope(q[None], cq, sq) * apply_rope(k[None], ck, sk)).sum().item()

    for m, n in [(5, 2), (40, 3), (7, 7)]:
        ref = dot(m, n)
        for shift in (1, 13, 1000, 123_456):  # far beyond the initial table: it grows on demand
            assert dot(m + shift, n + shift) == pytest.approx(ref, rel=1e-4, abs=1e-4)
    assert abs(dot(5, 2) - dot(6, 2)) > 1e-3  # and it does depend on the offset
    # the norm is preserved (a rotation)
    c, s = rope(77, 1)
    assert apply_rope(q[None], c, s).norm().item() == pytest.approx(q.norm().item(), rel=1e-5)


def test_position_interpolation_and_base_scaling():
    """rope_interp=r at position p rotates like interp 1 at p / r; rope_base changes the frequencies."""
    hd = 8
    a = rope_angles(torch.arange(0, 64, 4), hd, 10000.0, interp=4.0)
    b = rope_angles(torch.arange(0, 16), hd, 10000.0, interp=1.0)
    torch.testing.assert_close(a, b)
    c = rope_angles(torch.tensor([10]), hd, base=1e6)
    assert c[0, 1].item() == pytest.approx(10 * 1e6 ** (-2 / hd), rel=1e-12)
    # float64 angles: a far position is still exact
    far = rope_angles(torch.tensor([1_000_000]), hd, 10000.0)
    assert far[0, 0].item() == 1_000_000.0 and far[0, 1].item() == pytest.approx(1e6 * 1e4 ** (-2 / hd), rel=1e-14)


@pytest.mark.parametrize("capacity", [None, 9])
def test_prefill_then_step_equals_forward(capacity):
    m = _attn(bias=True, rope_interp=2.0)
    x = _x(2, 40, 32, seed=3)
    with torch.no_grad():
        y_full = m(x)
        y_pre, cache = m.prefill(x[:, :7], capacity=capacity)
        outs = [y_pre]
        for t in range(7, 40):  # with capacity 9 the cache grows twice
            y_t, cache = m.step(x[:, t], cache)
            outs.append(y_t[:, None])
    assert isinstance(cache, KVCache) and cache.length == 40
    torch.testing.assert_close(torch.cat(outs, 1), y_full, atol=1e-5, rtol=1e-5)


def test_step_from_empty_prompt_of_one_token():
    m = _attn()
    x = _x(1, 5, 32, seed=4)
    with torch.no_grad():
        y_full = m(x)
        y0, cache = m.prefill(x[:, :1])
        ys = [y0[:, 0]] + [m.step(x[:, t], cache)[0] for t in range(1, 5)]
    torch.testing.assert_close(torch.stack(ys, 1), y_full, atol=1e-5, rtol=1e-5)


def test_dropout_only_in_training():
    m = _attn(dropout=0.5)
    x = _x(1, 16, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m(x))
        m.train()
        assert not torch.allclose(m(x), m(x))


def test_gradients_flow_and_bad_heads_rejected():
    m = _attn().train()
    x = _x(2, 9, 32).requires_grad_()
    m(x).square().sum().backward()
    assert x.grad is not None and m.Wqkv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="divisible"):
        CausalSelfAttention(30, 4, 16)
    with pytest.raises(ValueError, match="even head"):
        CausalSelfAttention(12, 4, 16)


def test_rope_positions_past_the_cache_are_computed_not_kept():
    """Angles past RotaryEmbedding.CACHE_ROWS are computed per call and equal a full table's rows; the kept
    table never grows past the cap (each attention layer has one, so a long one-pass input would otherwise
    keep up to 2 L rows in every layer)."""

    for precision in ("float64", "float32", "bfloat16"):
        rope = RotaryEmbedding(16, 1 << 20, precision=precision)
        cap = rope.CACHE_ROWS
        full = rope_angles(torch.arange(cap + 3000), 16, precision=precision)
        for start, length in ((0, 100), (cap - 50, 40), (cap - 10, 700), (cap + 1000, 2000)):
            cos, sin = rope(start, length)
            assert torch.equal(cos, full[start : start + length].cos().float())
            assert torch.equal(sin, full[start : start + length].sin().float())
            assert rope.cos.shape[0] <= cap
