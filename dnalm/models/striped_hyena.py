"""StripedHyena (Evo 1) and StripedHyena 2 (Evo 2): gated-convolution Hyena blocks striped with attention.

This file computes exactly what the released Evo 1 (stripedhyena 1.1_fix) and Evo 2 (vortex) models
compute, in their parameter layout up to lossless reorderings; ``dnalm/formats/evo.py`` reads and writes
their files and tests/test_evo_parity.py checks it against the reference engines' float32 outputs.
Every depth holds one pre-norm residual block (docs/architectures.md §2-3)::

    x = x + mixer(RMSNorm(x))             mixer: a Hyena operator or RoPE attention
    x = x + GatedMLP(RMSNorm(x))          l3(act(l1 z) * l2 z)
    RMSNorm(x) = scale * x / (rms(x) + eps)      eps outside the root, as Evo

The Hyena operator is one featurizer followed by a per-kind long convolution::

    z = short_fir(in_proj(x))             D -> 3D, then a depthwise causal FIR of length 3 over the 3D channels
    x2, x1, v = split_streams(z)          version 2: interleaved (rows 3c, 3c+1, 3c+2, Evo 2);
                                          version 1: per head [x2 | x1 | v] (Evo 1 column_split_hyena)
    u = x1 * v
    y = out_proj(x2 * conv(u))

    kind     conv(u)                                     filter h[d, t] (t = 0, 1, ...)
    "hyena"  h * u + D * u   (version 1, Evo)            Re sum_n R[d,n] p[d,n]^t, S complex modes as (re, im) pairs
    "se"     h * u           (version 2, hcs)            explicit, length se_len (7), one filter per channel group
    "mr"     h * u + D * u   (version 2, hcm)            explicit, length mr_len (128), grouped; the stored filter
                                                         is the final one (init: a per-group decay)
    "li"     h * u + D * u   (version 2, hcl)            sum_n R[d,n] exp(log_poles[d,n] t), log_poles < 0

Groups expand to channels by repetition (channel d uses group d // (D/G)).

Filter convention (docs/architectures.md §7.1): ``h[..., j]`` is the tap for lag j, so h[..., 0] multiplies the current
input, as in the FFT path. ``F.conv1d`` is a cross-correlation (its LAST weight multiplies the current input),
so short FIRs are flipped before conv1d and the recurrent FIR step multiplies the newest input by h[0].
Modal poles, residues, their powers and the FFT run in float32 (complex64) whatever the model dtype.

Generation keeps a fixed-size state per Hyena layer, whatever the position:

- short FIR: the last (k-1) inputs of the featurizer FIR, (B, 3D, k-1);
- SE / MR: the last (len-1) values of u, (B, D, len-1);
- modal ("hyena", "li"): s (B, D, S) with s <- p*s + u_t and output Re sum_n R*s + D*u_t.

``prefill`` computes the modal state at the prompt's end, s_n = sum_k p_n^(L-1-k) u_k, without a loop over
the prompt: it is the convolution of u with p_n^t read at the last position, i.e. one dot product per
(channel, mode), done as one vectorised two-level contraction (chunks of ~sqrt(L)). That is exact and
costs O(L*S) per channel, where materialising the whole per-mode FFT convolution would cost O(S*L log L)
to keep one of its L outputs. Attention layers keep a KV cache (dnalm.models.attention).

Biases follow the released models: version 1 (Evo 1: qkv_proj_bias, mha_out_proj_bias, short_filter_bias
all true) has biases on every projection and on the short FIR; version 2 (Evo 2: qkv_proj_bias false,
mha_out_proj_bias and hyena_out_proj_bias true, short_filter_bias false) on the Hyena and attention
out_proj only. The MLP is exact-GELU-gated in version 1, and in version 2 GELU in layer 0 and the identity
(a bilinear GLU) elsewhere. RoPE: frequencies recomputed in float32 (version 1) or their bf16 rounding
(version 2, the buffer Evo 2 files store); ``rope_precision`` "float64" is dnalm's older rule. Evo 2's
Hyena input projections can run through emulated FP8 (:func:`fp8_e4m3`, ``fp8_input_projections``).
Checkpoints written before these conventions are converted on load (:func:`upgrade`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dnalm.config import ConfigError, _positive, _round_up
from dnalm.models.attention import ROPE_PRECISIONS, CausalSelfAttention, extend_context
from dnalm.models.lm import gpt2_init, prefill_layers, step_layers
from dnalm.models.spec import (
    ActivationShape,
    BackboneOutput,
    FlopTerms,
    LayerSpec,
    ModelSpec,
    attention_block_params,
    attention_layer_flops,
    fft_conv_flops,
    gated_mlp_flops,
    layer_params_estimate,
)
from dnalm.ops.fftconv import fft_long_conv

__all__ = [
    "StripedHyenaBackbone",
    "StripedHyenaBlock",
    "HyenaMixer",
    "GatedMLP",
    "HyenaState",
    "modal_filter",
    "modal_state",
    "fir_step",
]


@dataclass
class StripedHyenaConfig:
    """StripedHyena (Evo 1, ``version`` 1) and StripedHyena 2 (Evo 2, ``version`` 2): docs/architectures.md §2-3.

    ``layers`` names the block at each depth (n_layer names). Version 1: "hyena" (gated convolution with
    the modal pole/residue long filter) and "attn" (RoPE attention). Version 2: "se" (Evo 2's hcs: explicit
    length ``se_len`` grouped FIR), "mr" (hcm: explicit length ``mr_len`` grouped filter), "li" (hcl:
    implicit real modal filter, full length) and "attn". Left out, it is derived: version 1 puts attention
    at every 8th layer from layer 8 (Evo 1 7B: 8, 16, 24), version 2 repeats SE, MR, LI, MHA, SE, MR, LI
    (Evo 2 7B). The math and the parameter layout are the released models' (module docstring);
    ``dnalm.formats.evo`` reads and writes their files.
    """

    family: Literal["striped_hyena"] = "striped_hyena"
    version: Literal[1, 2] = 1
    n_layer: int = 4
    d_model: int = 128
    n_head: int = 4
    max_len: int = 1026
    vocab_size: int = 16
    layers: list[str] | None = None  # block name per depth; None = the published pattern (see above)
    mlp_hidden: int | None = None  # gated-MLP width; None means 8/3 * d_model rounded up to a multiple of 64
    state_size: int | None = None  # modes per channel of modal filters; None = 8 (version 1) or 16 (version 2)
    short_filter_len: int = 3  # depthwise FIR on the 3D projections
    se_len: int = 7
    mr_len: int = 128
    filter_groups: int | None = None  # SE filter groups (and MR's unless mr_groups); None = d_model // 16
    mr_groups: int | None = None  # MR filter groups; None = filter_groups (Evo 2 releases: equal)
    rope_base: float = 10000.0
    rope_interp: float = 1.0  # linear position interpolation: positions are divided by this
    # RoPE arithmetic (dnalm.models.attention.rope_angles): None = the released engines' rule, "float32"
    # (Evo 1, frequencies recomputed) for version 1, "bfloat16" (Evo 2, the bf16-rounded stored buffer) for
    # version 2; "float64" is dnalm's long-context rule (checkpoints written before the Evo conventions)
    rope_precision: str | None = None
    norm_eps: float = 1e-6  # RMSNorm: x / (rms(x) + eps), eps outside the root as in Evo
    tie_embeddings: bool = True
    conventions: str = "evo"  # parameter layout; older dnalm checkpoints (no such field) are converted on load
    # Hyena input projections through emulated FP8 E4M3 (Transformer Engine forward casts, per-tensor
    # scaling), as released Evo 2 configs ask (use_fp8_input_projections); see fp8_e4m3
    fp8_input_projections: bool = False

    def __post_init__(self) -> None:
        if self.mlp_hidden is None:
            self.mlp_hidden = _round_up(8 * self.d_model / 3, 64)
        if self.state_size is None:
            self.state_size = 8 if self.version == 1 else 16
        if self.filter_groups is None:
            self.filter_groups = max(1, self.d_model // 16)
        if self.mr_groups is None:
            self.mr_groups = self.filter_groups
        if self.rope_precision is None:
            self.rope_precision = "float32" if self.version == 1 else "bfloat16"
        _positive(self, "n_layer", "d_model", "n_head", "max_len", "vocab_size", "mlp_hidden", "state_size")
        _positive(self, "short_filter_len", "se_len", "mr_len", "filter_groups", "mr_groups", "rope_base", "rope_interp")
        if self.conventions != "evo":
            raise ConfigError(f"model.conventions must be 'evo' (got {self.conventions!r})")
        if self.rope_precision not in ROPE_PRECISIONS:
            raise ConfigError(f"model.rope_precision must be one of {list(ROPE_PRECISIONS)} (got {self.rope_precision!r})")
        if self.layers is None:
            if self.version == 1:
                self.layers = ["attn" if i and i % 8 == 0 else "hyena" for i in range(self.n_layer)]
            else:
                self.layers = [("se", "mr", "li", "attn", "se", "mr", "li")[i % 7] for i in range(self.n_layer)]
        allowed = ("hyena", "attn") if self.version == 1 else ("se", "mr", "li", "attn")
        if len(self.layers) != self.n_layer:
            raise ConfigError(f"model.layers has {len(self.layers)} names but model.n_layer is {self.n_layer}")
        for i, kind in enumerate(self.layers):
            if kind not in allowed:
                raise ConfigError(f"model.layers[{i}] is {kind!r}; version {self.version} allows {list(allowed)}")
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ConfigError(
                f"model.d_model ({self.d_model}) must split into n_head ({self.n_head}) heads of even size"
            )
        for name in ("filter_groups", "mr_groups"):
            if self.d_model % getattr(self, name):
                raise ConfigError(f"model.d_model ({self.d_model}) must be divisible by {name} ({getattr(self, name)})")


# ------------------------------------------------------------------------------------ filter helpers


def _tail(z: torch.Tensor, n: int) -> torch.Tensor:
    """The last ``n`` positions of z (B, C, L), zero-padded on the left when L < n: (B, C, n)."""
    if n == 0:
        return z[..., :0].clone()
    return F.pad(z, (max(0, n - z.shape[-1]), 0))[..., -n:].clone()


def fir_step(
    x_t: torch.Tensor, hist: torch.Tensor, h: torch.Tensor, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of a causal FIR: x_t (B, C), history of the last k-1 inputs (B, C, k-1) oldest first,
    taps h (C, k) with h[:, 0] the lag-0 tap. Returns (y_t (B, C), the new history)."""
    window = torch.cat([hist, x_t[..., None]], dim=-1)  # (B, C, k), newest last
    y = (window * h.flip(-1)).sum(-1)  # newest input meets h[:, 0]
    if bias is not None:
        y = y + bias
    return y, window[..., 1:]


