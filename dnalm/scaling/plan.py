"""Compute planner: training FLOPs, GPU time and memory per GPU for a large run, before you launch it.

``make_plan`` answers, for N parameters trained on D tokens at a context length on a set of GPUs:
how many FLOPs (6*N*D, and the full per-layer count when the architecture is known), how many GPU-days
and days of wall-clock at a model-FLOPs utilisation (MFU), how much memory each GPU needs under DDP and
the ZeRO stages (FSDP) with and without activation checkpointing, what fits, and a suggested layout.

Memory model (bytes per GPU; bf16 mixed precision with AdamW, the usual large-run recipe):

- weights 2N (bf16), gradients 2N (bf16), optimizer 12N (fp32 master weights + Adam m and v), as in the
  ZeRO paper (Rajbhandari et al. 2020, section 3.1: 16 bytes per parameter). ZeRO-1 shards the optimizer
  over the data-parallel group of g GPUs, ZeRO-2 also the gradients, ZeRO-3/FSDP also the weights;
  FSDP then holds the gathered bf16 weights and gradients of about one layer at a time (plus one layer
  prefetched): 3 x 2 bytes x the largest layer's parameters.
- activations saved for the backward pass, per token and layer, counted tensor by tensor for each block
  type (``activation_elements``): bf16 except the float32 FFT path of Hyena layers. Attention is assumed
  to use a flash kernel (no L x L matrix is stored). Full activation checkpointing keeps only each
  layer's bf16 input and recomputes one layer at a time during the backward pass.
- the logits and the loss: L x V in bf16, float32 for the cross-entropy and its gradient.
- "fits" means the estimate is at most ``usable`` (default 95%) of the GPU's memory in GiB (an "80 GB"
  H100 or A100 exposes about 80 GiB); the rest (4 GiB of 80) covers the CUDA context (~0.5 GiB), NCCL
  buffers and allocator fragmentation.

Activation counts follow the same bookkeeping as Korthikanti et al. 2022 ("Reducing activation
recomputation in large transformer models"), which gives 34*d bytes per token for a GPT layer without
flash attention; the test suite checks ours against the tensors autograd really saves on small models.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dnalm.models import get_preset
from dnalm.models.spec import LayerSpec, layer_params_estimate, spec_of
from dnalm.models.transformer import TransformerConfig
from dnalm.ops.fftconv import fft_size
from dnalm.scaling.flops import count_params, flops_per_token

__all__ = [
    "GPU",
    "HARDWARE",
    "parse_gpus",
    "LayerSpec",
    "ModelShape",
    "shape_from_config",
    "shape_from_params",
    "activation_elements",
    "MemoryEstimate",
    "memory_per_gpu",
    "Plan",
    "make_plan",
    "format_plan",
    "layer_activation_bytes",
    "plan_command",
    "load_law",
    "GiB",
    "BYTES_WEIGHTS",
    "BYTES_GRADS",
    "BYTES_OPTIM",
]

GiB = 2.0**30  # GPU memory is marketed in "GB" but sized in binary units (an 80 GB H100 has 80 GiB)
BYTES_WEIGHTS, BYTES_GRADS, BYTES_OPTIM = 2, 2, 12  # bf16 weights, bf16 grads, fp32 master + Adam m, v


# ------------------------------------------------------------------------------------------ hardware


@dataclass(frozen=True)
class GPU:
    """One accelerator: peak dense bf16 tensor throughput and memory, with the source of both."""

    name: str
    peak_tflops: float  # dense bf16 (no 2:4 sparsity)
    memory_gib: float  # as the datasheet states it ("80 GB" parts expose ~80 GiB to CUDA)
    source: str


_A100_SHEET = (
    "NVIDIA A100 datasheet, "
    "nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf"
)
_H100_SHEET = "NVIDIA H100 datasheet, resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet"
_H200_PAGE = "NVIDIA H200 product page and datasheet, nvidia.com/en-us/data-center/h200"
_SPARSE = "BF16 {} TFLOPS with sparsity = {} dense"

HARDWARE: dict[str, GPU] = {
    "A100-40GB": GPU("A100-40GB", 312.0, 40.0, f"{_A100_SHEET} (SXM4: {_SPARSE.format('624', 312)}; 40 GB HBM2)"),
    "A100-80GB": GPU("A100-80GB", 312.0, 80.0, f"{_A100_SHEET} (SXM4: {_SPARSE.format('624', 312)}; 80 GB HBM2e)"),
    "H100": GPU("H100", 989.0, 80.0, f"{_H100_SHEET} (SXM5: {_SPARSE.format('1,979', 989)}; 80 GB HBM3)"),
    "H100-PCIe": GPU("H100-PCIe", 756.0, 80.0, f"{_H100_SHEET} (PCIe: {_SPARSE.format('1,513', 756)}; 80 GB HBM2e)"),
    "H200": GPU(
        "H200", 989.0, 140.0, f"{_H200_PAGE} (SXM: {_SPARSE.format('1,979', 989)}; 141 GB HBM3e, about 140 GiB)"
    ),
}
_ALIASES = {
    "A100": "A100-80GB",
    "A100-80": "A100-80GB",
    "A100-40": "A100-40GB",
    "A10040GB": "A100-40GB",
    "A10080GB": "A100-80GB",
    "H100-SXM": "H100",
    "H100-SXM5": "H100",
    "H100-80GB": "H100",
    "H200-SXM": "H200",
    "H200-141GB": "H200",
}


def parse_gpus(spec: str) -> tuple[int, GPU]:
    """``"64xH100"`` / ``"8*A100-80GB"`` / ``"H200"`` -> (count, GPU). Raises ValueError naming the choices."""
    m = re.fullmatch(r"\s*(?:(\d+)\s*[xX*]\s*)?([A-Za-z0-9\-]+)\s*", spec or "")
    if not m:
        raise ValueError(f"--gpus {spec!r}: expected COUNTxNAME, e.g. 64xH100")
    count = int(m.group(1) or 1)
    name = m.group(2)
    by_upper = {k.upper(): k for k in HARDWARE} | {k.upper(): v for k, v in _ALIASES.items()}
    key = by_upper.get(name.upper())
    if key is None or count < 1:
        raise ValueError(f"--gpus {spec!r}: unknown GPU {name!r}; known: {', '.join(HARDWARE)}")
    return count, HARDWARE[key]


# ------------------------------------------------------------------------------------------ model shape


@dataclass
class ModelShape:
    """What the memory model needs to know about an architecture."""

    n_params: float
    n_layer: int
    d_model: int
    vocab_size: int
    layers: list[LayerSpec]  # one per block
    mlp_hidden: int
    mlp_gated: bool  # gated (3 matrices) or GELU (2 matrices) MLP
    norm: str = "rms"  # rms (saves input and normalised input) | layer (saves input only)
    order: int = 2  # Hyena order (number of projections - 1)
    largest_layer_params: float = 0.0
    described_as: str = ""  # how the shape was obtained (preset, config, or inferred from N)
    config: Any = None  # the config, when known (enables the full per-layer FLOP count)

    @property
    def layer_kinds(self) -> list[str]:
        return [spec.kind for spec in self.layers]


def shape_from_config(config: Any, described_as: str = "") -> ModelShape:
    """The shape of any registered family's config (its spec describes its blocks)."""
    spec = spec_of(config)
    act = spec.activations(config)
    note = f" ({act.note})" if act.note else ""
    return ModelShape(
        n_params=float(count_params(config)),
        n_layer=act.n_layer,
        d_model=config.d_model,
        vocab_size=config.vocab_size,
        layers=act.layers,
        mlp_hidden=int(act.mlp_hidden),
        mlp_gated=act.mlp_gated,
        norm=act.norm,
        order=act.order,
        largest_layer_params=act.largest_layer_params,
        described_as=described_as or f"{spec.family} config{note}",
        config=config,
    )


