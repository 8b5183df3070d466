"""Mamba-2 in pure PyTorch: the chunked SSD scan, the mixer layer, a pre-norm residual block, and a
recurrent step for generation.

The state-space recurrence of one head (state h of shape (P, N), P = head dim, N = d_state) is

    h_t = exp(a_t) * h_{t-1} + x_t ⊗ B_t          a_t = dt_t * A  (A < 0, so exp(a_t) in (0, 1))
    y_t = h_t · C_t                               (sum over N)

``ssd_sequential`` runs it step by step (the independent reference). ``ssd_chunked`` computes the same
thing the "state-space duality" way: the sequence is cut into chunks of T positions; inside a chunk the
recurrence unrolls into a masked (T, T) matrix, so the work is matmuls; across chunks only the state at
each chunk boundary is carried, a short recurrence over L/T chunk states. That is fast on a CPU and is
the default everywhere. On CUDA, when the optional ``mamba-ssm`` package is installed, the same scan runs
through its Triton kernel (``mamba_chunk_scan_combined``); it is imported only then, never on a CPU.

Layer layout (Mamba-2 with one group of B/C):
    in_proj: D -> [z (E), x (E), B (N), C (N), dt (H)]      E = expand * D, H = E / headdim
    causal depthwise conv (width d_conv) + SiLU over [x, B, C]
    y = SSD(x * dt, dt * A, B, C) + D_skip * x
    out_proj(RMSNorm(y * SiLU(z)))
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# ------------------------------------------------------------------------------------------ the scan


def ssd_sequential(
    x: torch.Tensor, log_a: torch.Tensor, B: torch.Tensor, C: torch.Tensor, initial_state: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: the recurrence one position at a time (slow; for tests and as the definition).

    x (b, l, h, p), log_a (b, l, h), B and C (b, l, g, n) with h a multiple of g.
    Returns y (b, l, h, p) and the final state (b, h, p, n), both float32.
    """
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    x, log_a, B, C = x.float(), log_a.float(), B.float(), C.float()
    Bh = B.repeat_interleave(h // g, dim=2)  # (b, l, h, n)
    Ch = C.repeat_interleave(h // g, dim=2)  # (b, l, h, n)
    state = x.new_zeros(b, h, p, n) if initial_state is None else initial_state.float()
    ys = []
    for t in range(l):
        state = state * log_a[:, t].exp()[:, :, None, None] + x[:, t, :, :, None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))  # (b, h, p)
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(b, 0, h, p)
    return y, state


# Decays exp(A_i - A_j) below exp(_LOG_TINY) ~ 1.6e-28 are flushed to exactly 0: exp near float32's
# underflow (results in the denormal range) is 10-30x slower than elsewhere, and such terms are ~1e-20 of
# the diagonal's and far below float32 rounding of the outputs.
_LOG_TINY = -64.0
_TINY = 1.5 * math.exp(_LOG_TINY)
_GROUP = 2048  # positions per group: every temporary is group-sized (large fresh buffers cost page faults)
_TILE = 1 << 19  # float32 elements of one (chunks, heads, T, T) decay tile (2 MiB: cache-sized)


def _bounds(T: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Clamp bounds of the (T, T) log-decays: [_LOG_TINY, 0] on and below the diagonal, _LOG_TINY above
    (so that exp of the upper triangle is flushed to 0 with the rest, with no mask pass of its own)."""
    hi = torch.zeros(T, T, device=device)
    hi.masked_fill_(torch.ones(T, T, dtype=torch.bool, device=device).triu_(1), _LOG_TINY)
    return torch.tensor(_LOG_TINY, device=device), hi


def _decay(Ah: torch.Tensor, bounds: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Ah (k, h, T) prefix sums of log decays -> (k, h, T, T): exp(Ah[i] - Ah[j]) for i >= j, else 0."""
    E = Ah[..., :, None] - Ah[..., None, :]
    torch.clamp(E, *bounds, out=E).exp_()
    return F.threshold_(E, _TINY, 0.0)


def _cat(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


def _group(t: torch.Tensor, s: int, e: int, T: int, l: int) -> torch.Tensor:
    """Positions [s, e) of t (b, l, ...) as (b * chunks, T, ...), zero-padded past l."""
    part = t[:, s : min(e, l)]
    if e > l:
        part = torch.cat([part, part.new_zeros(part.shape[0], e - l, *part.shape[2:])], 1)
    return part.reshape(-1, T, *t.shape[2:])


class _SSDChunked(torch.autograd.Function):
    """The chunked scan with a hand-written backward (autograd's graph of the einsum form held the
    (chunks, heads, T, T) decays and weights for the backward and copied at every einsum). Positions are
    processed in groups of _GROUP (whole chunks): per group, the chunks' state contributions (one GEMM),
    the recurrence over their entering states (kept for the backward: (b, chunks, h, p, n)), their
    read-out (one GEMM), and the within-chunk (T, T) products in cache-sized tiles. The backward walks
    the groups in reverse, recomputing the decays and C.B tiles instead of storing them. Any float dtype
    (float64 for gradcheck); ``ssd_chunked`` calls it in float32."""

    @staticmethod
    def forward(ctx, x, log_a, B, C, s0, T):
        b, l, h, p = x.shape
        g, n = B.shape[2], B.shape[3]
        r = h // g
        nc = -(-l // T)
        K = max(1, _GROUP // T)
        bounds = _bounds(T, x.device)
        y = x.new_empty(b, l, h, p)
        Hin = x.new_empty(b, nc, h, p, n)  # the state entering each chunk
        final = x.new_empty(b, h, p, n)
        if s0 is None:
            Hin[:, 0].zero_()
        else:
            Hin[:, 0] = s0
        for c0 in range(0, nc, K):
            c1 = min(nc, c0 + K)
            k, s, e = c1 - c0, c0 * T, c1 * T
            xg, Bg, Cg = _group(x, s, e, T, l), _group(B, s, e, T, l), _group(C, s, e, T, l)
            A = _group(log_a, s, e, T, l).cumsum(1)  # (bk, T, h)
            # what each chunk adds to the state by its end, then the states entering each chunk
            xs = (xg * torch.exp(A[:, -1:] - A)[..., None]).view(b * k, T, g, r * p)
            S = _cat([torch.bmm(xs[:, :, i].transpose(1, 2), Bg[:, :, i]) for i in range(g)], 1).view(b, k, h, p, n)
            D = torch.exp(A[:, -1]).view(b, k, h, 1, 1)
            for c in range(k):
                torch.addcmul(S[:, c], Hin[:, c0 + c], D[:, c], out=Hin[:, c0 + c + 1] if c0 + c + 1 < nc else final)
            # the entering state read out at each position: exp(A_i) C_i . H_in
            Hg = Hin[:, c0:c1].reshape(b * k, g, r * p, n)
            yg = _cat([torch.bmm(Cg[:, :, i], Hg[:, i].transpose(1, 2)) for i in range(g)], 2).view(b * k, T, h, p)
            yg.mul_(torch.exp(A)[..., None])
            # inside the chunks: a (T, T) matmul per head
            Ah = A.transpose(1, 2).contiguous()  # (bk, h, T)
            step = max(1, _TILE // (h * T * T))
            for t0 in range(0, b * k, step):
                t = slice(t0, t0 + step)
                W = _decay(Ah[t], bounds)  # (kt, h, T, T)
                for i in range(g):
                    CB = torch.bmm(Cg[t, :, i], Bg[t, :, i].transpose(1, 2))
                    W[:, i * r : (i + 1) * r].mul_(CB[:, None])
                for j in range(h):
                    yg[t, :, j] += torch.bmm(W[:, j], xg[t, :, j])
            y[:, s:e] = yg.view(b, k * T, h, p)[:, : min(e, l) - s]
        ctx.save_for_backward(x, log_a, B, C, Hin)
        ctx.T, ctx.has_s0 = T, s0 is not None
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        x, log_a, B, C, Hin = ctx.saved_tensors
        T = ctx.T
        b, l, h, p = x.shape
        g, n = B.shape[2], B.shape[3]
        r = h // g
        nc = Hin.shape[1]
        K = max(1, _GROUP // T)
        bounds = _bounds(T, x.device)
        dx, da = torch.empty_like(x), torch.empty_like(log_a)
        dB, dC = torch.empty_like(B), torch.empty_like(C)
        dstate = torch.zeros_like(Hin[:, 0]) if dfinal is None else dfinal  # d/d(state after this group)
        for c0 in reversed(range(0, nc, K)):
            c1 = min(nc, c0 + K)
            k, s, e = c1 - c0, c0 * T, c1 * T
            xg, Bg, Cg = _group(x, s, e, T, l), _group(B, s, e, T, l), _group(C, s, e, T, l)
            dyg = _group(dy, s, e, T, l)
            A = _group(log_a, s, e, T, l).cumsum(1)  # (bk, T, h)
            # the read-out of the entering states
            dQ = dyg * torch.exp(A)[..., None]  # (bk, T, h, p)
            dQg = dQ.view(b * k, T, g, r * p)
            Hs = Hin[:, c0:c1]
            Hg = Hs.reshape(b * k, g, r * p, n)
            Q = _cat([torch.bmm(Cg[:, :, i], Hg[:, i].transpose(1, 2)) for i in range(g)], 2).view(b * k, T, h, p)
            dA = (dQ * Q).sum(-1)  # (bk, T, h)
            dCg = torch.stack([torch.bmm(dQg[:, :, i], Hg[:, i]) for i in range(g)], 2)  # (bk, T, g, n)
            dH = _cat([torch.bmm(dQg[:, :, i].transpose(1, 2), Cg[:, :, i]) for i in range(g)], 1).view(b, k, h, p, n)
            # the recurrence, backwards: dS[c] = gradient of the state after chunk c
            D = torch.exp(A[:, -1]).view(b, k, h, 1, 1)
            dS = torch.empty_like(dH)
            dS[:, k - 1] = dstate
            for c in range(k - 1, 0, -1):
                torch.addcmul(dH[:, c], dS[:, c], D[:, c], out=dS[:, c - 1])
            dstate = torch.addcmul(dH[:, 0], dS[:, 0], D[:, 0])
            dD = torch.bmm(Hs.reshape(b * k * h, 1, p * n), dS.view(b * k * h, p * n, 1)).view(b * k, h)
            dA[:, -1] += dD * D.view(b * k, h)
            # what each chunk adds: S = sum_j exp(A_T - A_j) x_j (x) B_j
            dte = torch.exp(A[:, -1:] - A)  # (bk, T, h)
            xs = (xg * dte[..., None]).view(b * k, T, g, r * p)
            dSg = dS.view(b * k, g, r * p, n)
            dxg = _cat([torch.bmm(Bg[:, :, i], dSg[:, i].transpose(1, 2)) for i in range(g)], 2).view(b * k, T, h, p)
            dBg = torch.stack([torch.bmm(xs[:, :, i], dSg[:, i]) for i in range(g)], 2)  # (bk, T, g, n)
            ddte = (dxg * xg).sum(-1).mul_(dte)  # (bk, T, h)
            dA -= ddte
            dA[:, -1] += ddte.sum(1)
            dxg.mul_(dte[..., None])
            # inside the chunks
            Ah = A.transpose(1, 2).contiguous()
            step = max(1, _TILE // (h * T * T))
            for t0 in range(0, b * k, step):
                t = slice(t0, t0 + step)
                E = _decay(Ah[t], bounds)  # (kt, h, T, T)
                for i in range(g):
                    Bi, Ci = Bg[t, :, i], Cg[t, :, i]
                    CB = torch.bmm(Ci, Bi.transpose(1, 2))
                    dG = None
                    for j in range(i * r, (i + 1) * r):
                        W = E[:, j] * CB
                        dyj, xj = dyg[t, :, j], xg[t, :, j]
                        dxg[t, :, j] += torch.bmm(W.transpose(1, 2), dyj)
                        dW = torch.bmm(dyj, xj.transpose(1, 2)).mul_(E[:, j])  # dL/dW o E
                        dG = dW.clone() if dG is None else dG.add_(dW)
                        dW.mul_(CB)  # dL/dW o W: gradient of the log-decays A_i - A_j
                        dA[t, :, j] += dW.sum(-1) - dW.sum(-2)
                    dCg[t, :, i] += torch.bmm(dG, Bi)
                    dBg[t, :, i] += torch.bmm(dG.transpose(1, 2), Ci)
            v = min(e, l) - s
            da[:, s:e] = dA.flip(1).cumsum(1).flip(1).view(b, k * T, h)[:, :v]
            dx[:, s:e] = dxg.view(b, k * T, h, p)[:, :v]
            dB[:, s:e] = dBg.view(b, k * T, g, n)[:, :v]
            dC[:, s:e] = dCg.view(b, k * T, g, n)[:, :v]
        return dx, da, dB, dC, (dstate if ctx.has_s0 else None), None



def ssd_chunked(
    x: torch.Tensor,
    log_a: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked SSD scan; same contract as :func:`ssd_sequential`.

    x (b, l, h, p), log_a (b, l, h) <= 0, B and C (b, l, g, n). Any l works: the last chunk is padded
    with x = 0 and log_a = 0, which leaves outputs and the final state unchanged. Computed in float32
    (autocast off inside), by :class:`_SSDChunked`; the einsum form it replaced is kept as
    ``benchmarks/ssd_before.py``.
    """
    b, l, h, p = x.shape
    x, log_a, B, C = x.float(), log_a.float(), B.float(), C.float()
    s0 = None if initial_state is None else initial_state.float()
    if l == 0:
        state = x.new_zeros(b, h, p, B.shape[3]) if s0 is None else s0.clone()
        return x.new_zeros(b, 0, h, p), state
    with torch.autocast(x.device.type, enabled=False):
        return _SSDChunked.apply(x, log_a, B, C, s0, chunk_size)


def _fast_scan_available(x: torch.Tensor) -> bool:
    """The mamba-ssm Triton kernel can run: a CUDA tensor and the package installed (checked, not imported)."""
    return x.is_cuda and importlib.util.find_spec("mamba_ssm") is not None


def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    initial_state: torch.Tensor | None = None,
    fast: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2's scan with dt already positive: h_t = exp(dt_t A) h_{t-1} + dt_t x_t ⊗ B_t, y_t = h_t · C_t.

    x (b, l, h, p), dt (b, l, h), A (h,) negative, B and C (b, l, g, n). ``fast=None`` picks the
    mamba-ssm kernel when :func:`_fast_scan_available`, ``False`` forces the pure-PyTorch scan,
    ``True`` demands the kernel. Returns y (b, l, h, p) float32 and the final state (b, h, p, n).
    """
    use_fast = _fast_scan_available(x) if fast is None else fast
    if use_fast:
        # imported here only: `import dnalm` must never pull in triton / mamba-ssm
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

        y, final = mamba_chunk_scan_combined(
            x.contiguous(),
            dt.contiguous(),
            A.float(),
            B.contiguous(),
            C.contiguous(),
            chunk_size,
            initial_states=initial_state,
            return_final_states=True,
        )
        return y.float(), final.float()
    return ssd_chunked(x * dt[..., None], dt * A, B, C, chunk_size, initial_state)


# ------------------------------------------------------------------------------------------ the layer


class _CausalConv(torch.autograd.Function):
    """y[t] = bias + sum_j w[:, j] u[t - (k-1) + j] on u (B, L, C), in place on y with shifted slices; the
    backward is the transposed sum (autograd through slices allocates a zero-filled full-size gradient
    per slice)."""

    @staticmethod
    def forward(ctx, u, w, bias):
        L, k = u.shape[1], w.shape[1]
        dtype = torch.promote_types(u.dtype, w.dtype)
        y = torch.addcmul(bias.to(dtype), u, w[:, k - 1].to(dtype))
        for s in range(1, min(k, L + 1)):  # lag s uses tap k-1-s
            y[:, s:].addcmul_(u[:, : L - s], w[:, k - 1 - s].to(dtype))
        ctx.save_for_backward(u, w)
        return y

    @staticmethod
    def backward(ctx, g):
        u, w = ctx.saved_tensors
        L, k = u.shape[1], w.shape[1]
        du = g * w[:, k - 1].to(g.dtype)
        dw = torch.empty(w.shape, dtype=torch.float32, device=w.device)
        buf = torch.mul(g, u)
        dw[:, k - 1] = buf.sum((0, 1))
        for s in range(1, k):
            if s >= L:
                dw[:, k - 1 - s] = 0
                continue
            du[:, : L - s].addcmul_(g[:, s:], w[:, k - 1 - s].to(g.dtype))
            dw[:, k - 1 - s] = torch.mul(g[:, s:], u[:, : L - s], out=buf[:, : L - s]).sum((0, 1))
        return du.to(u.dtype), dw.to(w.dtype), g.sum((0, 1)).to(w.dtype)


def _causal_conv(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``conv1d``'s causal depthwise convolution of u (B, L, C) in its own (B, L, C) layout, weight
    (C, 1, k) with the last tap at lag 0: the same function as
    ``conv1d(u.transpose(1, 2))[..., :L].transpose(1, 2)`` without the transposes and the slow depthwise
    convolution kernels (issue 16). Under bf16 autocast the float32 weights promote the sum to float32."""
    return _CausalConv.apply(u, weight[:, 0], bias)


@dataclass
class Mamba2State:
    """Generation state of one Mamba-2 layer."""

    conv: torch.Tensor  # (B, conv_dim, d_conv - 1): the last inputs of the causal conv, oldest first
    ssm: torch.Tensor  # (B, H, P, N) float32


class Mamba2(nn.Module):
    """The Mamba-2 mixer (no residual, no norm in front; see :class:`Mamba2Block`)."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        expand: int = 2,
        d_conv: int = 4,
        headdim: int = 64,
        chunk_size: int = 256,
        norm_eps: float = 1e-5,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        fast: bool | None = None,
    ):
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.chunk_size = d_model, d_state, d_conv, chunk_size
        self.d_inner = expand * d_model
        if self.d_inner % headdim:
            raise ValueError(f"expand * d_model ({self.d_inner}) must be a multiple of headdim ({headdim})")
        self.headdim = headdim
        self.nheads = self.d_inner // headdim
        self.fast = fast
        self.conv_dim = self.d_inner + 2 * d_state  # the conv runs over [x, B, C]
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * d_state + self.nheads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, padding=d_conv - 1)
        self.norm = nn.RMSNorm(self.d_inner, eps=norm_eps)  # the gated norm: RMSNorm(y * silu(z))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.out_proj.residual_out = True  # scaled by gpt2_init
        # dt = softplus(raw + dt_bias) starts log-uniform in [dt_min, dt_max]; A = -exp(A_log) in -[1, 16]
        self.dt_bias = nn.Parameter(torch.empty(self.nheads))
        self.A_log = nn.Parameter(torch.empty(self.nheads))
        self.D = nn.Parameter(torch.ones(self.nheads))
        self._dt_range, self._A_range = (dt_min, dt_max), A_init_range
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True  # an optimizer may read this (as mamba-ssm's trainers do)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Re-draw dt_bias, A_log and D (call after a generic init has overwritten the Linear layers)."""
        lo, hi = self._dt_range
        dt = torch.exp(torch.rand(self.nheads) * (math.log(hi) - math.log(lo)) + math.log(lo)).clamp_min(1e-4)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log.copy_(torch.log(torch.empty(self.nheads).uniform_(*self._A_range)))
        self.D.fill_(1.0)

    def _split(self, zxbcdt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        E = self.d_inner
        return zxbcdt[..., :E], zxbcdt[..., E : E + self.conv_dim], zxbcdt[..., E + self.conv_dim :]

    def _ssm_inputs(self, xbc: torch.Tensor, dt_raw: torch.Tensor):
        """Post-conv [x, B, C] and raw dt -> x (.., H, P), B (.., 1, N), C (.., 1, N), dt (.., H), A (H,)."""
        E, N = self.d_inner, self.d_state
        x = xbc[..., :E].unflatten(-1, (self.nheads, self.headdim))
        Bm = xbc[..., E : E + N].unsqueeze(-2)
        Cm = xbc[..., E + N :].unsqueeze(-2)
        dt = F.softplus(dt_raw.float() + self.dt_bias.float())
        A = -torch.exp(self.A_log.float())
        return x, Bm, Cm, dt, A

    def _output(self, y: torch.Tensor, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = y + x.float() * self.D.float()[:, None]  # (.., H, P): the skip connection
        y = y.flatten(-2).to(z.dtype)  # (.., E)
        return self.out_proj(self.norm(y * F.silu(z)))  # (.., D)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u (B, L, D) -> (B, L, D)."""
        return self._forward(u)[0]

    def _forward(self, u: torch.Tensor, initial_state: torch.Tensor | None = None):
        L = u.shape[1]
        z, xbc, dt_raw = self._split(self.in_proj(u))  # (B, L, E), (B, L, conv_dim), (B, L, H)
        xbc_pre = xbc
        xbc = F.silu(_causal_conv(xbc, self.conv1d.weight, self.conv1d.bias))  # (B, L, conv_dim), causal
        x, Bm, Cm, dt, A = self._ssm_inputs(xbc, dt_raw)
        y, state = ssd_scan(x, dt, A, Bm, Cm, self.chunk_size, initial_state, fast=self.fast)  # (B, L, H, P)
        return self._output(y, x, z), state, xbc_pre

    def prefill(self, u: torch.Tensor) -> tuple[torch.Tensor, Mamba2State]:
        """Process a prompt u (B, L, D): the outputs (B, L, D) and the state for :meth:`step`."""
        y, ssm, xbc_pre = self._forward(u)
        k = self.d_conv - 1
        conv = F.pad(xbc_pre.transpose(1, 2), (k, 0))[..., -k:] if k else xbc_pre.new_zeros(u.shape[0], self.conv_dim, 0)
        return y, Mamba2State(conv.contiguous(), ssm)

    def empty_state(self, batch: int, device=None, dtype=None) -> Mamba2State:
        """The state before any token (all zeros)."""
        conv = torch.zeros(batch, self.conv_dim, self.d_conv - 1, device=device, dtype=dtype)
        ssm = torch.zeros(batch, self.nheads, self.headdim, self.d_state, device=device, dtype=torch.float32)
        return Mamba2State(conv, ssm)

    def step(self, u: torch.Tensor, state: Mamba2State) -> tuple[torch.Tensor, Mamba2State]:
        """One token u (B, D) -> (B, D); the state is updated in place and returned."""
        z, xbc, dt_raw = self._split(self.in_proj(u))  # (B, E), (B, conv_dim), (B, H)
        window = torch.cat([state.conv, xbc[..., None]], dim=-1)  # (B, conv_dim, d_conv), oldest first
        # conv1d's last weight tap is lag 0, which matches the oldest-first window
        xbc_c = F.silu((window * self.conv1d.weight[:, 0, :]).sum(-1) + self.conv1d.bias)  # (B, conv_dim)
        state.conv.copy_(window[..., 1:])
        x, Bm, Cm, dt, A = self._ssm_inputs(xbc_c, dt_raw)  # x (B, H, P), B/C (B, 1, N), dt (B, H)
        decay = torch.exp(dt * A)  # (B, H)
        state.ssm.mul_(decay[:, :, None, None]).add_((dt[..., None] * x.float())[..., None] * Bm.float()[:, :, None, :])
        y = torch.einsum("bhpn,bn->bhp", state.ssm, Cm[:, 0].float())  # (B, H, P)
        return self._output(y, x, z), state


class Mamba2Block(nn.Module):
    """Pre-norm residual block: x + Mamba2(RMSNorm(x)) (H-Net's Mamba layers carry no MLP)."""

    def __init__(self, d_model: int, norm_eps: float = 1e-5, **mamba_kwargs):
        super().__init__()
        self.norm = nn.RMSNorm(d_model, eps=norm_eps)
        self.mixer = Mamba2(d_model, norm_eps=norm_eps, **mamba_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, D) -> (B, L, D)."""
        return x + self.mixer(self.norm(x))

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, Mamba2State]:
        y, state = self.mixer.prefill(self.norm(x))
        return x + y, state

    def step(self, x: torch.Tensor, state: Mamba2State) -> tuple[torch.Tensor, Mamba2State]:
        y, state = self.mixer.step(self.norm(x), state)
        return x + y, state
