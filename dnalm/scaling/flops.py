"""Analytic FLOPs per token for every model family, term by term (docs/architectures.md §4).

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

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from dnalm.models import get_preset
from dnalm.models.lm import DNALM
from dnalm.models.spec import SPECS, rfft_flops, spec_of

__all__ = ["FlopBreakdown", "flops_per_token", "count_params", "rfft_flops", "supported_families", "measure_flops"]


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


def supported_families() -> list[str]:
    """Families whose FLOPs (and parameters) this module can count: every registered one."""
    return sorted(SPECS)


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
    spec = spec_of(config)
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len and batch_size must be >= 1 (got {seq_len}, {batch_size})")
    options = {} if stage_lengths is None else {"stage_lengths": stage_lengths}
    terms = spec.flops(config, int(seq_len), int(batch_size), causal_savings, **options)
    out = FlopBreakdown(
        spec.family, int(seq_len), int(batch_size), terms.terms, terms.fft_terms, terms.other_terms,
        layer_kinds=terms.layer_kinds,
    )
    out.n_params = count_params(config)
    emb = config.vocab_size * config.d_model
    out.n_embedding_params = emb if getattr(config, "tie_embeddings", True) else 2 * emb
    return out


# ------------------------------------------------------------------------------------------ parameters


def count_params(config: Any) -> int:
    """Number of parameters of ``DNALM(config)``, computed from the config alone (no model is built)."""
    emb = config.vocab_size * config.d_model
    head = 0 if getattr(config, "tie_embeddings", True) else emb
    return int(spec_of(config).count_params(config) + emb + head)


# ------------------------------------------------------------------------------------------ measurement


def measure_flops(model: Any, input_ids: Any, train: bool = False) -> float:
    """FLOPs that ``torch.utils.flop_counter.FlopCounterMode`` counts for one forward (and, with
    ``train``, backward of ``logits.sum()``) of ``model`` on ``input_ids``, per token.

    Two gaps of the counter are filled: CPU attention (``_scaled_dot_product_flash_attention_for_cpu``
    and its backward) gets torch's own SDPA formulas, and grouped-convolution backward (which the counter
    over-counts by ignoring ``groups``) is counted as the forward's multiply-adds per requested gradient.
    FFTs and element-wise work are not counted (see the module docstring).
    """
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
    lines = [
        f"FLOPs per token, batch {batch} x {seq_len} (dnaHNet: batch 1, stage lengths as routed)",
        f"{'preset':<22} {'fwd measured':>13} {'fwd analytic':>13} {'ratio':>7} {'train measured':>15} "
        f"{'3x fwd (+flash)':>16} {'ratio':>7} {'FFT (not counted)':>18}",
    ]
    names = ["hyenadna-tiny-1k", "transformer-tiny-1k", "striped-hyena-tiny", "striped-hyena2-tiny", "dnahnet-tiny-32"]
    for name in names:
        config = get_preset(name)
        torch.manual_seed(0)
        model = DNALM(config)
        routed = hasattr(model.backbone, "boundaries")  # dnaHNet: count the stage lengths as routed
        B = 1 if routed else batch
        ids = torch.randint(7, 11, (B, seq_len))  # A, C, G, T
        lengths = None
        if routed:
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