def shape_from_params(
    n_params: float,
    n_layer: int | None = None,
    d_model: int | None = None,
    vocab_size: int = 16,
) -> ModelShape:
    """A Transformer++ shape (RMSNorm, SwiGLU of width 8/3 d) for ``n_params`` when only N is known.

    Without ``n_layer``/``d_model`` the shape follows the common aspect ratio d_model = 128 * n_layer
    (Llama 7B/13B, GPT-3 175B) with 12 * d^2 parameters per layer; pass them to plan a specific model.
    """
    if n_params <= 0:
        raise ValueError(f"--params must be > 0 (got {n_params})")
    if n_layer is None and d_model is None:
        n_layer = max(1, round((n_params / (12 * 128**2)) ** (1 / 3)))
    if d_model is None:
        d_model = max(64, int(round(math.sqrt(n_params / (12 * n_layer)) / 64)) * 64)
    if n_layer is None:
        n_layer = max(1, round(n_params / (12 * d_model**2)))
    f = int(math.ceil(8 * d_model / 3 / 64) * 64)
    shape = ModelShape(
        n_params=float(n_params),
        n_layer=int(n_layer),
        d_model=int(d_model),
        vocab_size=vocab_size,
        layers=[LayerSpec("attention") for _ in range(int(n_layer))],
        mlp_hidden=f,
        mlp_gated=True,
        described_as=f"N = {n_params:.3g} as a Transformer++ of {n_layer} layers, width {d_model}, SwiGLU {f}",
    )
    shape.largest_layer_params = layer_params_estimate(d_model, f, True)
    return shape


