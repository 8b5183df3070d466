"""The FFT long convolution against a lag-by-lag direct convolution (float64), plus its size rule."""

from __future__ import annotations

import pytest
import torch

from dnalm.ops.fftconv import direct_long_conv, fft_long_conv, fft_size, filter_rfft


def _rand(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize(
    "B,C,L,L_h",
    [
        (1, 1, 1, 1),
        (2, 3, 5, 5),
        (2, 4, 97, 97),  # prime length
        (1, 8, 1026, 1026),  # HyenaDNA tiny l_max: a non-power-of-two FFT size
        (3, 5, 300, 7),  # short explicit FIR (StripedHyena 2 SE)
        (2, 4, 400, 128),  # medium explicit FIR (StripedHyena 2 MR)
        (2, 4, 50, 80),  # filter longer than the input: later taps never matter
    ],
)
def test_fft_matches_direct(B, C, L, L_h):
    u, h, bias = _rand(B, C, L, seed=1), _rand(C, L_h, seed=2), _rand(C, seed=3)
    y_ref = direct_long_conv(u.double(), h.double(), bias.double())
    y = fft_long_conv(u, h, bias)
    assert y.shape == (B, C, L) and y.dtype == torch.float32
    assert _max_rel(y, y_ref) < 2e-6
    # without the skip term too
    assert _max_rel(fft_long_conv(u, h), direct_long_conv(u.double(), h.double())) < 2e-6


def test_direct_reference_against_numpy_convolve():
    """The reference itself against numpy's full linear convolution, truncated to L (independent code)."""
    np = pytest.importorskip("numpy")
    u, h = _rand(1, 2, 40, seed=4, dtype=torch.float64), _rand(2, 15, seed=5, dtype=torch.float64)
    y = direct_long_conv(u, h)
    for c in range(2):
        expect = np.convolve(u[0, c].numpy(), h[c].numpy())[:40]
        assert np.allclose(y[0, c].numpy(), expect, atol=1e-12)


def test_causal_single_impulse():
    """An impulse at t0 yields the filter itself starting at t0 and nothing before."""
    L, t0 = 64, 17
    h = _rand(2, L, seed=6)
    u = torch.zeros(1, 2, L)
    u[..., t0] = 1.0
    y = fft_long_conv(u, h)
    assert y[..., :t0].abs().max() < 1e-6
    torch.testing.assert_close(y[0, :, t0:], h[:, : L - t0], atol=1e-5, rtol=1e-5)


def test_future_change_never_moves_past_outputs():
    u, h = _rand(2, 3, 500, seed=7), _rand(3, 500, seed=8)
    y = fft_long_conv(u, h)
    u2 = u.clone()
    u2[..., 321:] += 10 * _rand(2, 3, 179, seed=9)
    y2 = fft_long_conv(u2, h)
    assert (y2[..., :321] - y[..., :321]).abs().max() < 1e-4 * y.abs().max()
    assert (y2[..., 321:] - y[..., 321:]).abs().max() > 1.0


@pytest.mark.parametrize("B,L,L_h", [(2, 40, 40), (3, 50, 7), (1, 30, 45), (2, 1026, 1026)])
def test_gradients_match_direct(B, L, L_h):
    """The hand-written FFT backward (correlations) against autograd through the direct convolution."""
    u = _rand(B, 3, L, seed=10, dtype=torch.float64).requires_grad_()
    h = _rand(3, L_h, seed=11, dtype=torch.float64).requires_grad_()
    b = _rand(3, seed=12, dtype=torch.float64).requires_grad_()
    w = _rand(B, 3, L, seed=13, dtype=torch.float64)
    grads_fft = torch.autograd.grad((fft_long_conv(u, h, b) * w).sum(), (u, h, b))
    grads_ref = torch.autograd.grad((direct_long_conv(u, h, b) * w).sum(), (u, h, b))
    for g, r in zip(grads_fft, grads_ref):
        assert g.shape == r.shape
        assert _max_rel(g, r) < 1e-5
    # only some inputs needing grad, and no bias
    (gu,) = torch.autograd.grad((fft_long_conv(u, h.detach()) * w).sum(), (u,))
    (ru,) = torch.autograd.grad((direct_long_conv(u, h.detach()) * w).sum(), (u,))
    assert _max_rel(gu, ru) < 1e-5


def test_precomputed_filter_fft_and_inference_path():
    u, h, bias = _rand(2, 4, 333, seed=14), _rand(4, 333, seed=15), _rand(4, seed=16)
    y = fft_long_conv(u, h, bias)
    h_fft = filter_rfft(h, fft_size(333))
    with torch.no_grad():  # the in-place multiply path
        y2 = fft_long_conv(u, h, bias, h_fft=h_fft)
    torch.testing.assert_close(y, y2, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="h_fft"):
        fft_long_conv(u, h, h_fft=h_fft[:, :-1])


def test_float32_under_bf16_autocast():
    """bf16 inputs and bf16 autocast: the FFT runs in float32, the output is bf16 and only rounded once."""
    u = _rand(1, 4, 4096, seed=17).bfloat16()
    h = _rand(4, 4096, seed=18) / 64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fft_long_conv(u, h)
    assert y.dtype == torch.bfloat16
    y_ref = direct_long_conv(u.double(), h.double())
    # one bf16 rounding of the output: relative error about 2^-8 per element
    assert ((y.double() - y_ref).abs() / y_ref.abs().clamp_min(1e-3)).median() < 2**-8


def test_bad_shapes_are_reported():
    with pytest.raises(ValueError, match=r"\(B, C, L\)"):
        fft_long_conv(torch.zeros(2, 3, 10), torch.zeros(4, 10))


def _is_5_smooth(n: int) -> bool:
    for p in (2, 3, 5):
        while n % p == 0:
            n //= p
    return n == 1


@pytest.mark.parametrize("L", list(range(1, 70)) + [1000, 1026, 8194, 32770, 160002, 1_000_002])
def test_fft_size_is_the_smallest_even_5_smooth(L):
    n = fft_size(L)
    assert n >= 2 * L - 1 and n % 2 == 0 and _is_5_smooth(n)
    if L < 70:  # brute force: no smaller even 5-smooth size qualifies
        assert not any(m % 2 == 0 and _is_5_smooth(m) for m in range(max(2, 2 * L - 1), n))
    assert fft_size(L, 7) >= L + min(L, 7) - 1 and fft_size(L, 7) <= n


@pytest.mark.parametrize("B,C,L,L_h,post", [(2, 3, 40, 40, True), (1, 4, 33, 7, False), (3, 2, 1026, 1026, True)])
def test_gated_fft_conv_matches_direct_with_gradients(B, C, L, L_h, post):
    """post * (h * (x v) + bias x v), the fused Hyena gate round, against the direct convolution in float64."""
    from dnalm.ops.fftconv import gated_fft_long_conv

    x, v, p = (_rand(B, C, L, seed=s, dtype=torch.float64).requires_grad_() for s in (20, 21, 22))
    h = _rand(C, L_h, seed=23, dtype=torch.float64).requires_grad_()
    b = _rand(C, seed=24, dtype=torch.float64).requires_grad_()
    w = _rand(B, C, L, seed=25, dtype=torch.float64)
    ins = (x, v, h, b) + ((p,) if post else ())
    y_ref = direct_long_conv(x * v, h, b) * (p if post else 1)
    g_ref = torch.autograd.grad((y_ref * w).sum(), ins)
    y = gated_fft_long_conv(x.float(), v.float(), h.float(), b.float(), post=p.float() if post else None)
    g = torch.autograd.grad((y.double() * w).sum(), ins)
    assert _max_rel(y, y_ref) < 2e-6
    for a, e in zip(g, g_ref):
        assert _max_rel(a, e) < 2e-6
    with torch.no_grad():  # the inference path with a precomputed filter transform
        y2 = gated_fft_long_conv(x.float(), v.float(), None if L_h >= L else h.float(), b.float(),
                                 h_fft=filter_rfft(h.float()[:, :L], fft_size(L)) if L_h >= L else None,
                                 post=p.float() if post else None)
    assert _max_rel(y2, y_ref) < 2e-6


def test_packed_gated_conv_equals_the_split_one():
    """z = [post | x | v] packed along channels: same values and gradients as the three-tensor form."""
    from dnalm.ops.fftconv import gated_fft_long_conv, packed_gated_fft_long_conv

    z = _rand(2, 12, 70, seed=30, dtype=torch.float64).requires_grad_()
    h = _rand(4, 70, seed=31, dtype=torch.float64).requires_grad_()
    b = _rand(4, seed=32, dtype=torch.float64).requires_grad_()
    w = _rand(2, 4, 70, seed=33, dtype=torch.float64)
    y1 = packed_gated_fft_long_conv(z, h, b)
    post, x, v = z.split(4, dim=1)
    y2 = gated_fft_long_conv(x, v, h, b, post=post)
    ref = direct_long_conv(x * v, h, b) * post
    assert _max_rel(y1, ref) < 2e-6 and _max_rel(y2, ref) < 2e-6  # computed in float32
    g1 = torch.autograd.grad((y1 * w).sum(), (z, h, b))
    g2 = torch.autograd.grad((ref * w).sum(), (z, h, b))
    for a, e in zip(g1, g2):
        assert _max_rel(a, e) < 2e-6