def _power_table(log_p: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """p^e = exp(log_p * e) for log_p (C, S) and exponents (n,): (C, S, n) in complex64 / float32.

    Computed in float64 and rounded once: at t ~ 1e5 a float32 product log_p * t is already off by
    ~1e-3 rad in phase (docs/architectures.md §7.3); the tables are small (n ~ sqrt(L)), so this costs nothing.
    """
    wide = torch.complex128 if log_p.is_complex() else torch.float64
    out = torch.exp(log_p.to(wide)[..., None] * exponents.to(torch.float64))
    return out.to(torch.complex64 if log_p.is_complex() else torch.float32)


def modal_filter(log_p: torch.Tensor, residues: torch.Tensor, L: int) -> torch.Tensor:
    """h[c, t] = Re sum_n R[c, n] exp(log_p[c, n] t) for t < L: (C, L) float32, also under autocast.

    ``log_p`` (C, S) is complex (log of the poles, version 1) or real (lambda, Hyena-LI); ``residues`` has
    the same shape and kind. Why not ``exp(log_p * t)`` for every t: that is C*S*L transcendental calls
    (complex exp is slow on CPU). Writing t = j*c + i with c ~ sqrt(L) gives
    h[c, j*c + i] = Re sum_n (R p^(j*c))[n] * (p^i)[n], one batched (m, S) @ (S, c) matrix product per
    channel on two small power tables.
    """
    C, S = log_p.shape
    c = max(1, math.isqrt(max(L - 1, 0)) + 1)  # ceil(sqrt(L))
    m = -(-L // c)
    dev = log_p.device
    with torch.autocast(device_type=dev.type, enabled=False):
        p_in = _power_table(log_p, torch.arange(c, device=dev))  # (C, S, c): p^i
        p_out = _power_table(log_p, c * torch.arange(m, device=dev))  # (C, S, m): p^(j c)
        a = (residues[..., None] * p_out).transpose(1, 2)  # (C, m, S): R p^(j c)
        if a.is_complex():
            h = torch.bmm(a.real, p_in.real) - torch.bmm(a.imag, p_in.imag)  # (C, m, c): Re(a @ p_in)
        else:
            h = torch.bmm(a, p_in)  # (C, m, c)
    return h.reshape(C, m * c)[:, :L]


def modal_state(u: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """Modal state after reading u (B, C, L): s[b, c, n] = sum_k p[c, n]^(L-1-k) u[b, c, k], p = exp(log_p).

    This is the convolution of u with p^t read at the last position (docs/architectures.md §2), computed as one
    dot product per (channel, mode). To keep the power tables small at long L, positions are split into
    m chunks of c ~ sqrt(L): k = j*c + i needs p^((m-1-j)*c) * p^(c-1-i), so two contractions with a
    (C, S, c) and a (C, S, m) table suffice. Returns (B, C, S), complex64 if log_p is complex, else float32.
    """
    B, C, L = u.shape
    c = max(1, math.isqrt(max(L - 1, 0)) + 1)  # ceil(sqrt(L)) for L > 0
    m = -(-L // c)
    u = F.pad(u.float(), (m * c - L, 0)).reshape(B, C, m, c)  # left zeros add nothing to s
    dev = u.device
    with torch.autocast(device_type=dev.type, enabled=False):
        p_in = _power_table(log_p, torch.arange(c - 1, -1, -1, device=dev))  # (C, S, c): p^(c-1-i)
        p_out = _power_table(log_p, c * torch.arange(m - 1, -1, -1, device=dev))  # (C, S, m): p^((m-1-j) c)
        if p_in.is_complex():
            local = torch.complex(
                torch.einsum("bcmi,csi->bcms", u, p_in.real), torch.einsum("bcmi,csi->bcms", u, p_in.imag)
            )  # (B, C, m, S)
        else:
            local = torch.einsum("bcmi,csi->bcms", u, p_in)  # (B, C, m, S)
        return torch.einsum("bcms,csm->bcs", local, p_out)  # (B, C, S)


E4M3_MAX = 448.0  # largest finite float8_e4m3fn


def fp8_e4m3(x: torch.Tensor, dims: tuple[int, ...] | None = None) -> torch.Tensor:
    """``x`` quantised to FP8 E4M3 and back, with the scale ``448 / amax(|x|)`` (per tensor, or per slice
    over ``dims``): Transformer Engine's forward cast with current scaling (margin 0). Values keep x's
    dtype; the gradient passes straight through (training is possible, the cast is not differentiated).
    """
    with torch.no_grad():
        x32 = x.detach().float()
        amax = x32.abs().amax(dim=dims, keepdim=True) if dims is not None else x32.abs().amax()
        scale = torch.where(amax > 0, E4M3_MAX / amax, torch.ones_like(amax))
        q = ((x32 * scale).to(torch.float8_e4m3fn).float() / scale).to(x.dtype)
    return x + (q - x).detach() if x.requires_grad else q


def set_fp8_input_projections(model: nn.Module, on: bool) -> None:
    """Switch the emulated FP8 input projections of every Hyena mixer of ``model`` (and its config)."""
    if hasattr(model, "config") and hasattr(model.config, "fp8_input_projections"):
        model.config.fp8_input_projections = bool(on)
    for m in model.modules():
        if isinstance(m, HyenaMixer):
            m.fp8 = bool(on)


def _log_uniform(shape: tuple[int, ...], lo: float, hi: float) -> torch.Tensor:
    return torch.exp(torch.empty(shape).uniform_(math.log(lo), math.log(hi)))


# ----------------------------------------------------------------------------------------- modules


@dataclass
class HyenaState:
    """Generation state of one Hyena mixer: fixed size, independent of the position."""

    fir: torch.Tensor  # (B, 3D, k-1) last inputs of the featurizer FIR
    inner: torch.Tensor  # (B, D, len-1) last u for SE/MR, or the modal state (B, D, S)
    coef: tuple[torch.Tensor, ...]  # filter coefficients frozen at prefill (taps, or poles and residues)


class RMSNorm(nn.Module):
    """Evo's RMSNorm: ``weight * x / (sqrt(mean(x^2)) + eps)``, the eps added to the RMS outside the root
    (vortex and stripedhyena write it ``x / (||x||_2 * D^-1/2 + eps)``); computed in float32."""

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        rms = torch.linalg.vector_norm(x32, dim=-1, keepdim=True) * x.shape[-1] ** -0.5  # (..., 1)
        return (self.weight.float() * (x32 / (rms + self.eps))).to(x.dtype)


class GatedMLP(nn.Module):
    """``l3(act(l1 z) * l2 z)`` without biases; ``act`` is "gelu" (exact, erf) or "identity" (a bilinear GLU)."""

    def __init__(self, d_model: int, hidden: int, act: str = "gelu"):
        super().__init__()
        self.act = act
        self.l1 = nn.Linear(d_model, hidden, bias=False)
        self.l2 = nn.Linear(d_model, hidden, bias=False)
        self.l3 = nn.Linear(hidden, d_model, bias=False)
        self.l3.residual_out = True

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        a = self.l1(z)  # (..., hidden)
        if self.act == "gelu":
            a = F.gelu(a)
        return self.l3(a * self.l2(z))  # (..., D)


def split_streams(z: torch.Tensor, version: int, n_head: int, dim: int = 1) -> tuple[torch.Tensor, ...]:
    """(x2, x1, v) from the featurized 3D channels along ``dim``, in the released layouts.

    Version 2 (Evo 2, ``interleave``): channel c of x2, x1, v is row 3c, 3c+1, 3c+2. Version 1 (Evo 1,
    ``column_split_hyena``): per head h, rows h*3*hd + [0, hd), + [hd, 2hd), + [2hd, 3hd) hold x2, x1, v.
    """
    D3 = z.shape[dim]
    zm = z.movedim(dim, -1)  # (..., 3D)
    if version == 2:
        parts = zm.unflatten(-1, (D3 // 3, 3)).unbind(-1)  # (..., D) each
    else:
        hd = D3 // (3 * n_head)
        parts = tuple(p.flatten(-2) for p in zm.unflatten(-1, (n_head, 3, hd)).unbind(-2))
    return tuple(p.movedim(-1, dim) for p in parts)


class HyenaMixer(nn.Module):
    """The Hyena operator of one block; ``kind`` is "hyena" (version 1) or "se", "mr", "li" (version 2).

    Stages (so a chunked long path can call them one at a time): :meth:`featurize` (in_proj + short FIR,
    (B, 3D, L)), :func:`split_streams`, :meth:`long_conv` on u = x1 * v, :meth:`output` (gate + out_proj).
    """

    def __init__(self, kind: str, config: StripedHyenaConfig):
        super().__init__()
        D, S = config.d_model, config.state_size
        v1 = config.version == 1
        self.kind, self.d_model, self.version, self.n_head = kind, D, config.version, config.n_head
        self.fp8 = bool(config.fp8_input_projections)  # emulated FP8 E4M3 in_proj (Evo 2 released configs)
        self.groups = config.mr_groups if kind == "mr" else config.filter_groups
        G = self.groups
        self.in_proj = nn.Linear(D, 3 * D, bias=v1)
        k = config.short_filter_len
        bound = 1 / math.sqrt(k)  # nn.Conv1d's default scale
        self.short_filter = nn.Parameter(torch.empty(3 * D, k).uniform_(-bound, bound))  # (3D, k), lag 0 first
        self.short_bias = nn.Parameter(torch.zeros(3 * D)) if v1 else None
        self.out_proj = nn.Linear(D, D, bias=True)
        self.out_proj.residual_out = True
        self.skip = None  # the D term: + skip * u
        if kind in ("hyena", "li", "mr"):
            self.skip = nn.Parameter(torch.zeros(D))
        if kind == "hyena":
            # poles p = exp(-rate + i*theta): decay timescales 2..1000 tokens, all frequencies; residues
            # scaled by sqrt(1 - |p|^2) so that every channel starts near unit gain (our init; the released
            # code leaves its init as a TODO)
            rate, theta = _log_uniform((D, S), 1e-3, 0.5), torch.rand(D, S) * math.pi
            p = torch.polar(torch.exp(-rate), theta)  # (D, S) complex
            r = torch.randn(D, S, dtype=torch.complex64) * torch.sqrt(1 - p.abs() ** 2) / math.sqrt(S)
            self.poles = nn.Parameter(torch.view_as_real(p).contiguous())  # (D, S, 2) float32 (re, im)
            self.residues = nn.Parameter(torch.view_as_real(r).contiguous())  # (D, S, 2)
        elif kind == "li":
            rate = _log_uniform((D, S), 1e-3, 0.5)
            self.log_poles = nn.Parameter(-rate)  # (D, S): h[t] = sum_n R exp(log_poles t), log_poles < 0
            self.residues = nn.Parameter(torch.randn(D, S) * torch.sqrt(1 - torch.exp(-2 * rate)) / math.sqrt(S))
        elif kind == "se":
            self.h = nn.Parameter(torch.randn(G, config.se_len) / math.sqrt(config.se_len))  # (G, se_len)
        elif kind == "mr":
            # the final explicit filter, as Evo 2 releases store it; initialised with a per-group decay
            # exp(-r_g t / (mr_len - 1)), r_g log-spaced over [1e-2, 1e2], at unit gain per group
            n = config.mr_len
            decay = torch.exp(-torch.logspace(-2, 2, G)[:, None] * torch.linspace(0, 1, n))  # (G, n)
            self.h = nn.Parameter(torch.randn(G, n) * decay / decay.norm(dim=-1, keepdim=True))  # (G, mr_len)
        else:
            raise ValueError(f"unknown Hyena block kind {kind!r}")

    # ---- filters (float32, lag 0 first)

    def modal_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(log of the poles, residues), each (D, S): complex64 for "hyena", float32 for "li"."""
        if self.kind == "hyena":
            p = torch.complex(self.poles[..., 0].float(), self.poles[..., 1].float())  # (D, S)
            r = torch.complex(self.residues[..., 0].float(), self.residues[..., 1].float())
            return torch.log(p), r
        if self.kind == "li":
            return self.log_poles.float(), self.residues.float()
        raise ValueError(f"{self.kind} has no modal filter")

    def long_filter(self, L: int) -> torch.Tensor:
        """The per-channel filter (D, L_h), h[:, 0] the lag-0 tap: L_h = L for modal kinds, else the FIR length."""
        if self.kind in ("hyena", "li"):
            return modal_filter(*self.modal_params(), L)  # (D, L)
        return self.h.float().repeat_interleave(self.d_model // self.groups, dim=0)  # (D, len): d -> group d // (D/G)

    # ---- parallel path, stage by stage

    def featurize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, L, D) -> (z (B, 3D, L) after the depthwise causal short FIR, z_pre (B, 3D, L) before it)."""
        z_pre = self._in_proj(x, (1, 2)).transpose(1, 2)  # (B, 3D, L)
        k = self.short_filter.shape[-1]
        w = self.short_filter.flip(-1)[:, None, :].to(z_pre.dtype)  # (3D, 1, k): conv1d wants lag 0 last
        b = None if self.short_bias is None else self.short_bias.to(z_pre.dtype)
        z = F.conv1d(z_pre, w, b, padding=k - 1, groups=z_pre.shape[1])[..., : z_pre.shape[-1]]  # (B, 3D, L)
        return z, z_pre

    def _in_proj(self, x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        """in_proj(x), through emulated FP8 when ``self.fp8``: the input scaled per sequence (``dims``; what
        Transformer Engine does for a batch of one), the weight per tensor."""
        if not self.fp8:
            return self.in_proj(x)
        w, b = self.in_proj.weight, self.in_proj.bias
        y = F.linear(fp8_e4m3(x, dims), fp8_e4m3(w), b)
        adapter = getattr(self.in_proj, "adapter_out", None)  # LoRA: the low-rank branch stays unquantised
        return y if adapter is None else y + adapter(x).to(y.dtype)

    def long_conv(self, u: torch.Tensor) -> torch.Tensor:
        """conv(u) for u (B, D, L) per the block kind, D term included; (B, D, L)."""
        L = u.shape[-1]
        h = self.long_filter(L)  # (D, L_h) float32
        if self.kind == "se":  # 7 taps: a direct depthwise convolution beats an FFT
            w = h.flip(-1)[:, None, :].to(u.dtype)  # (D, 1, k)
            return F.conv1d(u, w, padding=h.shape[-1] - 1, groups=self.d_model)[..., :L]
        return fft_long_conv(u, h, self.skip)  # float32 inside, u's dtype out

    def output(self, x2: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Gate and project: x2, y (B, D, L) -> out_proj(x2 * y) (B, L, D)."""
        return self.out_proj((x2 * y).transpose(1, 2))

    def _mix(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        z, z_pre = self.featurize(x)  # (B, 3D, L)
        x2, x1, v = split_streams(z, self.version, self.n_head)  # (B, D, L) each
        u = x1 * v  # (B, D, L)
        return self.output(x2, self.long_conv(u)), z_pre, u, x2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, D) -> (B, L, D)."""
        return self._mix(x)[0]

    # ---- generation

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, HyenaState]:
        """Parallel forward over a prompt x (B, L, D) plus the state at its end: (y (B, L, D), HyenaState)."""
        y, z_pre, u, _ = self._mix(x)
        fir = _tail(z_pre, self.short_filter.shape[-1] - 1)  # (B, 3D, k-1)
        if self.kind in ("hyena", "li"):
            log_p, r = self.modal_params()
            inner = modal_state(u, log_p)  # (B, D, S)
            coef = (torch.exp(log_p), r)  # poles (D, S), residues (D, S)
        else:
            h = self.long_filter(u.shape[-1])  # (D, len)
            inner = _tail(u.float(), h.shape[-1] - 1)  # (B, D, len-1)
            coef = (h,)
        return y, HyenaState(fir, inner, coef)

    def step(self, x_t: torch.Tensor, state: HyenaState) -> tuple[torch.Tensor, HyenaState]:
        """One token x_t (B, D) -> (y_t (B, D), state); the state is updated in place."""
        z_pre = self._in_proj(x_t, (1,))  # (B, 3D); FP8 scales per token here, so FP8 steps only approximate forward
        bias = None if self.short_bias is None else self.short_bias.to(z_pre.dtype)
        z, state.fir = fir_step(z_pre, state.fir, self.short_filter.to(z_pre.dtype), bias)  # (B, 3D)
        x2, x1, v = split_streams(z, self.version, self.n_head, dim=-1)  # (B, D) each
        u = (x1 * v).float()  # (B, D)
        if self.kind in ("hyena", "li"):
            p, r = state.coef
            state.inner = p * state.inner + u[..., None]  # (B, D, S): s <- p*s + u_t
            y = (r * state.inner).sum(-1)  # (B, D)
            y = y.real if y.is_complex() else y
        else:
            y, state.inner = fir_step(u, state.inner, state.coef[0])  # (B, D)
        if self.skip is not None:
            y = y + self.skip.float() * u
        return self.out_proj((x2 * y.to(x2.dtype))), state


class StripedHyenaBlock(nn.Module):
    """Pre-norm residual block: ``x + mixer(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(self, kind: str, config: StripedHyenaConfig, layer_idx: int):
        super().__init__()
        D = config.d_model
        v1 = config.version == 1
        self.kind = kind
        self.norm1 = RMSNorm(D, eps=config.norm_eps)
        if kind == "attn":  # Evo 1: qkv and out_proj biases; Evo 2: out_proj bias only
            self.mixer: nn.Module = CausalSelfAttention(
                D, config.n_head, config.max_len, config.rope_base, config.rope_interp, bias=v1, out_bias=True,
                rope_precision=config.rope_precision,
            )
        else:
            self.mixer = HyenaMixer(kind, config)
        self.norm2 = RMSNorm(D, eps=config.norm_eps)
        act = "gelu" if v1 or layer_idx == 0 else "identity"  # Evo 2 (evo2_style_activations): GELU in block 0
        self.mlp = GatedMLP(D, config.mlp_hidden, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x))  # (B, L, D), float32 residual stream
        return x + self.mlp(self.norm2(x))

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        y, state = self.mixer.prefill(self.norm1(x))
        x = x + y
        return x + self.mlp(self.norm2(x)), state

    def step(self, x_t: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        y, state = self.mixer.step(self.norm1(x_t), state)
        x_t = x_t + y  # (B, D)
        return x_t + self.mlp(self.norm2(x_t)), state


class StripedHyenaBackbone(nn.Module):
    """The blocks named by ``config.layers``; returns the hidden state before the shell's final RMSNorm."""

    def __init__(self, config: StripedHyenaConfig):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(StripedHyenaBlock(kind, config, i) for i, kind in enumerate(config.layers))
        gpt2_init(self, config.n_layer)  # Linear layers only; filters keep their own init

    def forward(self, x: torch.Tensor, output_hidden_states: bool = False) -> BackboneOutput:
        """x (B, L, D) -> BackboneOutput(hidden (B, L, D), hidden states after each block on request)."""
        states = [] if output_hidden_states else None
        for block in self.layers:
            x = block(x)
            if states is not None:
                states.append(x)
        return BackboneOutput(x, states)

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, list[Any]]:
        """Forward over a prompt x (B, L, D); returns (hidden (B, L, D), one state per block)."""
        return prefill_layers(self.layers, x)

    def step(self, x_t: torch.Tensor, states: list[Any]) -> tuple[torch.Tensor, list[Any]]:
        """One token x_t (B, D) -> (hidden (B, D), states); states are updated in place."""
        return step_layers(self.layers, x_t, states)


# ------------------------------------------------------------------------------------------ the spec


def count_params(cfg: StripedHyenaConfig) -> int:
    """Backbone + final RMSNorm parameters (the shell adds the embedding and an untied head)."""
    d, S, G, k = cfg.d_model, cfg.state_size, cfg.filter_groups, cfg.short_filter_len
    v1 = cfg.version == 1
    total = 0
    for kind in cfg.layers:
        layer = 2 * d + 3 * d * cfg.mlp_hidden  # two RMSNorms, gated MLP (no biases)
        if kind == "attn":
            layer += attention_block_params(d, bias=v1) + (0 if v1 else d)  # Evo 2: out_proj bias only
        else:
            layer += 3 * d * d + (3 * d if v1 else 0)  # in_proj
            layer += 3 * d * k + (3 * d if v1 else 0)  # short FIR (+ bias in version 1)
            layer += d * d + d  # out_proj with bias
            layer += d if kind in ("hyena", "li", "mr") else 0  # skip D
            layer += {"hyena": 4 * d * S, "li": 2 * d * S, "se": G * cfg.se_len, "mr": cfg.mr_groups * cfg.mr_len}[kind]
        total += layer
    return total + d  # final RMSNorm


def flops(cfg: StripedHyenaConfig, L: int, B: int, causal_savings: bool = False) -> FlopTerms:
    """Hyena mixers (modal, SE, MR, LI) striped with RoPE attention; gated MLPs (forward FLOPs per token)."""
    d, S, k = cfg.d_model, cfg.state_size, cfg.short_filter_len
    out = FlopTerms()
    for kind in cfg.layers:
        if kind == "attn":
            out.layer_kinds.append("attention")
            attention_layer_flops(out, d, L, causal_savings)
        else:
            out.layer_kinds.append("explicit_conv" if kind == "se" else "long_conv")
            out.add("in_proj", 6 * d * d)
            out.add("short_conv", 2 * k * 3 * d)
            if kind == "se":  # direct depthwise convolution, se_len taps
                out.add("explicit_conv", 2 * cfg.se_len * d)
            else:
                out.add_fft(fft_conv_flops(d, L, B, cfg.mr_len if kind == "mr" else L))
                if kind in ("hyena", "li"):
                    # h[c, j*c0 + i] = Re sum_n (R p^(j c0))[n] (p^i)[n]: per channel an (m, S) @ (S, c0)
                    # product on two sqrt(L) power tables (two real products for complex poles), once per batch
                    c0 = math.isqrt(max(L - 1, 0)) + 1
                    m = -(-L // c0)
                    products = 2 if kind == "hyena" else 1
                    out.add("modal_filter", products * 2 * d * S * m * c0 / (L * B))
            out.add("out_proj", 2 * d * d)
        out.add("mlp", gated_mlp_flops(d, cfg.mlp_hidden))
    out.add("logits", 2 * d * cfg.vocab_size)
    return out


def activations(cfg: StripedHyenaConfig) -> ActivationShape:
    layers = []
    for i, kind in enumerate(cfg.layers):
        saved = 4 if cfg.version == 1 or i == 0 else 3  # Evo 2: GELU in layer 0, bilinear GLU after
        if kind == "attn":
            layers.append(LayerSpec("attention", mlp_saved=saved))
        elif kind == "se":
            layers.append(LayerSpec("explicit_conv", mlp_saved=saved))
        elif kind == "mr":
            layers.append(LayerSpec("long_conv", filter_len=cfg.mr_len, mlp_saved=saved))
        else:
            layers.append(LayerSpec("long_conv", mlp_saved=saved, modal_states=cfg.state_size, modal_complex=kind == "hyena"))
    return ActivationShape(
        layers=layers,
        n_layer=cfg.n_layer,
        mlp_hidden=int(cfg.mlp_hidden),
        mlp_gated=True,
        largest_layer_params=layer_params_estimate(cfg.d_model, int(cfg.mlp_hidden), True),
    )


def no_weight_decay(name: str) -> bool:
    """The long filters' own parameters (modal poles and residues, Hyena-LI rates, SE/MR taps) are filter
    coefficients, not projections: like HyenaDNA's implicit filters they get no weight decay."""
    return name.rsplit(".", 1)[-1] in ("poles", "residues", "log_poles", "h") and ".mixer." in name


# ---- presets: Evo 1 and Evo 2 as released. Evo 1: togethercomputer/evo-1-8k-base and evo-1-131k-base
# config.json at 1.1_fix (32 layers, 4096 wide, 32 heads, attention at 8/16/24, inner_mlp_size 10928, state 8,
# byte vocabulary 512; the 131k model divides RoPE positions by 16). Evo 2: ArcInstitute/evo2 @53f1959
# evo2/configs/*.yml (tables in shared/fixtures/evo2_vortex/NOTES.md): hcs/hcm/hcl/attn layer indices, filter
# groups, state 16, RoPE base and linear interpolation as the released inv_freq buffers show (the 7B uses
# base 1e4 also at 1M, the 20B and 40B 1e6). The 1M files list a wider MLP than the 8k ones (7B: 11264 vs
# 11008, 40B: 22528 vs 21888); each preset follows its own file.


def _evo1(max_len: int, rope_interp: float):
    layers = ["attn" if i in (8, 16, 24) else "hyena" for i in range(32)]
    return lambda: StripedHyenaConfig(
        version=1, n_layer=32, d_model=4096, n_head=32, max_len=max_len, vocab_size=512, layers=layers,
        mlp_hidden=10928, state_size=8, rope_base=10000.0, rope_interp=rope_interp,
    )  # fmt: skip


EVO2_SHAPES = {  # n_layer, d_model, n_head, filter groups, attention layers
    "1b": (25, 1920, 15, 128, (3, 10, 17, 24)),
    "7b": (32, 4096, 32, 256, (3, 10, 17, 24, 31)),
    "20b": (24, 8192, 64, 512, (3, 10, 17)),
    "40b": (50, 8192, 64, 512, (3, 10, 17, 24, 31, 35, 42, 49)),
}


def evo2_layers(n_layer: int, attn: Sequence[int]) -> list[str]:
    """Evo 2's block pattern: attention at ``attn``, the other depths cycle SE, MR, LI (hcs, hcm, hcl)."""
    hyena = [i for i in range(n_layer) if i not in attn]
    kinds = {i: ("se", "mr", "li")[j % 3] for j, i in enumerate(hyena)} | {i: "attn" for i in attn}
    return [kinds[i] for i in range(n_layer)]


def _evo2(size: str, max_len: int, mlp_hidden: int, rope_base: float, rope_interp: float):
    n_layer, d_model, n_head, groups, attn = EVO2_SHAPES[size]
    return lambda: StripedHyenaConfig(
        version=2, n_layer=n_layer, d_model=d_model, n_head=n_head, max_len=max_len, vocab_size=512,
        layers=evo2_layers(n_layer, attn), mlp_hidden=mlp_hidden, state_size=16, filter_groups=groups,
        rope_base=rope_base, rope_interp=rope_interp, fp8_input_projections=True,  # as every released config
    )  # fmt: skip


def _tiny(version: int, layers: list[str], mlp_hidden: int):
    return lambda: StripedHyenaConfig(
        version=version, n_layer=len(layers), d_model=128, n_head=4, max_len=1026, layers=list(layers),
        mlp_hidden=mlp_hidden,
    )  # fmt: skip


# ---- checkpoints written before the Evo conventions (no ``conventions`` field in config.json)

PRE_EVO_NOTE = (
    "a StripedHyena checkpoint from before dnalm adopted the Evo conventions (no 'conventions' field): "
    "converted on load (projection rows re-ordered to the Evo channel layout, MR filters stored with their "
    "decay applied, LI filters as log-poles, a zero out_proj bias on version-2 attention, RoPE kept in "
    "float64). RMSNorm now adds eps outside the root, which moves outputs by about 1e-6 relative. Re-save it "
    "(dnalm.checkpoint.save_pretrained(dnalm.load(path), new_path)) to store the new layout."
)


def _thirds_to_evo(version: int, d: int, n_head: int) -> torch.Tensor:
    """Row order taking the old contiguous [x2 | x1 | v] projection rows to the Evo layout (new[r] = old[perm[r]])."""
    if version == 2:  # interleave: row 3c + s
        return torch.tensor([s * d + c for c in range(d) for s in range(3)])
    hd = d // n_head  # Evo 1 column split: per head [x2 | x1 | v]
    return torch.tensor([s * d + h * hd + j for h in range(n_head) for s in range(3) for j in range(hd)])


def _upgrade_state(state: dict[str, torch.Tensor], cfg: StripedHyenaConfig) -> dict[str, torch.Tensor]:
    state = dict(state)
    perm = _thirds_to_evo(cfg.version, cfg.d_model, cfg.n_head)
    for i, kind in enumerate(cfg.layers):
        m = f"backbone.layers.{i}.mixer."
        if kind == "attn":
            if m + "out_proj.bias" not in state:  # version 2 had no attention biases at all
                state[m + "out_proj.bias"] = torch.zeros(cfg.d_model, dtype=state[m + "out_proj.weight"].dtype)
            continue
        for name in ("in_proj.weight", "in_proj.bias", "short_filter", "short_bias"):
            if m + name in state:
                state[m + name] = state[m + name][perm].contiguous()
        if kind == "mr":  # the old fixed decay buffer, as the old forward applied it
            w = state.pop(m + "w")
            G, n = w.shape
            state[m + "h"] = w * torch.exp(-torch.logspace(-2, 2, G)[:, None] * torch.linspace(0, 1, n)).to(w.dtype)
        if kind == "li":
            state[m + "log_poles"] = -torch.exp(state.pop(m + "log_rate").float())
    return state


def upgrade(d: dict) -> tuple[dict, Any, str | None]:
    """A saved model dict (config.json "model") in today's terms; see ModelSpec.upgrade."""
    if "conventions" in d:
        return d, None, None
    return {**d, "conventions": "evo", "rope_precision": "float64"}, _upgrade_state, PRE_EVO_NOTE


SPEC = ModelSpec(
    family="striped_hyena",
    config=StripedHyenaConfig,
    backbone=StripedHyenaBackbone,
    final_norm=lambda cfg: RMSNorm(cfg.d_model, eps=cfg.norm_eps),
    count_params=count_params,
    flops=flops,
    activations=activations,
    no_weight_decay=no_weight_decay,
    extend_context=extend_context,
    upgrade=upgrade,
    presets={
        "striped-hyena-tiny": _tiny(1, ["hyena", "attn", "hyena"], 256),  # ~0.5M, for tests and demos
        "striped-hyena2-tiny": _tiny(2, ["se", "mr", "li", "attn"], 192),  # ~0.57M
        "evo-1-8k": _evo1(8192, 1.0),
        "evo-1-131k": _evo1(131072, 16.0),
        "evo2-1b-8k": _evo2("1b", 8192, 5120, 1e4, 1.0),
        "evo2-7b-8k": _evo2("7b", 32768, 11008, 1e4, 1.0),
        "evo2-7b-262k": _evo2("7b", 262_144, 11008, 1e4, 32.0),
        "evo2-7b": _evo2("7b", 1_048_576, 11264, 1e4, 128.0),
        "evo2-20b": _evo2("20b", 1_048_576, 22528, 1e6, 128.0),
        "evo2-40b-8k": _evo2("40b", 8192, 21888, 1e6, 1.0),
        "evo2-40b": _evo2("40b", 1_048_576, 22528, 1e6, 128.0),
    },
)
