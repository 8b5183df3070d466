"""Analytic FLOPs per token for every model family, term by term (SPEC section 4).

Conventions (owned here):

- A multiply-accumulate is 2 FLOPs; a matmul (m, k) x (k, n) costs 2*m*k*n. This is the convention of
  ``torch.utils.flop_counter.FlopCounterMode``, Kaplan et al. and Hoffmann et al., so the analytic
  numbers can be checked against PyTorch's counter.
- Numbers are **per token** of a batch of ``batch_size`` sequences of ``seq_len`` tokens: the total for
  the batch divided by ``batch_size * seq_len``. Work done once per sequence and shared by the batch
  (building an implicit filter, the FFT of a filter) is divided by the batch; the default batch of 1 is
  the conservative, exact count for a single sequence.
- Three kinds of term are kept apart:
    * ``terms``: dense matmuls and convolutions (projections, MLPs, the attention core, short/explicit
      convolutions, the logits). These are the terms ``FlopCounterMode`` measures.
    * ``fft_terms``: long convolutions computed by FFT (rfft of the input, pointwise product, irfft,
      and the filter's rfft). A real FFT of size n is taken as 2.5*n*log2(n) FLOPs (half a complex FFT's
      5*n*log2(n)); the size n is the one ``dnalm.ops.fft_size`` picks (>= 2L-1, 5-smooth).
    * ``other_terms``: analytic-only work that is neither (none of the current families has any).
  Element-wise work (norms, activations, gating, softmax, RoPE, residual adds) is not counted, as in the
  papers' FLOP budgets; it is memory-bound and small next to the matmuls at realistic widths.
- The attention core (QK^T and AV) is counted dense, 4*L*d per token, which is what a dense kernel and
  ``FlopCounterMode`` count; ``causal_savings=True`` halves it (about (L+1)/2 keys per query), as a
  causal flash kernel that skips masked tiles does.
- Training is 3x the forward count (the backward pass is two matmuls per forward matmul).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from dnalm.ops.fftconv import fft_size

__all__ = ["FlopBreakdown", "flops_per_token", "count_params", "rfft_flops", "supported_families", "measure_flops"]


def rfft_flops(n: int) -> float:
    """FLOPs of one real FFT (or inverse real FFT) of size ``n``: 2.5 * n * log2(n)."""
    return 2.5 * n * math.log2(n) if n > 1 else 0.0


@dataclass
class FlopBreakdown:
    """Forward FLOPs per token by term, summed over layers (see the module docstring for conventions)."""

    family: str
    seq_len: int
    batch_size: int
    terms: dict[str, float] = field(default_factory=dict)  # dense matmul / convolution terms
    fft_terms: dict[str, float] = field(default_factory=dict)  # FFT long convolutions
    other_terms: dict[str, float] = field(default_factory=dict)  # analytic-only (e.g. modal filters)
    n_params: int = 0  # all parameters
    n_embedding_params: int = 0  # token embedding (and an untied head)
    layer_kinds: list[str] = field(default_factory=list)  # mixer kind of each layer, in order

    @property
    def matmul(self) -> float:
        """Forward FLOPs per token of the dense matmul/convolution terms."""
        return float(sum(self.terms.values()))

    @property
    def fft(self) -> float:
        """Forward FLOPs per token of the FFT long convolutions."""
        return float(sum(self.fft_terms.values()))

    @property
    def forward(self) -> float:
        """All counted forward FLOPs per token."""
        return self.matmul + self.fft + float(sum(self.other_terms.values()))

    @property
    def training(self) -> float:
        """Training FLOPs per token (forward + backward = 3x forward)."""
        return 3.0 * self.forward

    @property
    def six_n(self) -> float:
        """The 6*N rule of thumb for training FLOPs per token (N = all parameters)."""
        return 6.0 * self.n_params

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "terms": dict(self.terms),
            "fft_terms": dict(self.fft_terms),
            "other_terms": dict(self.other_terms),
            "matmul": self.matmul,
            "fft": self.fft,
            "forward": self.forward,
            "training": self.training,
            "n_params": self.n_params,
            "six_n": self.six_n,
        }

    def table(self) -> str:
        """A small human-readable table of the terms (forward FLOPs per token and share)."""
        fwd = self.forward or 1.0
        rows = [(k, v, "") for k, v in self.terms.items()]
        rows += [(k, v, "fft") for k, v in self.fft_terms.items()]
        rows += [(k, v, "other") for k, v in self.other_terms.items()]
        width = max([len(r[0]) for r in rows] + [12])
        lines = [f"FLOPs per token, {self.family}, seq_len {self.seq_len}, batch {self.batch_size}"]
        for name, value, kind in rows:
            lines.append(f"  {name:<{width}}  {value:12.4g}  {100 * value / fwd:5.1f}%  {kind}")
        lines.append(f"  {'forward':<{width}}  {self.forward:12.4g}")
        lines.append(f"  {'training (3x)':<{width}}  {self.training:12.4g}   (6N = {self.six_n:.4g})")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ helpers


def _add(d: dict[str, float], key: str, value: float) -> None:
    d[key] = d.get(key, 0.0) + float(value)


def _fft_conv(channels: int, L: int, B: int, filter_len: int | None = None) -> dict[str, float]:
    """FFT causal convolution of ``channels`` channels, per token: rfft(u), product, irfft, rfft(h)/B."""
    n = fft_size(L, filter_len if filter_len is not None else L)
    bins = n // 2 + 1
    return {
        "long_conv_fft": channels * 2 * rfft_flops(n) / L,  # rfft of the input + irfft of the product
        "long_conv_product": channels * 6 * bins / L,  # complex multiply: 6 real FLOPs per bin
        "filter_fft": channels * rfft_flops(n) / (L * B),  # once per sequence batch, broadcast over B
    }


def _gated_mlp(d: int, f: int) -> float:
    """l3(act(l1 z) * l2 z): three d x f matmuls."""
    return 6.0 * d * f


def _attention_core(d: int, L: int, causal_savings: bool) -> float:
    """QK^T and AV per token: 2*L*d each (dense); a causal kernel skipping masked tiles does ~(L+1)/2."""
    keys = (L + 1) / 2 if causal_savings else L
    return 4.0 * keys * d


# ------------------------------------------------------------------------------------------ families


def _hyena(cfg: Any, L: int, B: int, causal_savings: bool) -> FlopBreakdown:
    """HyenaDNA (SPEC section 1): Hyena operator of order N, then a GELU MLP, per layer."""
    d, N, fo = cfg.d_model, cfg.order, cfg.filter_order
    out = FlopBreakdown("hyena", L, B)
    for _ in range(cfg.n_layer):
        out.layer_kinds.append("hyena")
        _add(out.terms, "in_proj", 2 * d * (N + 1) * d)  # D -> (N+1)D
        _add(out.terms, "short_conv", 2 * cfg.short_filter_order * (N + 1) * d)  # depthwise, k taps
        # implicit filter MLP, evaluated at the first L of l_max positions, once per batch
        mlp = cfg.emb_dim * fo + cfg.num_inner_mlps * fo * fo + fo * d * (N - 1)
        _add(out.terms, "filter_mlp", 2 * mlp / B)
        for k, v in _fft_conv(d * (N - 1), L, B).items():
            _add(out.fft_terms, k, v)
        _add(out.terms, "out_proj", 2 * d * d)
        _add(out.terms, "mlp", 4 * d * cfg.d_inner)  # D -> d_inner -> D
    _add(out.terms, "logits", 2 * d * cfg.vocab_size)
    return out


def _transformer(cfg: Any, L: int, B: int, causal_savings: bool) -> FlopBreakdown:
    """Transformer++ (RMSNorm, RoPE, causal attention, SwiGLU), per layer."""
    d = cfg.d_model
    out = FlopBreakdown("transformer", L, B)
    for _ in range(cfg.n_layer):
        out.layer_kinds.append("attention")
        _add(out.terms, "qkv_proj", 6 * d * d)
        _add(out.terms, "attention_core", _attention_core(d, L, causal_savings))
        _add(out.terms, "attn_out_proj", 2 * d * d)
        _add(out.terms, "mlp", _gated_mlp(d, cfg.mlp_hidden))
    _add(out.terms, "logits", 2 * d * cfg.vocab_size)
    return out


def _striped_hyena(cfg: Any, L: int, B: int, causal_savings: bool) -> FlopBreakdown:
    """StripedHyena 1/2: Hyena mixers (modal, SE, MR, LI) striped with RoPE attention; gated MLPs."""
    d, S, k = cfg.d_model, cfg.state_size, cfg.short_filter_len
    out = FlopBreakdown("striped_hyena", L, B)
    for kind in cfg.layers:
        if kind == "attn":
            out.layer_kinds.append("attention")
            _add(out.terms, "qkv_proj", 6 * d * d)
            _add(out.terms, "attention_core", _attention_core(d, L, causal_savings))
            _add(out.terms, "attn_out_proj", 2 * d * d)
        else:
            out.layer_kinds.append("hyena_explicit" if kind == "se" else "hyena")
            _add(out.terms, "in_proj", 6 * d * d)
            _add(out.terms, "short_conv", 2 * k * 3 * d)
            if kind == "se":  # direct depthwise convolution, se_len taps
                _add(out.terms, "explicit_conv", 2 * cfg.se_len * d)
            else:
                filt = cfg.mr_len if kind == "mr" else L
                for name, v in _fft_conv(d, L, B, filt).items():
                    _add(out.fft_terms, name, v)
                if kind in ("hyena", "li"):
                    # h[c, j*c0 + i] = Re sum_n (R p^(j c0))[n] (p^i)[n]: per channel an (m, S) @ (S, c0)
                    # product on two sqrt(L) power tables (two real products for complex poles), once per batch
                    c0 = math.isqrt(max(L - 1, 0)) + 1
                    m = -(-L // c0)
                    products = 2 if kind == "hyena" else 1
                    _add(out.terms, "modal_filter", products * 2 * d * S * m * c0 / (L * B))
            _add(out.terms, "out_proj", 2 * d * d)
        _add(out.terms, "mlp", _gated_mlp(d, cfg.mlp_hidden))
    _add(out.terms, "logits", 2 * d * cfg.vocab_size)
    return out


def _ssd(L: int, T: int, heads_x_headdim: int, n: int) -> float:
    """Chunked SSD scan FLOPs per token (one B/C group; einsums as in dnalm.models.mamba2.ssd_chunked):
    C.B inside chunks (2Tn), the masked (T, T) mix of x (2T*E), chunk states and their read-out (4E*n);
    the sequence is padded to a whole number of chunks."""
    E = heads_x_headdim
    pad = math.ceil(L / T) * T / L
    return pad * (2 * T * n + 2 * T * E + 4 * E * n)


def _hnet(cfg: Any, L: int, B: int, causal_savings: bool, stage_lengths: list[float] | None = None) -> FlopBreakdown:
    """dnaHNet: per level, encoder + router + residual projection + decoder, EMA dechunking; main network
    innermost. Level s sees L_s positions (default L / product of the target ratios before it; pass the
    measured ``stage_lengths`` for an exact count of a given input). Terms are per nucleotide token."""
    out = FlopBreakdown("hnet", L, B)
    widths, S = cfg.widths, cfg.n_stages
    if stage_lengths is None:
        stage_lengths = [float(L)]
        for r in cfg.target_ratios:
            stage_lengths.append(stage_lengths[-1] / r)
    if len(stage_lengths) != S + 1:
        raise ValueError(f"stage_lengths needs {S + 1} entries (nucleotides, then each stage), got {len(stage_lengths)}")
    from dnalm.models.hnet import parse_layout

    def stack(layout: str, level: int) -> None:
        d, Ls = widths[level], max(float(stage_lengths[level]), 1.0)
        share = Ls / L  # positions at this level per nucleotide
        for kind in parse_layout(layout):
            if kind == "t":
                out.layer_kinds.append("attention")
                _add(out.terms, "qkv_proj", share * 6 * d * d)
                _add(out.terms, "attention_core", share * _attention_core(d, int(round(Ls)), causal_savings))
                _add(out.terms, "attn_out_proj", share * 2 * d * d)
                _add(out.terms, "mlp", share * _gated_mlp(d, cfg.attn_mlp_hidden(d)))
            else:
                out.layer_kinds.append("mamba")
                E, N = cfg.mamba_expand * d, cfg.d_state
                H = E // cfg.mamba_headdim
                _add(out.terms, "mamba_in_proj", share * 2 * d * (2 * E + 2 * N + H))
                _add(out.terms, "mamba_conv", share * 2 * cfg.mamba_d_conv * (E + 2 * N))
                _add(out.terms, "ssd_scan", share * _ssd(int(round(Ls)), cfg.ssd_chunk_size, E, N))
                _add(out.terms, "mamba_out_proj", share * 2 * E * d)

    for level in range(S):
        d, share = widths[level], stage_lengths[level] / L
        stack(cfg.encoder_layout[level], level)
        _add(out.terms, "router", share * 4 * d * d)  # q_proj and k_proj
        _add(out.terms, "residual_proj", share * 2 * d * d)
        M = max(float(stage_lengths[level + 1]), 1.0)  # chunks, smoothed at this level's width
        _add(out.terms, "dechunk_ema", (M / L) * _ssd(int(round(M)), cfg.ssd_chunk_size, d, 1))
        stack(cfg.decoder_layout[level], level)
    stack(cfg.main_layout, S)
    _add(out.terms, "logits", 2 * cfg.d_model * cfg.vocab_size)
    return out


_FAMILIES = {"hyena": _hyena, "transformer": _transformer, "striped_hyena": _striped_hyena, "hnet": _hnet}


def supported_families() -> list[str]:
    """Families whose FLOPs (and parameters) this module can count."""
    return sorted(_FAMILIES)


def flops_per_token(
    config: Any,
    seq_len: int,
    batch_size: int = 1,
    causal_savings: bool = False,
    stage_lengths: list[float] | None = None,
) -> FlopBreakdown:
    """Analytic forward FLOPs per token of ``config`` at ``seq_len``, broken down by term.

    ``batch_size`` sets how per-sequence work (filter generation, filter FFT) is amortised.
    ``causal_savings`` counts the attention core as a causal kernel that skips masked tiles does.
    ``stage_lengths`` (dnaHNet only) gives the positions at each level (nucleotides, stage 1, ...); the
    default assumes every stage compresses by exactly its target ratio.
    Raises ``ValueError`` for a family this module does not know.
    """
    family = getattr(config, "family", None)
    if family not in _FAMILIES:
        raise ValueError(f"no FLOP formula for model family {family!r} (known: {', '.join(supported_families())})")
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len and batch_size must be >= 1 (got {seq_len}, {batch_size})")
    if family == "hnet":
        out = _hnet(config, int(seq_len), int(batch_size), causal_savings, stage_lengths)
    else:
        out = _FAMILIES[family](config, int(seq_len), int(batch_size), causal_savings)
    out.n_params = count_params(config)
    emb = config.vocab_size * config.d_model
    out.n_embedding_params = emb if getattr(config, "tie_embeddings", True) else 2 * emb
    return out


# ------------------------------------------------------------------------------------------ parameters


def _hyena_params(cfg: Any) -> int:
    d, N, fo, e = cfg.d_model, cfg.order, cfg.filter_order, cfg.emb_dim
    k = cfg.short_filter_order
    filt = (e * fo + fo) + fo + cfg.num_inner_mlps * (fo * fo + fo) + fo * d * (N - 1)  # MLP, sin freq, head
    mixer = (d * (N + 1) * d + (N + 1) * d) + (N + 1) * d * (k + 1) + filt + d * (N - 1) + (d * d + d)
    mlp = d * cfg.d_inner + cfg.d_inner + cfg.d_inner * d + d
    layer = 2 * d + mixer + 2 * d + mlp  # two LayerNorms (weight + bias)
    return cfg.n_layer * layer + 2 * d  # final LayerNorm


def _transformer_params(cfg: Any) -> int:
    d, f = cfg.d_model, cfg.mlp_hidden
    layer = d + 4 * d * d + d + 3 * d * f  # RMSNorm, Wqkv + out_proj, RMSNorm, SwiGLU (no biases)
    return cfg.n_layer * layer + d  # final RMSNorm


def _attention_block_params(d: int, bias: bool) -> int:
    return 4 * d * d + (4 * d if bias else 0)  # Wqkv + out_proj (+ their biases)


def _striped_hyena_params(cfg: Any) -> int:
    d, S, G, k = cfg.d_model, cfg.state_size, cfg.filter_groups, cfg.short_filter_len
    v1 = cfg.version == 1
    total = 0
    for kind in cfg.layers:
        layer = 2 * d + 3 * d * cfg.mlp_hidden  # two RMSNorms, gated MLP (no biases)
        if kind == "attn":
            layer += _attention_block_params(d, bias=v1)
        else:
            layer += 3 * d * d + (3 * d if v1 else 0)  # in_proj
            layer += 3 * d * k + (3 * d if v1 else 0)  # short FIR (+ bias in version 1)
            layer += d * d + d  # out_proj with bias
            layer += d if kind in ("hyena", "li", "mr") else 0  # skip D
            layer += {"hyena": 4 * d * S, "li": 2 * d * S, "se": G * cfg.se_len, "mr": G * cfg.mr_len}[kind]
        total += layer
    return total + d  # final RMSNorm


def _hnet_params(cfg: Any) -> int:
    from dnalm.models.hnet import parse_layout

    def stack(layout: str, d: int, final_norm: bool) -> int:
        n = d if final_norm else 0
        for kind in parse_layout(layout):
            if kind == "t":
                n += 2 * d + _attention_block_params(d, bias=False) + 3 * d * cfg.attn_mlp_hidden(d)
            else:
                E, N = cfg.mamba_expand * d, cfg.d_state
                H, conv = E // cfg.mamba_headdim, E + 2 * N
                n += d + d * (2 * E + 2 * N + H) + conv * (cfg.mamba_d_conv + 1) + 3 * H + E + E * d
        return n

    widths, S = cfg.widths, cfg.n_stages
    total = 0
    for level in range(S + 1):
        d = widths[level]
        total += d - widths[level - 1] if level > 0 and d > widths[level - 1] else 0  # width pad vector
        if level == S:
            total += stack(cfg.main_layout, d, True)
        else:
            total += stack(cfg.encoder_layout[level], d, True) + stack(cfg.decoder_layout[level], d, level > 0)
            total += 2 * d * d + d * d  # router q/k, residual_proj
    return total + cfg.d_model  # final RMSNorm of the shell


_PARAMS = {
    "hyena": _hyena_params,
    "transformer": _transformer_params,
    "striped_hyena": _striped_hyena_params,
    "hnet": _hnet_params,
}


def count_params(config: Any) -> int:
    """Number of parameters of ``DNALM(config)``, computed from the config alone (no model is built)."""
    family = getattr(config, "family", None)
    if family not in _PARAMS:
        raise ValueError(f"no parameter formula for model family {family!r}")
    emb = config.vocab_size * config.d_model
    head = 0 if getattr(config, "tie_embeddings", True) else emb
    return int(_PARAMS[family](config) + emb + head)


# ------------------------------------------------------------------------------------------ measurement


def measure_flops(model: Any, input_ids: Any, train: bool = False) -> float:
    """FLOPs that ``torch.utils.flop_counter.FlopCounterMode`` counts for one forward (and, with
    ``train``, backward of ``logits.sum()``) of ``model`` on ``input_ids``, per token.

    Two gaps of the counter are filled: CPU attention (``_scaled_dot_product_flash_attention_for_cpu``
    and its backward) gets torch's own SDPA formulas, and grouped-convolution backward (which the counter
    over-counts by ignoring ``groups``) is counted as the forward's multiply-adds per requested gradient.
    FFTs and element-wise work are not counted (see the module docstring).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    def sdpa(q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(q, k, v)

    def sdpa_bwd(grad_out, q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_backward_flop_count(grad_out, q, k, v)

    def conv_bwd(grad_out, x, w, bias, stride, pad, dil, transposed, out_pad, groups, mask, out_shape=None):
        per_grad = 2 * math.prod(grad_out) * w[1] * math.prod(w[2:])  # = the forward's multiply-adds
        return per_grad * (int(mask[0]) + int(mask[1]))

    custom = {
        aten._scaled_dot_product_flash_attention_for_cpu: sdpa,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: sdpa_bwd,
        aten.convolution_backward: conv_bwd,
    }
    with FlopCounterMode(display=False, custom_mapping=custom) as counter:
        if train:
            model(input_ids).logits.sum().backward()
        else:
            with torch.no_grad():
                model(input_ids)
    return counter.get_total_flops() / input_ids.numel()


def _report(batch: int = 2, seq_len: int = 256) -> str:
    """Analytic vs measured FLOPs per token for the small presets (``python -m dnalm.scaling.flops``)."""
    import torch

    from dnalm.models.lm import DNALM
    from dnalm.presets import get_preset

    lines = [
        f"FLOPs per token, batch {batch} x {seq_len} (dnaHNet: batch 1, stage lengths as routed)",
        f"{'preset':<22} {'fwd measured':>13} {'fwd analytic':>13} {'ratio':>7} {'train measured':>15} "
        f"{'3x fwd (+flash)':>16} {'ratio':>7} {'FFT (not counted)':>18}",
    ]
    names = ["hyenadna-tiny-1k", "transformer-tiny-1k", "striped-hyena-tiny", "striped-hyena2-tiny", "dnahnet-tiny-32"]
    for name in names:
        config = get_preset(name)
        B = 1 if config.family == "hnet" else batch
        torch.manual_seed(0)
        model = DNALM(config)
        ids = torch.randint(7, 11, (B, seq_len))  # A, C, G, T
        lengths = None
        if config.family == "hnet":
            with torch.no_grad():
                routes = model.backbone.boundaries(model.embed(ids))
            lengths = [seq_len] + [int(r.boundary.sum()) for r in routes]
        fwd = measure_flops(model, ids)
        trn = measure_flops(model, ids, train=True)
        bd = flops_per_token(config, seq_len, B, stage_lengths=lengths)
        want = 3 * bd.matmul + 0.5 * bd.terms.get("attention_core", 0.0)  # flash backward recomputes Q K^T
        lines.append(
            f"{name:<22} {fwd:13.4g} {bd.matmul:13.4g} {fwd / bd.matmul:7.4f} {trn:15.4g} {want:16.4g} "
            f"{trn / want:7.4f} {bd.fft:18.4g}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(_report())
