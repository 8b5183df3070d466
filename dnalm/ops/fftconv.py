"""Causal long convolution by FFT, the core operation of every Hyena-type layer, and its naive twin.

Convention (owned here): a filter ``h`` of shape (C, L_h) holds one filter per channel with ``h[:, 0]``
the lag-0 tap, and the convolution is causal and linear (never circular):

    y[b, c, t] = sum_{s=0..min(t, L_h-1)} h[c, s] * u[b, c, t-s]  (+ bias[c] * u[b, c, t])

Note that ``torch.nn.functional.conv1d`` is a cross-correlation: its *last* weight tap multiplies the
current input. Turning a lag-0-first filter into a conv1d weight therefore needs a flip (docs/architectures.md §7.1).

``fft_long_conv`` zero-pads to a fast FFT size n >= L + L_h - 1 (so no output wraps around), takes one
``rfft`` of the filter that is broadcast over the batch, multiplies, and inverts. It always computes in
float32, also under bf16/fp16 autocast (half-precision FFTs lose accuracy at long L, docs/architectures.md §7.3), and
returns the input's dtype. ``direct_long_conv`` is the O(L * L_h) reference used by the tests.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["fft_long_conv", "gated_fft_long_conv", "packed_gated_fft_long_conv", "direct_long_conv", "fft_size", "filter_rfft"]


@functools.lru_cache(maxsize=256)
def fft_size(length: int, filter_length: int | None = None) -> int:
    """Smallest even 2^a 3^b 5^c >= ``length + filter_length - 1`` (a linear, non-circular convolution).

    Why 5-smooth: pocketfft (PyTorch's CPU FFT) is fastest on sizes with small prime factors; a size
    with a large prime factor (e.g. 2 * 8194 = 4 * 17 * 241) is several times slower than the next
    5-smooth size. Rounding to a power of two can nearly double the work (2 * 1026 -> 4096).
    """
    filter_length = length if filter_length is None else min(filter_length, length)
    need = max(2, length + filter_length - 1)
    best = 1 << (need - 1).bit_length()  # a power of two always qualifies
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            n = p35
            while n < need:  # multiply by 2 until large enough
                n *= 2
            if n % 2 == 1:  # odd sizes make rfft/irfft pairs awkward; keep it even
                n *= 2
            best = min(best, n)
            p35 *= 3
        p5 *= 5
    return best


def filter_rfft(h: torch.Tensor, n: int) -> torch.Tensor:
    """The float32 ``rfft`` of filters ``h`` (C, L_h) zero-padded to ``n``: (C, n//2 + 1) complex64.

    Precompute it once when the same filter convolves many inputs (eval mode, long batches) and pass it
    to ``fft_long_conv(..., h_fft=...)``.
    """
    with torch.autocast(device_type=h.device.type, enabled=False):
        return torch.fft.rfft(h.float(), n=n)  # (C, n//2+1)


class _FFTConv(torch.autograd.Function):
    """y = irfft(rfft(u) * rfft(h))[:L] + bias * u, with a backward that is itself two FFT convolutions.

    Why a custom backward: autograd through ``rfft`` pads the gradient to the full complex spectrum and
    runs complex-to-complex transforms (about 4x the work of the forward on CPU, plus large zero fills).
    Here the gradients are correlations computed with real transforms of the same size n:
    grad_u = irfft(G * conj(H))[:L] + bias * g and grad_h = irfft(sum_b G * conj(U))[:L_h], with
    G = rfft(g, n). They are exact because n >= L + L_h - 1 keeps every needed lag free of wrap-around.
    """

    @staticmethod
    def forward(ctx, u, h, h_fft, bias, n: int):  # u (B, C, L), h (C, L_h) | None, bias (C,) | None, float32
        L = u.shape[-1]
        H = torch.fft.rfft(h, n=n) if h_fft is None else h_fft  # (C, n//2+1): once, broadcast over B
        U = torch.fft.rfft(u, n=n)  # (B, C, n//2+1); rfft zero-pads internally
        needs_grad = any(ctx.needs_input_grad)
        prod = U * H if needs_grad else U.mul_(H)  # inference reuses U's buffer
        y = torch.fft.irfft(prod, n=n)[..., :L]  # (B, C, L): the first L samples are the linear convolution
        if bias is not None:
            y = torch.addcmul(y, u, bias[:, None])  # + bias * u, fused
        if needs_grad:
            ctx.save_for_backward(u, U, H, bias)
            ctx.n, ctx.L_h = n, None if h is None else h.shape[-1]
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        u, U, H, bias = ctx.saved_tensors
        n, L = ctx.n, u.shape[-1]
        G = torch.fft.rfft(g.float(), n=n)  # (B, C, n//2+1)
        grad_u = grad_h = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_u = torch.fft.irfft(G * H.conj(), n=n)[..., :L]  # (B, C, L): correlation with h
            if bias is not None:
                grad_u = torch.addcmul(grad_u, g, bias[:, None])
        if ctx.needs_input_grad[1]:
            grad_h = torch.fft.irfft((G * U.conj()).sum(0), n=n)[..., : ctx.L_h]  # (C, L_h): sum over batch first
        if bias is not None and ctx.needs_input_grad[3]:
            grad_bias = (g * u).sum((0, 2))  # (C,)
        return grad_u, grad_h, None, grad_bias, None


def fft_long_conv(
    u: torch.Tensor,
    h: torch.Tensor | None,
    bias: torch.Tensor | None = None,
    h_fft: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal linear convolution of ``u`` (B, C, L) with per-channel filters ``h`` (C, L_h), via FFT.

    ``bias`` (C,) adds the skip term ``bias * u``. Filters longer than L are cut to L (later taps never
    reach an output); shorter filters (explicit FIRs) are fine. ``h_fft`` optionally supplies
    ``filter_rfft(h[:, :L], fft_size(L, L_h))`` computed earlier; it is checked only by shape and treated
    as a constant (no gradient flows into it). With ``h_fft`` given, ``h`` may be None, meaning a
    full-length filter (L_h >= L). Computed in float32; the result has ``u``'s dtype. Shape (B, C, L).
    Differentiable in ``u``, ``h`` and ``bias`` (first order).
    """
    if h is None and h_fft is None:
        raise ValueError("fft_long_conv needs the filter h or its transform h_fft")
    if u.dim() != 3 or (h is not None and (h.dim() != 2 or h.shape[0] != u.shape[1])):
        shape_h = None if h is None else tuple(h.shape)
        raise ValueError(f"fft_long_conv expects u (B, C, L) and h (C, L_h); got {tuple(u.shape)} and {shape_h}")
    L = u.shape[-1]
    L_h = L if h is None else min(h.shape[-1], L)
    n = fft_size(L, L_h)
    if h_fft is not None:
        if h_fft.shape != (u.shape[1], n // 2 + 1):
            raise ValueError(f"h_fft has shape {tuple(h_fft.shape)}, expected {(u.shape[1], n // 2 + 1)}")
        h = None
    with torch.autocast(device_type=u.device.type, enabled=False):
        u32 = u.float()  # no copy when u is already float32
        h32 = None if h is None else h[:, :L_h].float()
        b32 = None if bias is None else bias.float()
        y = _FFTConv.apply(u32, h32, None if h_fft is None else h_fft.detach(), b32, n)  # (B, C, L)
    return y.to(u.dtype)


def _padded(a: torch.Tensor, b: torch.Tensor | None, n: int) -> torch.Tensor:
    """A (..., n) float32 buffer holding ``a * b`` (or ``a``) in its first L samples and zeros after: the
    product is written straight into the FFT's zero-padded input (no separate pad copy)."""
    L = a.shape[-1]
    buf = a.new_empty(*a.shape[:-1], n)
    buf[..., L:].zero_()
    if b is None:
        buf[..., :L].copy_(a)
    else:
        torch.mul(a, b, out=buf[..., :L])
    return buf


def _gated_forward(x, v, h, h_fft, bias, post, n: int, needs_grad: bool):
    """post * (irfft(rfft(x v) H)[:L] + bias x v) and what the backward keeps (None without autograd)."""
    L = x.shape[-1]
    H = torch.fft.rfft(h, n=n) if h_fft is None else h_fft  # (C, n//2+1)
    buf = _padded(x, v, n)  # (B, C, n): w = x * v, then zeros
    U = torch.fft.rfft(buf)  # (B, C, n//2+1)
    y = torch.fft.irfft(U * H if needs_grad else U.mul_(H), n=n)[..., :L]  # (B, C, L) view
    y = torch.addcmul(y, buf[..., :L], bias[:, None]) if bias is not None else y.contiguous()
    del buf
    out = y if post is None else post * y
    saved = (x, v, U, H, bias, post, y if post is not None else None) if needs_grad else None
    return out, saved


class _GatedFFTConv(torch.autograd.Function):
    """y = post * (h * w + bias * w) with w = x * v: a Hyena gate round and its output gate in one function.

    Inputs may be strided views (the split of one channel-major projection); nothing is made contiguous.

    Same maths as :class:`_FFTConv` on w = x * v, but the gate product is written into the zero-padded FFT
    buffer, the output gate ``post`` is applied without keeping another (B, C, L) intermediate for autograd,
    and the backward recomputes w instead of saving it. All float32.
    """

    @staticmethod
    def forward(ctx, x, v, h, h_fft, bias, post, n: int):
        out, saved = _gated_forward(x, v, h, h_fft, bias, post, n, any(ctx.needs_input_grad))
        if saved is not None:
            ctx.save_for_backward(*saved)
            ctx.n, ctx.L_h = n, None if h is None else h.shape[-1]
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_out):
        x, v, U, H, bias, post, y = ctx.saved_tensors
        n, L = ctx.n, x.shape[-1]
        need = ctx.needs_input_grad
        grad_x = grad_v = grad_h = grad_bias = grad_post = None
        if post is not None and need[5]:
            grad_post = g_out * y
        gbuf = _padded(g_out, post, n)  # (B, C, n): g = g_out * post, then zeros
        g = gbuf[..., :L]
        G = torch.fft.rfft(gbuf)  # (B, C, n//2+1)
        if need[0] or need[1]:
            grad_w = torch.fft.irfft(G * H.conj(), n=n)[..., :L]  # correlation with h
            grad_w = torch.addcmul(grad_w, g, bias[:, None]) if bias is not None else grad_w.contiguous()
            grad_x = grad_w * v if need[0] else None
            grad_v = grad_w.mul_(x) if need[1] else None
        if need[2]:
            GU = G[0] * U[0].conj() if G.shape[0] == 1 else (G * U.conj()).sum(0)  # (C, n//2+1)
            grad_h = torch.fft.irfft(GU, n=n)[..., : ctx.L_h]  # (C, L_h)
        if bias is not None and need[4]:
            grad_bias = torch.einsum("bcl,bcl,bcl->c", g, x, v)  # sum over b, l of g * w
        return grad_x, grad_v, grad_h, None, grad_bias, grad_post, None


class _PackedGatedFFTConv(torch.autograd.Function):
    """:class:`_GatedFFTConv` on one packed tensor z = [post | x | v] (B, 3C, L): returns post * (h * (x v)
    + bias x v) and, in the backward, the gradient of z as one tensor (no split/zero-fill/copy by autograd).
    The order-2 Hyena operator's whole gate-conv-gate stage."""

    @staticmethod
    def forward(ctx, z, h, h_fft, bias, n: int):
        C = z.shape[1] // 3
        post, x, v = z[:, :C], z[:, C : 2 * C], z[:, 2 * C :]
        out, saved = _gated_forward(x, v, h, h_fft, bias, post, n, any(ctx.needs_input_grad))
        if saved is not None:
            ctx.save_for_backward(*saved)
            ctx.n, ctx.L_h = n, None if h is None else h.shape[-1]
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_out):
        x, v, U, H, bias, post, y = ctx.saved_tensors
        n, L, C = ctx.n, x.shape[-1], x.shape[1]
        grad_z = g_out.new_empty(x.shape[0], 3 * C, L)
        need_h, need_b = ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[3]
        torch.mul(g_out, y, out=grad_z[:, :C])  # d post
        gbuf = _padded(g_out, post, n)
        g = gbuf[..., :L]
        G = torch.fft.rfft(gbuf)
        grad_w = torch.fft.irfft(G * H.conj(), n=n)[..., :L]
        grad_w = torch.addcmul(grad_w, g, bias[:, None]) if bias is not None else grad_w
        torch.mul(grad_w, v, out=grad_z[:, C : 2 * C])  # d x
        torch.mul(grad_w, x, out=grad_z[:, 2 * C :])  # d v
        grad_h = grad_bias = None
        if need_h:
            GU = G[0] * U[0].conj() if G.shape[0] == 1 else (G * U.conj()).sum(0)
            grad_h = torch.fft.irfft(GU, n=n)[..., : ctx.L_h]
        if need_b:
            grad_bias = torch.einsum("bcl,bcl,bcl->c", g, x, v)
        return grad_z, grad_h, None, grad_bias, None


def packed_gated_fft_long_conv(
    z: torch.Tensor, h: torch.Tensor | None, bias: torch.Tensor | None = None, h_fft: torch.Tensor | None = None
) -> torch.Tensor:
    """``gated_fft_long_conv(x, v, h, bias, h_fft, post)`` for z = [post | x | v] packed along channels,
    (B, 3C, L) float32 -> (B, C, L): the order-2 Hyena stage with one gradient tensor for z."""
    L, C = z.shape[-1], z.shape[1] // 3
    if z.dim() != 3 or z.shape[1] != 3 * C:
        raise ValueError(f"packed_gated_fft_long_conv expects z (B, 3C, L); got {tuple(z.shape)}")
    L_h = L if h is None else min(h.shape[-1], L)
    n = fft_size(L, L_h)
    if h_fft is not None:
        if h_fft.shape != (C, n // 2 + 1):
            raise ValueError(f"h_fft has shape {tuple(h_fft.shape)}, expected {(C, n // 2 + 1)}")
        h = None
    elif h is None or h.dim() != 2 or h.shape[0] != C:
        raise ValueError(f"packed_gated_fft_long_conv needs h (C, L_h) with C = {C}")
    with torch.autocast(device_type=z.device.type, enabled=False):
        h32 = None if h is None else h[:, :L_h].float()
        b32 = None if bias is None else bias.float()
        y = _PackedGatedFFTConv.apply(z.float(), h32, None if h_fft is None else h_fft.detach(), b32, n)
    return y.to(z.dtype)


def gated_fft_long_conv(
    x: torch.Tensor,
    v: torch.Tensor,
    h: torch.Tensor | None,
    bias: torch.Tensor | None = None,
    h_fft: torch.Tensor | None = None,
    post: torch.Tensor | None = None,
) -> torch.Tensor:
    """``post * fft_long_conv(x * v, h, bias)``, fused: the Hyena gate, long convolution and output gate.

    x, v, post (B, C, L); h (C, L_h) or ``h_fft`` as in :func:`fft_long_conv`; ``post`` None means no output
    gate. Computed in float32, returns x's dtype. Differentiable in x, v, h, bias and post (first order).
    """
    if h is None and h_fft is None:
        raise ValueError("gated_fft_long_conv needs the filter h or its transform h_fft")
    if x.dim() != 3 or v.shape != x.shape or (post is not None and post.shape != x.shape):
        raise ValueError(f"gated_fft_long_conv expects x, v, post of one shape (B, C, L); got {tuple(x.shape)}, "
                         f"{tuple(v.shape)}, {None if post is None else tuple(post.shape)}")
    L = x.shape[-1]
    L_h = L if h is None else min(h.shape[-1], L)
    n = fft_size(L, L_h)
    if h_fft is not None:
        if h_fft.shape != (x.shape[1], n // 2 + 1):
            raise ValueError(f"h_fft has shape {tuple(h_fft.shape)}, expected {(x.shape[1], n // 2 + 1)}")
        h = None
    elif h.dim() != 2 or h.shape[0] != x.shape[1]:
        raise ValueError(f"gated_fft_long_conv expects h (C, L_h) with C = {x.shape[1]}; got {tuple(h.shape)}")
    with torch.autocast(device_type=x.device.type, enabled=False):
        f32 = [None if t is None else t.float() for t in (x, v, post)]  # strided views are fine
        h32 = None if h is None else h[:, :L_h].float()
        b32 = None if bias is None else bias.float()
        y = _GatedFFTConv.apply(f32[0], f32[1], h32, None if h_fft is None else h_fft.detach(), b32, f32[2], n)
    return y.to(x.dtype)


def direct_long_conv(u: torch.Tensor, h: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reference for ``fft_long_conv``: the same causal convolution summed lag by lag, in float64.

    O(L * L_h) work; meant for tests and short filters. Same signature and output dtype.
    """
    if u.dim() != 3 or h.dim() != 2 or h.shape[0] != u.shape[1]:
        raise ValueError(
            f"direct_long_conv expects u (B, C, L) and h (C, L_h); got {tuple(u.shape)} and {tuple(h.shape)}"
        )
    L = u.shape[-1]
    u64, h64 = u.double(), h.double()
    y = torch.zeros_like(u64)  # (B, C, L)
    for s in range(min(h.shape[-1], L)):
        y[..., s:] += h64[:, s, None] * u64[..., : L - s]  # lag s: y[t] += h[s] * u[t - s]
    if bias is not None:
        y += bias.double()[:, None] * u64
    return y.to(u.dtype)
