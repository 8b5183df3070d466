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


def ssd_chunked(
    x: torch.Tensor,
    log_a: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked SSD scan; same contract as :func:`ssd_sequential`.

    x (b, l, h, p), log_a (b, l, h) <= 0, B and C (b, l, g, n). Any l works: the tail is padded with
    x = 0 and log_a = 0, which leaves outputs and the final state unchanged. Computed in float32.
    """
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    T = chunk_size
    pad = (-l) % T
    x, log_a, B, C = x.float(), log_a.float(), B.float(), C.float()
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        log_a = F.pad(log_a, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
    nc = (l + pad) // T
    r = h // g  # heads per group share B and C
    xc = x.reshape(b, nc, T, g, r, p)  # (b, c, T, g, r, p)
    Bc = B.reshape(b, nc, T, g, n)  # (b, c, T, g, n)
    Cc = C.reshape(b, nc, T, g, n)  # (b, c, T, g, n)
    ac = log_a.reshape(b, nc, T, g, r).permute(0, 1, 3, 4, 2)  # (b, c, g, r, T)
    a_cum = torch.cumsum(ac, dim=-1)  # (b, c, g, r, T)

    # 1. inside each chunk: y_i = sum_{j <= i} (C_i . B_j) exp(a_{j+1} + ... + a_i) x_j, as masked matmuls
    causal = torch.tril(torch.ones(T, T, dtype=x.dtype, device=x.device))  # (T, T)
    cb = torch.einsum("bclgn,bcsgn->bcgls", Cc, Bc) * causal  # (b, c, g, T, T)
    # exp(a_cum[i] - a_cum[j]) for i >= j; above the diagonal the difference is >= 0 (a <= 0), clamped
    # to 0 so exp stays finite, and cb is already zero there
    decay_in = torch.exp((a_cum[..., :, None] - a_cum[..., None, :]).clamp_max_(0.0))  # (b, c, g, r, T, T)
    weights = decay_in * cb[:, :, :, None]  # (b, c, g, r, T, T)
    y_diag = torch.einsum("bcgrls,bcsgrp->bclgrp", weights, xc)  # (b, c, T, g, r, p)

    # 2. the state each chunk adds by its end: sum_j exp(a_{j+1} + ... + a_T) x_j ⊗ B_j
    decay_to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (b, c, g, r, T)
    xw = xc * decay_to_end.permute(0, 1, 4, 2, 3)[..., None]  # (b, c, T, g, r, p)
    chunk_states = torch.einsum("bclgrp,bclgn->bcgrpn", xw, Bc)  # (b, c, g, r, p, n)

    # 3. across chunks: a recurrence over the nc chunk states (the state entering each chunk)
    chunk_decay = torch.exp(a_cum[..., -1])  # (b, c, g, r)
    state = x.new_zeros(b, h, p, n) if initial_state is None else initial_state.float()
    state = state.reshape(b, g, r, p, n)
    entering = []
    for c in range(nc):
        entering.append(state)
        state = state * chunk_decay[:, c, :, :, None, None] + chunk_states[:, c]  # (b, g, r, p, n)
    prev = torch.stack(entering, dim=1)  # (b, c, g, r, p, n)

    # 4. what the entering state contributes at each position: exp(a_1 + ... + a_i) C_i . h_in
    y_off = torch.einsum("bclgn,bcgrpn->bclgrp", Cc, prev)  # (b, c, T, g, r, p)
    y_off = y_off * torch.exp(a_cum).permute(0, 1, 4, 2, 3)[..., None]
    y = (y_diag + y_off).reshape(b, nc * T, h, p)[:, :l]  # (b, l, h, p)
    state = state.reshape(b, h, p, n)
    return y, state


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
        xbc = F.silu(self.conv1d(xbc.transpose(1, 2))[..., :L].transpose(1, 2))  # (B, L, conv_dim), causal
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
