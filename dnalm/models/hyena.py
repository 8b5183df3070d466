"""HyenaDNA: the Hyena operator (implicit long convolutions) and its pre-norm block (docs/architectures.md §1).

Read top to bottom: positional features -> implicit filter MLP -> exponential window (together the
``HyenaFilter``, which yields one causal filter per channel) -> ``HyenaOperator`` (projection, short
causal conv, gates and FFT long convolutions) -> ``HyenaBlock`` (LayerNorm, operator, LayerNorm, MLP)
-> ``HyenaBackbone``.

Conventions:

- Time is normalised to ``l_max`` (t = i / (l_max - 1)), not to the input length: the filter table is
  defined for l_max positions and an input of length L uses its first L rows. Changing l_max changes
  the model; inputs longer than l_max are an error.
- Filters are laid out lag-0 first, (C, L), as ``dnalm.ops.fftconv`` expects.
- The residual stream is float32; the long convolution runs in float32 under any autocast.

Parameter names mirror the published HyenaDNA Hugging Face checkpoints (``LongSafari/hyenadna-*-hf``,
under ``hyena.backbone.``), so importing one is a key rename:

- ``layers.i.{norm1, mixer, norm2, mlp.fc1, mlp.fc2}``
- ``mixer.{in_proj, short_filter, out_proj}`` and ``mixer.filter_fn.{bias, pos_emb.z, modulation.deltas}``
- ``mixer.filter_fn.implicit_filter.{0, 2, 4, ...}`` are the MLP's Linear layers at the same indices as
  the reference's nn.Sequential. The reference's Sin activations (odd indices) share ONE frequency
  tensor, saved three times under ``.1.freq``, ``.3.freq``, ``.5.freq``; here it is stored once as
  ``implicit_filter.freq`` (safetensors refuses aliased tensors). ``pos_emb.t`` is derived, not saved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dnalm.config import ConfigError, _positive
from dnalm.models.lm import gpt2_init, prefill_layers, step_layers
from dnalm.models.spec import (
    ActivationShape,
    BackboneOutput,
    FlopTerms,
    LayerSpec,
    ModelSpec,
    fft_conv_flops,
    layer_params_estimate,
)
from dnalm.ops.compile import compile_enabled, maybe_compile
from dnalm.ops.fftconv import (
    fft_long_conv,
    fft_size,
    filter_rfft,
    gated_fft_long_conv,
    packed_gated_fft_long_conv,
)

# The eval-mode cache of filter FFTs (one length per operator) is skipped above this many bytes:
# at 1M tokens and width 256 one entry would take 2 GB.
FILTER_CACHE_MAX_BYTES = 128 * 2**20


@dataclass
class HyenaConfig:
    """HyenaDNA (docs/architectures.md §1): Hyena operator blocks with implicit long filters."""

    family: Literal["hyena"] = "hyena"
    n_layer: int = 2
    d_model: int = 128
    l_max: int = 1026  # filter table length; time is normalised to l_max (train length + 2)
    vocab_size: int = 16
    order: int = 2  # Hyena order N: N-1 long convolutions, N+1 projections
    filter_order: int = 64  # width of the implicit filter MLP
    emb_dim: int = 5  # positional features: t plus (emb_dim-1)/2 cos/sin bands
    num_inner_mlps: int = 2
    activation_freq: float = 10.0
    modulation_shift: float = 0.05
    short_filter_order: int = 3
    d_inner: int | None = None  # MLP width; None means 4 * d_model
    ln_eps: float = 1e-5  # final LayerNorm
    block_ln_eps: float = 1e-5  # LayerNorms inside blocks (HyenaDNA hard-codes 1e-5)
    dropout: float = 0.0
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.d_inner is None:
            self.d_inner = 4 * self.d_model
        _positive(self, "n_layer", "d_model", "l_max", "vocab_size", "filter_order", "emb_dim", "d_inner")
        if self.order < 2:
            raise ConfigError(f"model.order must be >= 2 (got {self.order})")
        if self.emb_dim < 3 or self.emb_dim % 2 == 0:
            raise ConfigError(f"model.emb_dim must be odd and >= 3 (got {self.emb_dim})")

    @property
    def max_len(self) -> int:
        """Longest input the model accepts (the filter table length)."""
        return self.l_max


class PositionalEmbedding(nn.Module):
    """Features of each position i < l_max: z = [t, cos(-f w), sin(-f w)], t = i/(l_max-1), w = 2 pi i/l_max."""

    def __init__(self, emb_dim: int, l_max: int):
        super().__init__()
        t = torch.linspace(0, 1, l_max)[None, :, None]  # (1, l_max, 1)
        bands = (emb_dim - 1) // 2
        w = 2 * math.pi * torch.arange(l_max, dtype=torch.float32)[None, :, None] / l_max  # (1, l_max, 1)
        f = torch.linspace(1e-4, bands - 1, bands)[None, None]  # (1, 1, bands)
        z = torch.cat([t, torch.cos(-f * w), torch.sin(-f * w)], dim=-1)  # (1, l_max, emb_dim)
        # z is saved (published models may have trained it); t is a pure function of l_max
        self.register_buffer("z", z, persistent=True)
        self.register_buffer("t", t, persistent=False)

    def forward(self, L: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(z (L, emb_dim), t (L, 1)) for the first L positions."""
        return self.z[0, :L], self.t[0, :L]


