"""Causal multi-head self-attention with rotary position embeddings (RoPE) and a KV cache.

Used by the Transformer++ baseline, the attention layers of StripedHyena 1/2 and the dnaHNet
encoder/decoder/main networks.

RoPE convention (owned here): the rotary embedding covers the full head dimension in the "half split"
layout (GPT-NeoX / Llama): channel i of the first half is rotated together with channel i of the second
half by the angle ``(pos / rope_interp) * rope_base ** (-2i / head_dim)``. Context extension uses
either linear position interpolation (``rope_interp`` > 1 divides the positions, Evo 1: 8k -> 131k with
16) or a larger ``rope_base`` (Evo 2), or both. Positions are 0-based token indices.

Generation: ``prefill(x)`` runs the parallel forward over a prompt and returns a :class:`KVCache` holding
the rotated keys and the values; ``step(x_t, cache)`` attends one new token to everything cached. Neither
disables autograd: generation loops wrap them in ``torch.inference_mode()``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dnalm.config import ConfigError


ROPE_PRECISIONS = ("float64", "float32", "bfloat16")


def rope_inv_freq(head_dim: int, base: float, precision: str = "float64", device: Any = None) -> torch.Tensor:
    """The RoPE frequencies ``base ** (-2i / head_dim)`` (head_dim/2,) under a ``precision`` rule (see rope_angles)."""
    if precision == "float64":
        return base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim)
    if precision not in ROPE_PRECISIONS:
        raise ValueError(f"RoPE precision must be one of {ROPE_PRECISIONS} (got {precision!r})")
    # the reference engines' formula, in float32: 1 / base ** (arange(0, hd, 2) / hd)
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    return inv.to(torch.bfloat16).float() if precision == "bfloat16" else inv


def rope_angles(
    positions: torch.Tensor, head_dim: int, base: float = 10000.0, interp: float = 1.0, precision: str = "float64"
) -> torch.Tensor:
    """Rotation angles (L, head_dim/2) for 0-based ``positions`` (L,).

    ``precision`` "float64" (native models): frequencies, positions and angles in float64. Why: at position
    1e6 a float32 angle is off by ~0.06 rad, enough to blur long-context attention; cos/sin are taken in
    float64 and only then rounded to float32. "float32" reproduces Evo 1 (flash-attn's rotary: frequencies
    recomputed in float32, ``pos = t / interp`` and ``pos * inv_freq`` in float32) and "bfloat16" Evo 2
    (vortex: the same, but the frequencies are the bf16-rounded buffer the released files store).
    """
    inv_freq = rope_inv_freq(head_dim, base, precision, positions.device)
    if precision == "float64":
        return (positions.to(torch.float64) / interp)[:, None] * inv_freq[None, :]  # (L, head_dim/2)
    pos = positions.to(torch.float32)
    if interp != 1.0:
        pos = pos / interp
    return torch.outer(pos, inv_freq)  # (L, head_dim/2) float32


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (..., L, head_dim) by angles given as ``cos``/``sin`` (L, head_dim/2), half-split layout."""
    x1, x2 = x.chunk(2, dim=-1)  # (..., L, hd/2) each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)  # (..., L, hd)


