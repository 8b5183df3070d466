"""The chunked SSD scan as it was before issue 16 (dnalm main at 4d46617), kept as the "before" twin for
``benchmarks/bench_ssd.py``: plain autograd through einsums over all chunks at once, the (b, c, g, r, T, T)
decay tensor and a Python loop over the chunk states. Not used by dnalm itself."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ssd_chunked_before(
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


def causal_conv_before(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The Mamba-2 layer's causal depthwise conv as it was (``nn.Conv1d`` on the transposed input)."""
    L, k = u.shape[1], weight.shape[-1]
    return F.conv1d(u.transpose(1, 2), weight, bias, padding=k - 1, groups=weight.shape[0])[..., :L].transpose(1, 2)