class ImplicitFilterMLP(nn.Module):
    """Linear(emb_dim -> F), sin(freq x), num_inner_mlps x [Linear(F -> F), sin(freq x)], Linear(F -> C).

    The Linear layers sit at the reference's nn.Sequential indices 0, 2, ..., 2*num_inner_mlps + 2; one
    trainable ``freq`` (1, F), initialised to ``activation_freq``, is shared by every sin.
    """

    def __init__(self, emb_dim: int, filter_order: int, channels: int, num_inner_mlps: int, freq: float):
        super().__init__()
        self.freq = nn.Parameter(torch.full((1, filter_order), float(freq)))  # (1, F)
        dims = [emb_dim] + [filter_order] * (num_inner_mlps + 1)
        self.hidden_names = [str(2 * i) for i in range(num_inner_mlps + 1)]
        for name, d_in, d_out in zip(self.hidden_names, dims[:-1], dims[1:]):
            self.add_module(name, nn.Linear(d_in, d_out))
        self.out_name = str(2 * num_inner_mlps + 2)
        self.add_module(self.out_name, nn.Linear(filter_order, channels, bias=False))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (L, emb_dim) -> filter values (L, C), always in float32 (a no-op cast for float32 weights)."""
        h = z.float()  # (L, emb_dim)
        freq = self.freq.float()
        for name in self.hidden_names:
            lin = getattr(self, name)
            h = torch.sin(freq * F.linear(h, lin.weight.float(), lin.bias.float()))  # (L, F)
        return F.linear(h, getattr(self, self.out_name).weight.float())  # (L, C)


class ExponentialModulation(nn.Module):
    """Window exp(-t |delta_c|) + shift; delta spread so channel c decays to 1% between 0.3 and 1.5 l_max."""

    def __init__(self, channels: int, shift: float, fast_decay: float = 0.3, slow_decay: float = 1.5):
        super().__init__()
        target = math.log(1e-2)
        deltas = torch.linspace(target / slow_decay, target / fast_decay, channels)[None, None]  # (1, 1, C)
        self.register_buffer("deltas", deltas, persistent=True)
        self.shift = shift

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """t (L, 1), h (L, C) -> h * window (L, C)."""
        return h * (torch.exp(-t * self.deltas[0].float().abs()) + self.shift)


class HyenaFilter(nn.Module):
    """The implicit long filters of one operator: ``channels`` = (order-1) * d_model filters of length <= l_max,
    plus the per-channel skip ``bias`` (the "D" term: y = h * u + bias * u)."""

    def __init__(self, config: HyenaConfig, channels: int):
        super().__init__()
        self.l_max = config.l_max
        self.bias = nn.Parameter(torch.randn(channels))  # (C,)
        self.pos_emb = PositionalEmbedding(config.emb_dim, config.l_max)
        self.implicit_filter = ImplicitFilterMLP(
            config.emb_dim, config.filter_order, channels, config.num_inner_mlps, config.activation_freq
        )
        self.modulation = ExponentialModulation(channels, config.modulation_shift)

    def forward(self, L: int) -> torch.Tensor:
        """The filters for length L: (C, L), lag 0 first, float32."""
        if L > self.l_max:
            raise ValueError(
                f"input length {L} exceeds this Hyena model's l_max={self.l_max}; its filters are only defined "
                f"for {self.l_max} positions (use a model built with a larger l_max)"
            )
        with torch.autocast(device_type=self.pos_emb.z.device.type, enabled=False):
            z, t = self.pos_emb(L)  # (L, emb_dim), (L, 1)
            h = self.implicit_filter(z)  # (L, C) float32, even for bf16 weights
            h = self.modulation(t.float(), h)  # (L, C)
        return h.t()  # (C, L)


class HyenaOperator(nn.Module):
    """Order-N Hyena: in_proj (N+1 streams), short causal conv, then N-1 rounds of gate + long conv.

    Order 2 (HyenaDNA): x0, x1, v = split(short_conv(in_proj(u)));
    y = out_proj(x0 * (h * (x1 v) + bias * (x1 v))). For N > 2 the extra gates x_{N-1}, ..., x_1 are
    applied in that order, gate k using filter bank k (channels k*D .. (k+1)*D) of the filter MLP.

    The stages are methods so that other schedules of the same computation (the memory-lean long-context
    pass in ``dnalm.eval.longcontext``, context parallelism in ``dnalm.train.distributed``) compose them
    instead of re-deriving the math: :meth:`short_conv` (after ``in_proj``), :meth:`long_conv` (one gate
    round's filter bank, optionally a slice of its channels) and :meth:`output`.
    """

    def __init__(self, config: HyenaConfig):
        super().__init__()
        D, N = config.d_model, config.order
        self.d_model, self.order = D, N
        k = config.short_filter_order
        self.in_proj = nn.Linear(D, (N + 1) * D)
        # depthwise, padded k-1 on both sides, first L outputs kept: causal (as the reference does)
        self.short_filter = nn.Conv1d((N + 1) * D, (N + 1) * D, k, groups=(N + 1) * D, padding=k - 1)
        self.filter_fn = HyenaFilter(config, (N - 1) * D)
        self.out_proj = nn.Linear(D, D)
        self.out_proj.residual_out = True
        self.dropout = nn.Dropout(config.dropout)
        self._fft_cache: tuple | None = None  # (key, filter FFT) in eval mode; see _filter_fft
        self._suffix_fft_cache: dict[int, tuple] = {}  # suffix length -> (key, FFT); see forward_prefix

    def long_filter(self, L: int) -> torch.Tensor:
        """The implicit long filters for length L: ((order-1) * d_model, L), lag 0 first, float32."""
        return self.filter_fn(L)

    def _filter_fft(self, L: int) -> torch.Tensor | None:
        """In eval mode without autograd, the filter FFT for length L, cached until the weights change."""
        if self.training or torch.is_grad_enabled():
            return None
        n = fft_size(L)
        if self.filter_fn.bias.numel() * (n // 2 + 1) * 8 > FILTER_CACHE_MAX_BYTES:
            return None
        tensors = list(self.filter_fn.parameters()) + list(self.filter_fn.buffers())
        # any in-place update (optimizer step, load_state_dict) bumps _version; .to() changes data_ptr
        key = (L, tuple((p.data_ptr(), p._version) for p in tensors))
        if self._fft_cache is None or self._fft_cache[0] != key:
            self._fft_cache = (key, filter_rfft(self.long_filter(L), n))  # (C, n//2+1)
        return self._fft_cache[1]

    def _suffix_filter_fft(self, s_len: int) -> torch.Tensor:
        """The transform of the first ``s_len`` filter taps at size fft_size(s_len), for ``forward_from``;
        kept for a few lengths in eval mode without autograd (variants at one window offset share it)."""
        n = fft_size(s_len)
        if self.training or torch.is_grad_enabled():
            return filter_rfft(self.long_filter(s_len), n)
        tensors = list(self.filter_fn.parameters()) + list(self.filter_fn.buffers())
        key = tuple((p.data_ptr(), p._version) for p in tensors)
        hit = self._suffix_fft_cache.get(s_len)
        if hit is None or hit[0] != key:
            if len(self._suffix_fft_cache) >= 4 or self.filter_fn.bias.numel() * (n // 2 + 1) * 8 > FILTER_CACHE_MAX_BYTES:
                self._suffix_fft_cache.clear()
            hit = (key, filter_rfft(self.long_filter(s_len), n))  # the filter table's first s_len rows
            self._suffix_fft_cache[s_len] = hit
        return hit[1]

    def train(self, mode: bool = True) -> "HyenaOperator":
        self._fft_cache = None  # training changes the weights; free the memory
        self._suffix_fft_cache = {}
        return super().train(mode)

    # ---- the stages

    def short_conv(self, z: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        """The depthwise causal short convolution of ``z = in_proj(u)`` laid out (B, (N+1)D, L).

        ``history`` (B, (N+1)D, k-1) holds the k-1 inputs before z's first position (zeros by default, as at
        a sequence start). conv1d's last tap multiplies the current position, as the reference's
        nn.Conv1d does. Returns (B, (N+1)D, L); split it into x0, gates..., v with ``split(D, dim=1)``.
        """
        if history is None:  # zeros before z: causal (as the reference's padded conv1d)
            return self._short_conv_shifts(z)
        # the history as the first k-1 positions, whose outputs are dropped (same values as conv1d without padding)
        return self._short_conv_shifts(torch.cat([history.to(z.dtype), z], dim=-1))[..., history.shape[-1] :]

    def long_conv(
        self, v: torch.Tensor, bank: int, h: torch.Tensor | None, channels: slice = slice(None), h_fft=None
    ) -> torch.Tensor:
        """Gate round ``bank``'s long convolution ``h * v + bias * v`` of v (B, c, L), c = the ``channels``
        of d_model it holds (all by default). ``h`` is the full filter table ``long_filter(L')`` (L' >= L;
        longer filters are cut), or ``h_fft`` its cached transform (see ``_filter_fft``)."""
        D = self.d_model
        lo, hi, _ = channels.indices(D)
        ch = slice(bank * D + lo, bank * D + hi)
        bias = self.filter_fn.bias[ch]
        if h_fft is not None:
            return fft_long_conv(v, None, bias, h_fft=h_fft[ch])
        return fft_long_conv(v, h[ch], bias)  # (B, c, L), float32 inside

    def output(self, x0: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The final gate and projection: x0, v (B, D, L) -> out_proj(x0 * v) (B, L, D)."""
        return self.out_proj((x0 * v).transpose(1, 2))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u (B, L, D) -> (B, L, D)."""
        if (self.dropout.p > 0 and self.training) or not _plain(self.in_proj, self.out_proj):
            return self._forward_staged(u)  # dropout between the gate and the long conv; adapted projections
        B, L, D = u.shape
        w_in = self.in_proj.weight  # ((N+1)D, D)
        # W @ u^T: a contiguous channel-major (B, (N+1)D, L) straight from the GEMM (no transpose copy; note
        # that torch.matmul(W, u^T) would compute u @ W^T and return its transposed, L-major view)
        z = torch.mm(w_in, u[0].t())[None] if B == 1 else torch.bmm(w_in.expand(B, -1, -1), u.transpose(1, 2))
        z = self._short_conv_biased(z, self.in_proj.bias)  # short_conv(in_proj(u)), causal
        h_fft = self._filter_fft(L)  # (C, n//2+1) or None
        h = self.long_filter(L) if h_fft is None else None  # (C, L)
        bias = self.filter_fn.bias
        if self.order == 2:  # z = [x0 | x1 | v]: the whole gate-conv-gate stage, one gradient for z
            v = packed_gated_fft_long_conv(z, h, bias, h_fft)
        else:
            x0, *gates, v = z.split(D, dim=1)  # each (B, D, L)
            for o, x_i in enumerate(reversed(gates)):  # gate x_{N-1} first; the last round applies x0 too
                ch = slice(o * D, (o + 1) * D)
                v = gated_fft_long_conv(x_i, v, None if h is None else h[ch], bias[ch],
                                        None if h_fft is None else h_fft[ch], post=x0 if o == len(gates) - 1 else None)
        w, b = self.out_proj.weight, self.out_proj.bias  # out_proj of the channel-major (B, D, L) result
        if B == 1:
            return F.linear(v[0].t(), w, b)[None]  # a transposed (L, D) operand: no copy
        return torch.baddbmm(b.expand(B, L, D), v.transpose(1, 2), w.t().expand(B, D, D))

    def _short_conv_shifts(self, z: torch.Tensor) -> torch.Tensor:
        """``short_conv(z)`` as k shifted multiply-adds with a hand-written backward (a depthwise conv1d's
        backward, and autograd through in-place shifted updates, are both slow on CPU)."""
        return self._short_conv_biased(z, torch.zeros_like(self.short_filter.bias))

    def _short_conv_biased(self, z: torch.Tensor, b_in: torch.Tensor) -> torch.Tensor:
        """``short_conv(z + b_in[:, None])``, b_in (C,) in_proj's bias, without materialising z + b_in."""
        return _ShortConv.apply(z, self.short_filter.weight[:, 0], self.short_filter.bias, b_in)

    def _forward_staged(self, u: torch.Tensor) -> torch.Tensor:
        """The operator composed from its stages (used with dropout): the same function as ``forward``."""
        L, D = u.shape[1], self.d_model
        z = self.short_conv(self.in_proj(u).transpose(1, 2))  # (B, (N+1)D, L), causal
        x0, *gates, v = z.split(D, dim=1)  # each (B, D, L)
        h_fft = self._filter_fft(L)  # (C, n//2+1) or None
        h = self.long_filter(L) if h_fft is None else None  # (C, L)
        for o, x_i in enumerate(reversed(gates)):  # order 2: just x1
            v = self.long_conv(self.dropout(v * x_i), o, h, h_fft=h_fft)  # (B, D, L)
        return self.output(x0, v)

    # ---- prefix sharing (dnalm.eval.scoring): rows that agree on their first p positions. The long
    # convolution splits exactly into the prefix's contribution and the suffix's own: for t >= p,
    # (h * w)[t] = sum_{s<p} h[t-s] w[s] + sum_{s>=p} h[t-s] w[s]. The first term is the same for every row
    # and is kept in the state; the second is a convolution of the suffix alone.

    def forward_prefix(self, u: torch.Tensor, total_len: int) -> tuple[torch.Tensor, dict]:
        """Prefix u (1, p, D) of rows ``total_len`` long -> (y (1, p, D), the state for ``forward_from``)."""
        p, D, L = u.shape[1], self.d_model, total_len
        z_pre = self.in_proj(u).transpose(1, 2)  # (1, (N+1)D, p)
        x0, *gates, v = self.short_conv(z_pre).split(D, dim=1)  # each (1, D, p)
        h_fft = self._filter_fft(L)
        if h_fft is None:
            h_fft = filter_rfft(self.long_filter(L), fft_size(L))
        bias, contrib = self.filter_fn.bias, []
        for o, x_i in enumerate(reversed(gates)):
            ch = slice(o * D, (o + 1) * D)
            w = v * x_i  # (1, D, p)
            full = fft_long_conv(F.pad(w, (0, L - p)), None, None, h_fft=h_fft[ch])  # (1, D, L): prefix only
            contrib.append(full[..., p:])  # (1, D, L-p): what the prefix adds to every later position
            v = torch.addcmul(full[..., :p], w, bias[ch, None].to(w.dtype))  # the prefix's own output
        k = self.short_filter.kernel_size[0]
        padded = F.pad(z_pre, (max(0, k - 1 - p), 0))
        fir = padded[..., padded.shape[-1] - (k - 1) :]  # (1, (N+1)D, k-1): the inputs before position p
        state = {"fir": fir, "contrib": contrib, "h_fft": self._suffix_filter_fft(L - p)}
        return self.output(x0, v), state

    def forward_from(self, u: torch.Tensor, state: dict) -> torch.Tensor:
        """Positions p .. total_len-1 of B rows, u (B, total_len - p, D) -> y (B, ., D) (state unchanged)."""
        B, D = u.shape[0], self.d_model
        z_pre = self.in_proj(u).transpose(1, 2)  # (B, (N+1)D, s)
        fir = state["fir"].expand(B, -1, -1)
        x0, *gates, v = self.short_conv(z_pre, fir).split(D, dim=1)  # each (B, D, s)
        bias = self.filter_fn.bias
        for o, x_i in enumerate(reversed(gates)):
            ch = slice(o * D, (o + 1) * D)
            v = fft_long_conv(v * x_i, None, bias[ch], h_fft=state["h_fft"][ch]) + state["contrib"][o]
        return self.output(x0, v)

    # ---- generation (dnalm.generation). The implicit filter is used as what it is, an explicit FIR as long
    # as the sequence: the state keeps every past long-conv input (B, D, capacity) per gate plus the filter
    # table, both grown by doubling up to l_max. Exact (no modal fit), but a step costs O(t * D).

    def prefill(self, u: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Forward over a prompt u (B, L, D); returns (y (B, L, D), the generation state)."""
        B, L, D = u.shape[0], u.shape[1], self.d_model
        z_pre = self.in_proj(u).transpose(1, 2)  # (B, (N+1)D, L)
        x0, *gates, v = self.short_conv(z_pre).split(D, dim=1)  # each (B, D, L)
        cap = min(L + 256, self.filter_fn.l_max)
        h = self.long_filter(cap)  # (C, cap) float32
        hist = []
        for o, x_i in enumerate(reversed(gates)):
            v = v * x_i  # (B, D, L): the long-conv input, kept for the steps
            hist.append(torch.cat([v.float(), v.new_zeros(B, D, cap - L, dtype=torch.float32)], dim=-1))
            v = self.long_conv(v, o, h)  # (B, D, L)
        k = self.short_filter.kernel_size[0]
        padded = F.pad(z_pre, (max(0, k - 1 - L), 0))  # zeros before the prompt, as the causal conv sees
        fir = padded[..., padded.shape[-1] - (k - 1) :].clone()  # (B, (N+1)D, k-1): the last k-1 inputs
        state = {"fir": fir, "hist": hist, "h": h, "t": L}
        return self.output(x0, v), state

    def step(self, u_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """One token u_t (B, D) at position state["t"] -> (y_t (B, D), state updated in place)."""
        D, t = self.d_model, state["t"]
        if t >= state["h"].shape[-1]:  # grow the filter table and the histories (doubling, <= l_max)
            cap = min(2 * state["h"].shape[-1], self.filter_fn.l_max)
            state["h"] = self.long_filter(max(cap, t + 1))  # raises past l_max
            state["hist"] = [F.pad(x, (0, state["h"].shape[-1] - x.shape[-1])) for x in state["hist"]]
        z_pre = self.in_proj(u_t)  # (B, (N+1)D)
        window = torch.cat([state["fir"], z_pre[..., None]], dim=-1)  # (B, (N+1)D, k), newest last
        z = (window * self.short_filter.weight[:, 0, :]).sum(-1) + self.short_filter.bias  # conv1d: last tap = lag 0
        state["fir"] = window[..., 1:]
        x0, *gates, v = z.split(D, dim=-1)  # each (B, D)
        bias = self.filter_fn.bias
        for o, x_i in enumerate(reversed(gates)):
            ch = slice(o * D, (o + 1) * D)
            v = v * x_i  # (B, D)
            hist = state["hist"][o]  # (B, D, capacity)
            hist[..., t] = v.float()
            taps = state["h"][ch, : t + 1].flip(-1)  # (D, t+1): lag t ... lag 0, aligned with positions 0 ... t
            v = (hist[..., : t + 1] * taps).sum(-1) + bias[ch].float() * v.float()  # (B, D)
        state["t"] = t + 1
        return self.output(x0[..., None], v.to(x0.dtype)[..., None])[:, 0], state


class _ShortConv(torch.autograd.Function):
    """Causal depthwise FIR of ``z + b_in`` (z's positions only; zeros before them):
    y[c, t] = b[c] + sum_{j <= t} w[c, k-1-j] (z[c, t-j] + b_in[c]) (conv1d's layout: the last tap is
    lag 0), by shifted multiply-adds on (B, C, L), with the backward written out the same way.

    Taking in_proj's bias ``b_in`` here saves a full pass over the (B, C, L) projection: it becomes a
    per-channel constant (plus k-1 corrected leading positions)."""

    @staticmethod
    def forward(ctx, z, w, b, b_in):  # z (B, C, L), w (C, k), b (C,), b_in (C,)
        k, L = w.shape[-1], z.shape[-1]
        m = min(k, L)
        out = torch.addcmul((b + b_in * w.sum(-1))[:, None], z, w[:, k - 1, None])  # lag 0 (+ full bias sum)
        for j in range(1, m):
            out[..., j:].addcmul_(z[..., :-j], w[:, k - 1 - j, None])  # lag j
            out[..., j - 1].sub_(b_in * w[:, : k - j].sum(-1))  # position j-1 sees only lags 0..j-1 of b_in
        if k > L:
            out[..., L - 1].sub_(b_in * w[:, : k - L].sum(-1))
        ctx.save_for_backward(z, w, b_in)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        z, w, b_in = ctx.saved_tensors
        z_dtype, z = z.dtype, z.to(g.dtype)  # under autocast z may be bf16 while the output is float32
        k, L = w.shape[-1], z.shape[-1]
        m = min(k, L)
        grad_z = grad_w = grad_b = grad_b_in = None
        if ctx.needs_input_grad[0]:
            grad_z = g * w[:, k - 1, None]
            for j in range(1, m):
                grad_z[..., :-j].addcmul_(g[..., j:], w[:, k - 1 - j, None])
            grad_z = grad_z.to(z_dtype)
        gsum = g.sum(0)  # (C, L)
        tail = [gsum[:, j:].sum(-1) for j in range(m)]  # (C,): sum of g over positions t >= j
        if ctx.needs_input_grad[1]:
            grad_w = torch.zeros_like(w)
            for j in range(m):
                grad_w[:, k - 1 - j] = torch.einsum("bct,bct->c", g[..., j:], z[..., : L - j]) + b_in * tail[j]
        if ctx.needs_input_grad[2]:
            grad_b = tail[0]
        if ctx.needs_input_grad[3]:
            grad_b_in = sum(w[:, k - 1 - j] * tail[j] for j in range(m))
        return grad_z, grad_w, grad_b, grad_b_in


class Mlp(nn.Module):
    """fc1 (D -> d_inner), tanh-approximated GELU, fc2 (d_inner -> D)."""

    def __init__(self, d_model: int, d_inner: int):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_inner)
        self.fc2 = nn.Linear(d_inner, d_model)
        self.fc2.residual_out = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))  # (B, L, D)


def _plain(*layers: nn.Module) -> bool:
    """True when every layer is a plain ``nn.Linear``: the fused fast path reads their weights directly, which
    a subclass that adds to the output (a LoRA adapter, dnalm/models/lora.py) must not be bypassed by."""
    return all(type(m) is nn.Linear for m in layers)


class HyenaBlock(nn.Module):
    """Pre-norm block: r = r + op(norm1(r)); r = r + mlp(norm2(r)), with the residual r in float32."""

    def __init__(self, config: HyenaConfig):
        super().__init__()
        D = config.d_model
        self.norm1 = nn.LayerNorm(D, eps=config.block_ln_eps)
        self.mixer = HyenaOperator(config)
        self.norm2 = nn.LayerNorm(D, eps=config.block_ln_eps)
        self.mlp = Mlp(D, config.d_inner)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = x.float()  # (B, L, D) residual stream in float32, whatever the weights' dtype
        r = r + self.dropout(self.mixer(self.norm1(r.to(self.norm1.weight.dtype))))
        r = r + self.dropout(self.mlp(self.norm2(r.to(self.norm2.weight.dtype))))
        return r  # (B, L, D) float32

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Forward over a prompt x (B, L, D) -> (float32 residual (B, L, D), the mixer's state); no dropout."""
        r = x.float()
        y, state = self.mixer.prefill(self.norm1(r.to(self.norm1.weight.dtype)))
        r = r + y
        return r + self.mlp(self.norm2(r.to(self.norm2.weight.dtype))), state

    def forward_prefix(self, x: torch.Tensor, total_len: int) -> tuple[torch.Tensor, dict]:
        """Prefix x (1, p, D) -> (float32 residual (1, p, D), the mixer's prefix state); no dropout."""
        r = x.float()
        y, state = self.mixer.forward_prefix(self.norm1(r.to(self.norm1.weight.dtype)), total_len)
        r = r + y
        return r + self.mlp(self.norm2(r.to(self.norm2.weight.dtype))), state

    def forward_from(self, x: torch.Tensor, state: dict) -> torch.Tensor:
        """The positions after a shared prefix, x (B, s, D) -> float32 residual (B, s, D)."""
        r = x.float()
        r = r + self.mixer.forward_from(self.norm1(r.to(self.norm1.weight.dtype)), state)
        return r + self.mlp(self.norm2(r.to(self.norm2.weight.dtype)))

    def step(self, x_t: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """One token x_t (B, D) -> (float32 residual (B, D), state)."""
        r = x_t.float()
        y, state = self.mixer.step(self.norm1(r.to(self.norm1.weight.dtype)), state)
        r = r + y
        return r + self.mlp(self.norm2(r.to(self.norm2.weight.dtype))), state


class HyenaBackbone(nn.Module):
    """A stack of ``n_layer`` Hyena blocks; returns the hidden state before the final norm."""

    def __init__(self, config: HyenaConfig):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(HyenaBlock(config) for _ in range(config.n_layer))
        for layer in self.layers:  # DNALM_COMPILE=1: torch.compile each block (off by default; dnalm.ops.compile)
            if compile_enabled():
                layer.forward = maybe_compile(layer.forward)
        gpt2_init(self, config.n_layer)  # Linear N(0, 0.02), out_proj/fc2 scaled, biases 0 (as the reference)
        for layer in self.layers:  # the long-conv skip starts at N(0, 1), as the reference
            nn.init.normal_(layer.mixer.filter_fn.bias)

    def forward(self, x: torch.Tensor, output_hidden_states: bool = False) -> BackboneOutput:
        """x (B, L, D) embeddings -> BackboneOutput(hidden (B, L, D) float32, [after each block])."""
        if x.shape[1] > self.config.l_max:
            raise ValueError(f"input of {x.shape[1]} tokens exceeds this Hyena model's l_max={self.config.l_max}")
        states = []
        h = x
        for layer in self.layers:
            h = layer(h)  # (B, L, D)
            if output_hidden_states:
                states.append(h)
        return BackboneOutput(hidden=h, hidden_states=states if output_hidden_states else None)

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
        """Forward over a prompt x (B, L, D) -> (hidden (B, L, D), one state per block), for generation."""
        if x.shape[1] > self.config.l_max:
            raise ValueError(f"input of {x.shape[1]} tokens exceeds this Hyena model's l_max={self.config.l_max}")
        return prefill_layers(self.layers, x)

    def step(self, x_t: torch.Tensor, states: list[dict]) -> tuple[torch.Tensor, list[dict]]:
        """One token x_t (B, D) -> (hidden (B, D), states updated in place)."""
        return step_layers(self.layers, x_t, states)

    def forward_prefix(self, x: torch.Tensor, total_len: int) -> tuple[torch.Tensor, list[dict]]:
        """Prefix embeddings x (1, p, D) of rows ``total_len`` long -> (hidden, one state per block)."""
        if total_len > self.config.l_max:
            raise ValueError(f"input of {total_len} tokens exceeds this Hyena model's l_max={self.config.l_max}")
        states = []
        for layer in self.layers:
            x, state = layer.forward_prefix(x, total_len)
            states.append(state)
        return x, states

    def forward_from(self, x: torch.Tensor, states: list[dict]) -> torch.Tensor:
        """Embeddings after the shared prefix, x (B, s, D) -> hidden (B, s, D)."""
        for layer, state in zip(self.layers, states):
            x = layer.forward_from(x, state)
        return x


# ------------------------------------------------------------------------------------------ the spec


def count_params(cfg: HyenaConfig) -> int:
    """Backbone + final LayerNorm parameters (the shell adds the embedding and an untied head)."""
    d, N, fo, e = cfg.d_model, cfg.order, cfg.filter_order, cfg.emb_dim
    k = cfg.short_filter_order
    filt = (e * fo + fo) + fo + cfg.num_inner_mlps * (fo * fo + fo) + fo * d * (N - 1)  # MLP, sin freq, head
    mixer = (d * (N + 1) * d + (N + 1) * d) + (N + 1) * d * (k + 1) + filt + d * (N - 1) + (d * d + d)
    mlp = d * cfg.d_inner + cfg.d_inner + cfg.d_inner * d + d
    layer = 2 * d + mixer + 2 * d + mlp  # two LayerNorms (weight + bias)
    return cfg.n_layer * layer + 2 * d  # final LayerNorm


def flops(cfg: HyenaConfig, L: int, B: int, causal_savings: bool = False) -> FlopTerms:
    """Hyena operator of order N, then a GELU MLP, per layer (forward FLOPs per token)."""
    d, N, fo = cfg.d_model, cfg.order, cfg.filter_order
    out = FlopTerms()
    for _ in range(cfg.n_layer):
        out.layer_kinds.append("long_conv")
        out.add("in_proj", 2 * d * (N + 1) * d)  # D -> (N+1)D
        out.add("short_conv", 2 * cfg.short_filter_order * (N + 1) * d)  # depthwise, k taps
        # implicit filter MLP, evaluated at the first L of l_max positions, once per batch
        mlp = cfg.emb_dim * fo + cfg.num_inner_mlps * fo * fo + fo * d * (N - 1)
        out.add("filter_mlp", 2 * mlp / B)
        out.add_fft(fft_conv_flops(d * (N - 1), L, B))
        out.add("out_proj", 2 * d * d)
        out.add("mlp", 4 * d * cfg.d_inner)  # D -> d_inner -> D
    out.add("logits", 2 * d * cfg.vocab_size)
    return out


def activations(cfg: HyenaConfig) -> ActivationShape:
    """GELU MLP (2 saved hidden tensors), LayerNorm; the implicit filter MLP saves its hidden layers."""
    fo = cfg.filter_order
    filt = 3 * fo * (cfg.num_inner_mlps + 1) + cfg.d_model * (cfg.order - 1)
    return ActivationShape(
        layers=[LayerSpec("long_conv", filter_mlp=filt, mlp_saved=2) for _ in range(cfg.n_layer)],
        n_layer=cfg.n_layer,
        mlp_hidden=int(cfg.d_inner),
        mlp_gated=False,
        largest_layer_params=layer_params_estimate(cfg.d_model, int(cfg.d_inner), False),
        norm="layer",
        order=cfg.order,
    )


def _hyenadna(n_layer: int, d_model: int, context: int):
    """The published HyenaDNA sizes (Nguyen et al. 2023, Table A.1): l_max = context + 2, as the released
    checkpoints use (room for the tokenizer's two special tokens)."""
    return lambda: HyenaConfig(n_layer=n_layer, d_model=d_model, l_max=context + 2)


SPEC = ModelSpec(
    family="hyena",
    config=HyenaConfig,
    backbone=HyenaBackbone,
    final_norm=lambda cfg: nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps),
    count_params=count_params,
    flops=flops,
    activations=activations,
    length_field="l_max",
    # the implicit filter (its MLP, Sin frequency and skip bias) gets no weight decay, as in HyenaDNA's
    # training code (the filter's parameters are registered with weight_decay 0)
    no_weight_decay=lambda name: ".filter_fn." in f".{name}",
    presets={
        "hyenadna-tiny-1k": _hyenadna(2, 128, 1024),
        "hyenadna-tiny-1k-d256": _hyenadna(2, 256, 1024),
        "hyenadna-small-32k": _hyenadna(4, 256, 32768),
        "hyenadna-medium-160k": _hyenadna(8, 256, 160000),
        "hyenadna-medium-450k": _hyenadna(8, 256, 450000),
        "hyenadna-large-1m": _hyenadna(8, 256, 1_000_000),
    },
    formats=("hyenadna-hf",),
    prefix_sharing=True,
)