class RotaryEmbedding(nn.Module):
    """cos/sin tables, built lazily for the positions actually used and grown by doubling.

    Why lazily: a table for a 1M-token ``max_len`` would take ~0.5 GB per layer at head_dim 128, and
    presets of 7B models are built on the meta device just to count parameters. Positions past
    ``CACHE_ROWS`` get their angles computed for the call and not kept: every attention layer has its own
    table, and a one-pass scoring of a long input would otherwise keep up to 2 L rows in each of them.
    """

    CACHE_ROWS = 16384

    def __init__(
        self, head_dim: int, max_len: int, base: float = 10000.0, interp: float = 1.0, precision: str = "float64"
    ):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dimension (got {head_dim})")
        if precision not in ROPE_PRECISIONS:
            raise ValueError(f"RoPE precision must be one of {ROPE_PRECISIONS} (got {precision!r})")
        self.head_dim, self.max_len, self.base, self.interp = head_dim, max_len, float(base), float(interp)
        self.precision = precision
        # derived from (base, interp), so not saved in checkpoints
        self.register_buffer("cos", torch.empty(0, head_dim // 2), persistent=False)  # (n, hd/2)
        self.register_buffer("sin", torch.empty(0, head_dim // 2), persistent=False)  # (n, hd/2)

    def forward(self, start: int, length: int, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (length, head_dim/2) in float32 for positions start .. start+length-1."""
        device = self.cos.device if device is None else device
        end = start + length
        if end > self.CACHE_ROWS:  # angles of these positions only (elementwise: the same values a table holds)
            ang = rope_angles(torch.arange(start, end, device=device), self.head_dim, self.base, self.interp,
                              self.precision)
            return ang.cos().float(), ang.sin().float()
        if end > self.cos.shape[0] or self.cos.device != device:
            n = min(max(end, 2 * self.cos.shape[0]), self.CACHE_ROWS)
            ang = rope_angles(torch.arange(n, device=device), self.head_dim, self.base, self.interp, self.precision)
            self.cos, self.sin = ang.cos().float(), ang.sin().float()
        return self.cos[start : start + length], self.sin[start : start + length]


@dataclass
class KVCache:
    """Rotated keys and values of every token seen so far, preallocated and grown by doubling."""

    k: torch.Tensor  # (B, H, capacity, hd)
    v: torch.Tensor  # (B, H, capacity, hd)
    length: int = 0  # number of valid positions

    @classmethod
    def empty(cls, like: torch.Tensor, capacity: int) -> "KVCache":
        """An empty cache shaped like ``like`` (B, H, *, hd) with room for ``capacity`` positions."""
        B, H, _, hd = like.shape
        k = like.new_empty(B, H, capacity, hd)
        return cls(k, torch.empty_like(k), 0)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add ``k``, ``v`` (B, H, T, hd); return views of all valid keys/values (B, H, length, hd)."""
        T = k.shape[2]
        if self.length + T > self.k.shape[2]:  # grow: amortised O(1) per token
            cap = max(self.length + T, 2 * self.k.shape[2])

            def grow(t: torch.Tensor) -> torch.Tensor:
                spare = t.new_empty(t.shape[0], t.shape[1], cap - self.length, t.shape[3])
                return torch.cat([t[:, :, : self.length], spare], dim=2)  # (B, H, cap, hd)

            self.k, self.v = grow(self.k), grow(self.v)
        self.k[:, :, self.length : self.length + T] = k
        self.v[:, :, self.length : self.length + T] = v
        self.length += T
        return self.k[:, :, : self.length], self.v[:, :, : self.length]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with RoPE on queries and keys.

    ``forward(x: (B, L, D)) -> (B, L, D)`` uses ``F.scaled_dot_product_attention(is_causal=True)`` (flash or
    memory-efficient kernels where PyTorch has them). ``Wqkv`` is one D -> 3D projection laid out
    [q | k | v], each split into ``n_head`` heads; ``out_proj`` is flagged ``residual_out`` for GPT-2 init.
    ``bias`` switches both projections' biases, ``out_bias`` (if given) the output projection's alone
    (Evo 2: no qkv bias, an out_proj bias); ``rope_precision`` is the RoPE rule of :func:`rope_angles`.
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        max_len: int,
        rope_base: float = 10000.0,
        rope_interp: float = 1.0,
        bias: bool = False,
        dropout: float = 0.0,
        out_bias: bool | None = None,
        rope_precision: str = "float64",
    ):
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_head ({n_head})")
        self.d_model, self.n_head, self.head_dim = d_model, n_head, d_model // n_head
        self.max_len, self.dropout = max_len, dropout
        self.Wqkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias if out_bias is None else out_bias)
        self.out_proj.residual_out = True
        self.rope = RotaryEmbedding(self.head_dim, max_len, rope_base, rope_interp, rope_precision)

    def _qkv(self, x: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, L, _ = x.shape
        qkv = self.Wqkv(x).view(B, L, 3, self.n_head, self.head_dim)  # (B, L, 3, H, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, hd)
        cos, sin = self.rope(start, L, x.device)  # (L, hd/2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        B, _, L, _ = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(B, L, self.d_model))  # (B, L, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, D) -> (B, L, D); position t attends to positions 0..t."""
        q, k, v = self._qkv(x, 0)  # (B, H, L, hd)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)  # (B, H, L, hd)
        return self._merge(y)

    def prefill(self, x: torch.Tensor, capacity: int | None = None) -> tuple[torch.Tensor, KVCache]:
        """Forward over a prompt x (B, L, D); returns (y (B, L, D), a cache holding its keys and values).

        ``capacity`` preallocates room for that many positions (prompt + tokens to generate); by default
        the cache starts with 256 spare positions and doubles when full.
        """
        q, k, v = self._qkv(x, 0)  # (B, H, L, hd)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, L, hd)
        L = k.shape[2]
        cache = KVCache.empty(k, max(capacity, L) if capacity else L + 256)
        cache.append(k, v)
        return self._merge(y), cache

    def step(self, x_t: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """One new token x_t (B, D) at position ``cache.length``; returns (y_t (B, D), the updated cache)."""
        q, k, v = self._qkv(x_t[:, None, :], cache.length)  # (B, H, 1, hd)
        k_all, v_all = cache.append(k, v)  # (B, H, n, hd): every cached position is in the past
        y = F.scaled_dot_product_attention(q, k_all, v_all)  # (B, H, 1, hd)
        return self._merge(y)[:, 0], cache


    def forward_from(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Positions cache.length .. of B rows, x (B, s, D), after a shared prefix held in ``cache`` (batch 1),
        which is read, not changed -> (B, s, D)."""
        B, s, p = x.shape[0], x.shape[1], cache.length
        q, k, v = self._qkv(x, p)  # (B, H, s, hd), rotated for positions p .. p+s-1
        k_all = torch.cat([cache.k[:, :, :p].expand(B, -1, -1, -1), k], dim=2)  # (B, H, p+s, hd)
        v_all = torch.cat([cache.v[:, :, :p].expand(B, -1, -1, -1), v], dim=2)
        mask = torch.ones(s, p + s, dtype=torch.bool, device=x.device).tril(p)  # query i sees keys <= p+i
        return self._merge(F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask))


# --------------------------------------------------------------------------------- context extension


def extend_context(config: Any, new_len: int, base_len: int = 8192) -> Any:
    """The config for a context-extension stage at ``new_len`` (the Evo 2 recipe, Brixi et al. 2025).

    Sets ``max_len = new_len``, linear position interpolation ``rope_interp = new_len / base_len`` and
    ``rope_base = base * 10 ** log2(new_len / base_len)`` where ``base`` is the RoPE base at ``base_len``
    (1M from 8K: factor 128, base 1e4 -> 1e11). The base is recovered from the config's current
    ``rope_interp``, so stages compose: extending an extended config gives the same result as extending
    the original (this holds for any config made by this function or still at its base length). Returns
    a new config; the input is not modified.
    """
    for name in ("rope_base", "rope_interp", "max_len"):
        if not hasattr(config, name):
            raise ConfigError(f"{type(config).__name__} has no {name}; context extension needs RoPE fields")
    if base_len <= 0 or new_len < base_len:
        raise ConfigError(f"context extension needs new_len >= base_len > 0 (got new_len={new_len}, base_len={base_len})")
    factor = new_len / base_len
    base0 = config.rope_base / 10 ** math.log2(config.rope_interp)
    return dataclasses.replace(
        config, max_len=int(new_len), rope_interp=factor, rope_base=base0 * 10 ** math.log2(factor)
    )
