"""A reference HyenaDNA block, written from the published HyenaDNA code's math (the standalone
``huggingface.py`` / ``modeling_hyena.py`` of HazyResearch/hyena-dna), for side-by-side timing only.

It follows the published layout step by step, including its costs, so that the benchmark compares dnalm
against what a user of the original code runs:

- ``in_proj`` on (B, L, D), then ``rearrange 'b l d -> b d l'`` (a transposed view fed to conv1d);
- the short filter as ``nn.Conv1d(groups=3D, padding=2)`` and a slice ``[..., :L]``;
- the implicit filter MLP (Linear, Sin, Linear, Sin, Linear, Sin, Linear) and the exponential window,
  recomputed each forward, then ``rearrange 'l (o d) -> o d l'``;
- ``fftconv``: ``fft_size = 2 L``, ``k_f = rfft(k, n=2L) / 2L``, ``u_f = rfft(u, n=2L)``,
  ``y = irfft(u_f * k_f, n=2L, norm="forward")[..., :L] + u * D`` (autograd through the FFTs);
- ``y = rearrange(v * x0, 'b d l -> b l d')``, ``out_proj``;
- the block: ``LayerNorm -> mixer -> + residual -> LayerNorm -> Mlp(fc1, GELU(tanh), fc2) -> + residual``.

:func:`from_dnalm` copies the weights of a ``dnalm.models.hyena.HyenaBlock`` (same parameter names as the
published checkpoints), so the two blocks compute the same function and the benchmark checks that first.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def fftconv(u: torch.Tensor, k: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """The published ``fftconv_ref``: causal convolution by FFT of size 2L plus the D skip term."""
    seqlen = u.shape[-1]
    fft_size = 2 * seqlen
    k_f = torch.fft.rfft(k, n=fft_size) / fft_size
    u_f = torch.fft.rfft(u.to(dtype=k.dtype), n=fft_size)
    y = torch.fft.irfft(u_f * k_f, n=fft_size, norm="forward")[..., :seqlen]
    out = y + u * D.unsqueeze(-1)
    return out.to(dtype=u.dtype)


class Sin(nn.Module):
    def __init__(self, freq: nn.Parameter):
        super().__init__()
        self.freq = freq  # shared by every Sin, as in the published code

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq * x)


class PositionalEmbedding(nn.Module):
    def __init__(self, emb_dim: int, seq_len: int):
        super().__init__()
        self.seq_len = seq_len
        t = torch.linspace(0, 1, self.seq_len)[None, :, None]  # 1, L, 1
        bands = (emb_dim - 1) // 2
        t_rescaled = torch.linspace(0, seq_len - 1, seq_len)[None, :, None]
        w = 2 * math.pi * t_rescaled / seq_len  # 1, L, 1
        f = torch.linspace(1e-4, bands - 1, bands)[None, None]
        z = torch.exp(-1j * f * w)
        z = torch.cat([t, z.real, z.imag], dim=-1)
        self.z = nn.Parameter(z)
        self.register_buffer("t", t)

    def forward(self, L: int):
        return self.z[:, :L], self.t[:, :L]


class ExponentialModulation(nn.Module):
    def __init__(self, d_model: int, fast_decay_pct=0.3, slow_decay_pct=1.5, target=1e-2, shift: float = 0.05):
        super().__init__()
        self.shift = shift
        max_decay = math.log(target) / fast_decay_pct
        min_decay = math.log(target) / slow_decay_pct
        deltas = torch.linspace(min_decay, max_decay, d_model)[None, None]
        self.register_buffer("deltas", deltas)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        decay = torch.exp(-t * self.deltas.abs())
        return x * (decay + self.shift)


class HyenaFilter(nn.Module):
    def __init__(self, d_model: int, emb_dim: int = 5, order: int = 64, seq_len: int = 1024, w: float = 10.0,
                 num_inner_mlps: int = 2):
        super().__init__()
        self.bias = nn.Parameter(torch.randn(d_model))
        self.pos_emb = PositionalEmbedding(emb_dim, seq_len)
        freq = nn.Parameter(w * torch.ones(1, order))
        layers = [nn.Linear(emb_dim, order), Sin(freq)]
        for _ in range(num_inner_mlps):
            layers += [nn.Linear(order, order), Sin(freq)]
        layers.append(nn.Linear(order, d_model, bias=False))
        self.implicit_filter = nn.Sequential(*layers)
        self.modulation = ExponentialModulation(d_model)

    def filter(self, L: int) -> torch.Tensor:
        z, t = self.pos_emb(L)
        h = self.implicit_filter(z)
        return self.modulation(t, h)

    def forward(self, x, L, k=None, bias=None):
        return fftconv(x, k, bias)


class HyenaOperator(nn.Module):
    def __init__(self, d_model: int, l_max: int, order: int = 2, filter_order: int = 64):
        super().__init__()
        self.d_model, self.l_max, self.order = d_model, l_max, order
        inner_width = d_model * (order + 1)
        self.in_proj = nn.Linear(d_model, inner_width)
        self.out_proj = nn.Linear(d_model, d_model)
        self.short_filter = nn.Conv1d(inner_width, inner_width, 3, padding=2, groups=inner_width)
        self.filter_fn = HyenaFilter(d_model * (order - 1), order=filter_order, seq_len=l_max)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        l = u.size(-2)
        l_filter = min(l, self.l_max)
        u = self.in_proj(u).transpose(1, 2)  # rearrange 'b l d -> b d l'
        uc = self.short_filter(u)[..., :l_filter]
        *x, v = uc.split(self.d_model, dim=1)
        k = self.filter_fn.filter(l_filter)[0]  # (L, (o d))
        k = k.reshape(l_filter, self.order - 1, self.d_model).permute(1, 2, 0)  # 'l (o d) -> o d l'
        bias = self.filter_fn.bias.reshape(self.order - 1, self.d_model)
        for o, x_i in enumerate(reversed(x[1:])):
            v = v * x_i
            v = self.filter_fn(v, l_filter, k=k[o], bias=bias[o])
        y = (v * x[0]).transpose(1, 2)  # rearrange 'b d l -> b l d'
        return self.out_proj(y)


class Mlp(nn.Module):
    def __init__(self, d: int, d_inner: int):
        super().__init__()
        self.fc1 = nn.Linear(d, d_inner)
        self.fc2 = nn.Linear(d_inner, d)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-norm residual block as the published ``Block`` (prenorm=True, dropout 0, residual in fp32)."""

    def __init__(self, d_model: int, l_max: int, d_inner: int | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.mixer = HyenaOperator(d_model, l_max)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = Mlp(d_model, d_inner or 4 * d_model)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = hidden_states
        hidden_states = self.mixer(self.norm1(residual))
        residual = hidden_states + residual
        hidden_states = self.mlp(self.norm2(residual))
        return hidden_states + residual


@torch.no_grad()
def from_dnalm(block: nn.Module) -> Block:
    """A reference Block holding a copy of a dnalm ``HyenaBlock``'s weights (order 2)."""
    mixer = block.mixer
    ref = Block(mixer.d_model, mixer.filter_fn.l_max, block.mlp.fc1.out_features)
    sd = {k: v.clone() for k, v in block.state_dict().items()}
    freq = sd.pop("mixer.filter_fn.implicit_filter.freq")
    ref.mixer.filter_fn.implicit_filter[1].freq.copy_(freq)  # one shared Parameter
    sd["mixer.filter_fn.pos_emb.z"] = sd["mixer.filter_fn.pos_emb.z"]
    missing, unexpected = ref.load_state_dict(sd, strict=False)
    bad = [k for k in missing if not k.endswith(("pos_emb.t", ".freq"))]
    if bad or unexpected:
        raise RuntimeError(f"weight copy failed: missing {bad}, unexpected {unexpected}")
    return ref