# ------------------------------------------------------------------------------------------ activations


def activation_elements(
    spec: LayerSpec,
    d: int,
    f: int,
    seq_len: int,
    batch: int = 1,
    order: int = 2,
    norm: str = "rms",
    mixed_precision: bool = True,
) -> tuple[float, float]:
    """Elements per token that one block saves for the backward pass: (half precision, float32).

    Counted tensor by tensor from what autograd keeps for our blocks (the tests check this against the
    tensors really saved by small models), for ``x + mixer(norm(x))`` then ``x + mlp(norm(x))``:

    - a norm: its input and output (the next projection's input); an RMSNorm also its normalised input;
    - attention: q and k after RoPE (2d), the projection output whose view v is (3d), the attention output
      and its re-laid-out copy for out_proj (2d); a flash kernel keeps no L x L matrix;
    - Hyena: in_proj output and short-conv output ((order+1)d each), then per long convolution the gated
      input u (d) and the convolution output (d), and out_proj's input (d). An FFT convolution adds, in
      float32, rfft(u) ((n/2+1) complex bins per L tokens), the filter's rfft (per sequence, so / batch)
      and, in mixed precision, a float32 copy of u; a modal filter adds its two ~sqrt(L) power tables per
      mode and channel (per sequence); HyenaDNA's implicit filter MLP its hidden states;
    - MLP: gated ``l3(act(l1 z) * l2 z)``: l1 and l2 outputs, act output, product (4f; 3f for Evo 2's
      bilinear GLU without activation); GELU MLP: fc1 output and GELU output (2f).
    """
    L, B = seq_len, max(1, batch)
    d, f = spec.width or d, spec.mlp_hidden or f
    norm_e = 3.0 * d if norm == "rms" else 2.0 * d
    half, fp32 = 2 * norm_e, 0.0  # the two norms
    if spec.kind == "mamba" and spec.mamba is not None:
        # one norm; in_proj output, the conv's input/output, gate and output-norm tensors; the chunked scan
        # (a hand-written backward, dnalm/models/mamba2.py) keeps only its inputs x, log a, B, C (float32) and
        # the state entering each chunk of T positions (E n / T per token). Fitted to the tensors autograd
        # saves for d 32-64, expand 2-4, n 16-64, headdim 8-32, T 32-64 (within 0.5%).
        n, headdim, T, expand = spec.mamba
        E = expand * d
        H = E // headdim
        half = norm_e + 10 * E + 6 * n + 3 * H
        fp32 = E + 2 * n + H + E * n / T
    elif spec.kind == "routing":
        # router (q, k and their normalised copies), residual projection, upsampling and the stage's
        # two stack norms per position; the EMA dechunking scan per chunk position
        half = 14.0 * d
        fp32 = spec.next_share * (3 * spec.chunk + 4 * d)
    elif spec.kind == "attention":
        half += 2 * d + 3 * d + 2 * d
    elif spec.kind in ("long_conv", "explicit_conv"):
        n_conv = order - 1
        half += 2 * (order + 1) * d + n_conv * 2 * d + d
        if spec.kind == "long_conv":
            n = fft_size(L, spec.filter_len or L)
            bins = 2 * (n // 2 + 1) / L  # float32 elements per token and channel of one rfft
            fp32 += n_conv * d * (bins + bins / B + (1 if mixed_precision else 0))
            if spec.modal_states:  # the filter is built from two ~sqrt(L) power tables per mode
                root = math.isqrt(max(L - 1, 0)) + 1
                fp32 += (14 if spec.modal_complex else 7) * d * spec.modal_states * root / (L * B)
            fp32 += spec.filter_mlp / B
    else:
        raise ValueError(f"no activation model for layer kind {spec.kind!r}")
    half += spec.mlp_saved * f
    return half, fp32


def layer_activation_bytes(
    spec: LayerSpec, d: int, f: int, seq_len: int, batch: int = 1, order: int = 2, norm: str = "rms"
) -> float:
    """Bytes per token saved by one block under bf16 mixed precision (float32 FFT path)."""
    half, fp32 = activation_elements(spec, d, f, seq_len, batch, order, norm)
    return 2 * half + 4 * fp32


# ------------------------------------------------------------------------------------------ memory


@dataclass
class MemoryEstimate:
    """Memory per GPU of one strategy, in bytes."""

    strategy: str  # DDP | ZeRO-1 | ZeRO-2 | FSDP (ZeRO-3) | HSDP
    shard_group: int  # GPUs the states are sharded over (1 = replicated)
    activation_checkpointing: bool
    weights: float
    grads: float
    optimizer: float
    buffers: float  # gathered FSDP layers
    activations: float
    logits: float
    context_parallel: int = 1

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.buffers + self.activations + self.logits

    def fits(self, gpu: GPU, usable: float = 0.95) -> bool:
        return self.total <= usable * gpu.memory_gib * GiB

    @property
    def label(self) -> str:
        s = self.strategy + (f" x{self.shard_group}" if self.shard_group > 1 else "")
        s += " + act. ckpt" if self.activation_checkpointing else ""
        return s + (f" + context parallel {self.context_parallel}" if self.context_parallel > 1 else "")


def memory_per_gpu(
    shape: ModelShape,
    seq_len: int,
    strategy: str = "DDP",
    shard_group: int = 1,
    activation_checkpointing: bool = False,
    micro_batch: int = 1,
    context_parallel: int = 1,
) -> MemoryEstimate:
    """Memory per GPU for ``strategy`` in DDP | ZeRO-1 | ZeRO-2 | FSDP | HSDP (see the module docstring).

    ``shard_group`` is the number of GPUs the sharded states are split over. ``context_parallel`` splits
    each sequence over that many GPUs (activations divide by it; the states do not).
    """
    N, g = shape.n_params, max(1, shard_group)
    w, gr, opt = BYTES_WEIGHTS * N, BYTES_GRADS * N, BYTES_OPTIM * N
    buffers = 0.0
    if strategy == "DDP":
        g = 1
    elif strategy == "ZeRO-1":
        opt /= g
    elif strategy == "ZeRO-2":
        opt, gr = opt / g, gr / g
    elif strategy in ("FSDP", "HSDP"):
        w, gr, opt = w / g, gr / g, opt / g
        buffers = 3 * 2 * shape.largest_layer_params if g > 1 else 0.0
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    tokens = micro_batch * seq_len / context_parallel  # tokens held by one GPU
    per_layer = [  # bytes per nucleotide token
        spec.share
        * layer_activation_bytes(
            spec, shape.d_model, shape.mlp_hidden, max(1, int(seq_len * spec.share) // context_parallel),
            micro_batch, shape.order, shape.norm,
        )
        for spec in shape.layers
    ]
    if activation_checkpointing:  # each block's bf16 input is kept, one block at a time is live
        inputs = sum(2 * (spec.width or shape.d_model) * spec.share for spec in shape.layers)
        acts = tokens * (inputs + max(per_layer))
    else:
        acts = tokens * sum(per_layer)
    # the final norm (input, output and, for RMSNorm, the normalised input); the embedding output is
    # layer 0's input, already counted
    acts += tokens * 2 * (3 if shape.norm == "rms" else 2) * shape.d_model
    logits = tokens * shape.vocab_size * (2 + 4 + 4)  # bf16 logits, fp32 for the loss and its gradient
    return MemoryEstimate(strategy, g, activation_checkpointing, w, gr, opt, buffers, acts, logits, context_parallel)


# ------------------------------------------------------------------------------------------ plan


@dataclass
class Plan:
    """Everything ``dnalm plan`` prints; see :func:`make_plan`."""

    shape: ModelShape
    tokens: float
    seq_len: int
    n_gpus: int
    gpu: GPU
    mfu: float
    micro_batch: int
    usable: float
    flops_6nd: float
    flops_full: float | None  # 3 x forward per token x tokens, when the architecture is known
    flops_full_note: str
    memory: list[MemoryEstimate]
    suggestion: str
    law_note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def flops(self) -> float:
        """The FLOPs the time estimate uses: 6*N*D (the MFU convention)."""
        return self.flops_6nd

    def gpu_days(self, flops: float | None = None) -> float:
        return (flops or self.flops) / (self.gpu.peak_tflops * 1e12 * self.mfu) / 86400

    def wall_days(self, flops: float | None = None) -> float:
        return self.gpu_days(flops) / self.n_gpus

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": self.shape.n_params,
            "shape": self.shape.described_as,
            "tokens": self.tokens,
            "context": self.seq_len,
            "gpus": f"{self.n_gpus}x{self.gpu.name}",
            "mfu": self.mfu,
            "flops_6nd": self.flops_6nd,
            "flops_full": self.flops_full,
            "gpu_days": self.gpu_days(),
            "wall_clock_days": self.wall_days(),
            "memory_gib": {
                m.label: {
                    "weights": m.weights / GiB,
                    "grads": m.grads / GiB,
                    "optimizer": m.optimizer / GiB,
                    "buffers": m.buffers / GiB,
                    "activations": m.activations / GiB,
                    "logits": m.logits / GiB,
                    "total": m.total / GiB,
                    "fits": m.fits(self.gpu, self.usable),
                }
                for m in self.memory
            },
            "suggestion": self.suggestion,
        }


def _strategies(n_gpus: int, all_hsdp: bool = False) -> list[tuple[str, int]]:
    """(strategy, shard group) in order of preference: least communication first. HSDP shards inside
    groups of 8 GPUs (a node), or with ``all_hsdp`` of 8, 16, 32, ... GPUs, and replicates across them."""
    if n_gpus == 1:
        return [("DDP", 1)]  # nothing to shard over
    out = [("DDP", 1), ("ZeRO-1", n_gpus), ("ZeRO-2", n_gpus)]
    group = min(8, n_gpus)
    while group < n_gpus and n_gpus % group == 0:
        out.append(("HSDP", group))
        if not all_hsdp:
            break
        group *= 2
    out.append(("FSDP", n_gpus))
    return out


def make_plan(
    shape: ModelShape,
    tokens: float,
    seq_len: int,
    gpus: str = "8xH100",
    mfu: float = 0.35,
    micro_batch: int = 1,
    usable: float = 0.95,
) -> Plan:
    """Plan training ``shape`` on ``tokens`` tokens at context ``seq_len`` on ``gpus`` (e.g. "64xH100")."""
    if tokens <= 0:
        raise ValueError(f"--tokens must be > 0 (got {tokens})")
    if seq_len < 1 or micro_batch < 1:
        raise ValueError("--context and --micro-batch must be >= 1")
    if not 0 < mfu <= 1:
        raise ValueError(f"--mfu must be in (0, 1] (got {mfu})")
    n_gpus, gpu = parse_gpus(gpus)
    flops_6nd = 6.0 * shape.n_params * tokens
    cfg = shape.config
    note = ""
    if cfg is None:  # a Transformer++ of the inferred shape stands in for the per-layer count
        n_head = max(1, shape.d_model // 128)
        while shape.d_model % n_head or (shape.d_model // n_head) % 2:
            n_head -= 1
        cfg = TransformerConfig(
            n_layer=shape.n_layer,
            d_model=shape.d_model,
            n_head=n_head,
            max_len=seq_len,
            vocab_size=shape.vocab_size,
            mlp_hidden=shape.mlp_hidden,
        )
        note = "per-layer count of the inferred Transformer++ shape"
    bd = flops_per_token(cfg, seq_len, batch_size=max(micro_batch, 1))
    flops_full = bd.training * tokens
    note = note or f"per-layer count of {shape.described_as}"
    memory: list[MemoryEstimate] = []
    for ckpt in (False, True):
        for strategy, group in _strategies(n_gpus):
            memory.append(memory_per_gpu(shape, seq_len, strategy, group, ckpt, micro_batch))
    suggestion = _suggest(shape, seq_len, n_gpus, gpu, micro_batch, usable, memory)
    return Plan(
        shape, tokens, seq_len, n_gpus, gpu, mfu, micro_batch, usable, flops_6nd, flops_full, note, memory, suggestion,
        extra={"breakdown": bd},
    )


def _suggest(shape, seq_len, n_gpus, gpu, micro_batch, usable, memory) -> str:
    # prefer no recomputation (ZeRO-1/2 are nearly free), then the smallest sharding group, then
    # activation checkpointing, then splitting each sequence over GPUs (context parallelism)
    cp = 1
    while cp <= max(n_gpus, 1):
        for ckpt in (False, True) if cp == 1 else (True,):
            for strategy, group in _strategies(n_gpus, all_hsdp=True):
                if cp > 1 and strategy not in ("HSDP", "FSDP"):
                    continue
                m = memory_per_gpu(shape, seq_len, strategy, group, ckpt, micro_batch, context_parallel=cp)
                if m.fits(gpu, usable):
                    text = _describe(m, n_gpus)
                    if cp > 1:
                        text += (
                            f"; context parallelism splits each {seq_len:,}-token sequence over {cp} GPUs (ring "
                            f"attention / all-to-all for attention layers, sequence-split FFT for Hyena layers)"
                        )
                    return text
        cp *= 2
    if n_gpus == 1:
        return (
            f"does not fit on one {gpu.name}, even with activation checkpointing: shard the states over "
            f"several GPUs (FSDP), or use a smaller model or a shorter context"
        )
    return (
        f"nothing fits on {n_gpus}x{gpu.name} even with FSDP, activation checkpointing and context parallelism "
        f"over all GPUs: add GPUs, use tensor or pipeline parallelism, or a shorter context"
    )


def _describe(m: MemoryEstimate, n_gpus: int) -> str:
    parts = {
        "DDP": f"plain DDP over {n_gpus} GPUs (every GPU holds all states)",
        "ZeRO-1": f"ZeRO-1 over {n_gpus} GPUs (optimizer state sharded)",
        "ZeRO-2": f"ZeRO-2 over {n_gpus} GPUs (optimizer state and gradients sharded)",
        "HSDP": f"HSDP: FSDP full sharding inside groups of {m.shard_group} GPUs"
        + (" (one node)" if m.shard_group == 8 else "")
        + f", replicated {n_gpus // max(m.shard_group, 1)} times",
        "FSDP": f"FSDP (ZeRO-3) full sharding over {n_gpus} GPUs",
    }[m.strategy]
    if m.activation_checkpointing:
        parts += ", with activation checkpointing (about 1/3 more compute: one extra forward)"
    return parts + f"; {m.total / GiB:.1f} GiB per GPU"


def _fmt_time(days: float) -> str:
    if days < 1 / 24:
        return f"{days * 1440:.1f} minutes"
    if days < 2:
        return f"{days * 24:.1f} hours"
    return f"{days:,.1f} days"


def format_plan(plan: Plan) -> str:
    """The human-readable report ``dnalm plan`` prints."""
    s = plan.shape
    lines = [
        f"model      {s.described_as}",
        f"           N = {s.n_params:.4g} parameters, {s.n_layer} layers, d_model {s.d_model}",
        f"data       D = {plan.tokens:.4g} tokens at context {plan.seq_len:,} ({plan.tokens / s.n_params:.1f} tokens per parameter)",
        f"hardware   {plan.n_gpus} x {plan.gpu.name}: {plan.gpu.peak_tflops:g} TFLOPS dense bf16, {plan.gpu.memory_gib:g} GiB each",
        f"           source: {plan.gpu.source}",
        "",
        "training compute",
        f"  6*N*D                     {plan.flops_6nd:.3e} FLOPs",
    ]
    if plan.flops_full is not None:
        ratio = plan.flops_full / plan.flops_6nd
        lines.append(f"  per-layer count (3x fwd)  {plan.flops_full:.3e} FLOPs  ({ratio:.2f} x 6ND; {plan.flops_full_note})")
        bd = plan.extra.get("breakdown")
        if bd is not None:
            attn = bd.terms.get("attention_core", 0.0)
            if attn:
                lines.append(
                    f"                            attention core (grows with context) = {100 * attn / bd.forward:.1f}% of it"
                )
            if bd.fft:
                lines.append(f"                            FFT long convolutions = {100 * bd.fft / bd.forward:.1f}% of it")
    lines += [
        f"  at MFU {plan.mfu:.2f}: {plan.gpu_days():,.1f} GPU-days = {_fmt_time(plan.wall_days())} wall-clock on {plan.n_gpus} GPUs (6ND)",
    ]
    if plan.flops_full is not None:
        lines.append(
            f"              {plan.gpu_days(plan.flops_full):,.1f} GPU-days = {_fmt_time(plan.wall_days(plan.flops_full))} (per-layer count)"
        )
    if plan.law_note:
        lines += ["", plan.law_note]
    lines += [
        "",
        f"memory per GPU (GiB), micro-batch {plan.micro_batch} x {plan.seq_len:,} tokens; fits = at most "
        f"{100 * plan.usable:.0f}% of {plan.gpu.memory_gib:g} GiB",
        f"  {'strategy':<42} {'weights':>8} {'grads':>8} {'optim':>8} {'buffers':>8} {'activ.':>8} {'logits':>7} {'total':>8}  fits",
    ]
    for m in plan.memory:
        lines.append(
            f"  {m.label:<42} {m.weights / GiB:8.1f} {m.grads / GiB:8.1f} {m.optimizer / GiB:8.1f} {m.buffers / GiB:8.1f} "
            f"{m.activations / GiB:8.1f} {m.logits / GiB:7.2f} {m.total / GiB:8.1f}  {'yes' if m.fits(plan.gpu, plan.usable) else 'no'}"
        )
    lines += ["", f"suggested layout: {plan.suggestion}"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ fitted laws


def load_law(path: str | Path, family: str | None = None) -> tuple[str, dict[str, float]]:
    """Read a fitted law (``fit.json`` from ``dnalm scaling fit``): (family, {E, A, B, alpha, beta, k}).

    ``family`` picks one when the file holds several; with one family it may be omitted.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected fit.json written by 'dnalm scaling fit')")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    fams = data.get("families") if isinstance(data, dict) else None
    if not isinstance(fams, dict) or not fams:
        raise ValueError(f"{path}: no 'families' section; is this a fit.json from 'dnalm scaling fit'?")
    if family is None:
        if len(fams) > 1:
            raise ValueError(f"{path} holds several families ({', '.join(fams)}); pick one with --family")
        family = next(iter(fams))
    if family not in fams:
        raise ValueError(f"{path}: no family {family!r} (has {', '.join(fams)})")
    law = fams[family].get("parametric")
    if not law or "alpha" not in law:
        raise ValueError(f"{path}: family {family!r} has no parametric fit")
    return family, {k: float(law[k]) for k in ("E", "A", "B", "alpha", "beta")} | {
        "k": float(fams[family].get("flops_per_param_token", 6.0))
    }


# ------------------------------------------------------------------------------------------ command


def plan_command(
    params: float | None = None,
    tokens: float | None = None,
    context: int | None = None,
    gpus: str = "8xH100",
    mfu: float = 0.35,
    preset: str | None = None,
    n_layer: int | None = None,
    d_model: int | None = None,
    vocab_size: int = 16,
    micro_batch: int = 1,
    usable: float = 0.95,
    law: str | None = None,
    family: str | None = None,
    compute: float | None = None,
) -> Plan:
    """What ``dnalm plan`` does: resolve the model (preset, N, or a fitted law and a compute budget),
    then :func:`make_plan`. Raises ValueError/ConfigError with a message naming the option at fault."""
    law_note = ""
    if law is not None or compute is not None:
        if law is None or compute is None:
            raise ValueError("--law and --flops go together: a fitted law recommends N and D for a compute budget")
        from dnalm.scaling.fit import optimal_allocation  # scipy: imported only when a law is used

        fam, coef = load_law(law, family)
        n_opt, d_opt = optimal_allocation(coef, compute, 6.0)
        n_opt, d_opt = float(n_opt), float(d_opt)
        loss = coef["E"] + coef["A"] / n_opt ** coef["alpha"] + coef["B"] / d_opt ** coef["beta"]
        law_note = (
            f"fitted law ({fam}, {law}): L = {coef['E']:.3g} + {coef['A']:.3g}/N^{coef['alpha']:.3f} + "
            f"{coef['B']:.3g}/D^{coef['beta']:.3f}\n"
            f"  for C = {compute:.3g} FLOPs (C = 6ND): N* = {n_opt:.3g}, D* = {d_opt:.3g} "
            f"({d_opt / n_opt:.1f} tokens per parameter), predicted loss {loss:.4f}\n"
            f"  (an extrapolation far outside the fitted range is only as good as the fit's exponents)"
        )
        params = params if params is not None else n_opt
        tokens = tokens if tokens is not None else d_opt
    if preset is not None:
        if params is not None or n_layer is not None or d_model is not None:
            raise ValueError("--preset fixes the model: leave out --params/--n-layer/--d-model")
        config = get_preset(preset)
        shape = shape_from_config(config, described_as=f"preset {preset}")
        context = context or config.max_len
    elif params is not None:
        shape = shape_from_params(params, n_layer, d_model, vocab_size)
    else:
        raise ValueError("say which model to plan: --params N, --preset NAME, or --law FIT.json with --flops C")
    if tokens is None:
        raise ValueError("--tokens is required (or --law with --flops, which recommends it)")
    plan = make_plan(shape, tokens, context or 8192, gpus, mfu, micro_batch, usable)
    plan.law_note = law_note
    return plan
