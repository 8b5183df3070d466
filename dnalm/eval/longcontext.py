"""One-pass inference over very long sequences: a 1,000,000-base sequence through a model on a CPU.

Why not ``model(ids)``: the ordinary forward keeps a whole layer's intermediates alive at once. At 1M
tokens and width 256 one (L, D) float32 tensor is 1 GiB, and a Hyena block holds about fifteen of them
(the 3D projection before and after the short convolution, the gates, FFT spectra, the 4D MLP), so the
plain forward peaks far above a laptop's memory. :func:`forward_long` computes the same numbers layer by
layer, with each block's own stages, in a schedule whose peak is set by a few (L, D) buffers:

- the residual stream (L, D) stays in float32 and each block updates it in place;
- position-wise parts (norms, projections, gates, MLPs) run in chunks of ``chunk`` positions; causal
  convolutions of finite length (Hyena short filters, Mamba-2's conv, StripedHyena 2's SE/MR filters) carry a
  halo of their last k-1 inputs from one chunk to the next;
- full-length long convolutions (HyenaDNA's implicit filters, StripedHyena's modal "hyena"/"li" filters)
  run ``channel_group`` channels at a time in float32 with FFT size ``fft_size(L)`` (the smallest even
  5-smooth n >= 2L - 1), each result written back over its input; the filter is built for those channels only
  where the family allows it;
- attention keeps the rotated keys and values (L, D) each and attends one chunk of queries at a time with
  PyTorch's flash kernel: the keys before the chunk without a mask, the chunk's own keys causally, the two
  combined through their log-sum-exp (no L x L matrix exists);
- Mamba-2 runs its chunked SSD scan chunk by chunk, the state carried across (chunks are whole multiples
  of the scan's own chunk size, so the arithmetic is the ordinary forward's);
- dnaHNet runs each stage's encoder, router, the deeper stage on the selected positions only, the EMA
  dechunking and the decoder in the same way, level by level.

Supported blocks: HyenaDNA (``HyenaBlock``), Transformer++ (``TransformerBlock``), StripedHyena 1/2
(``StripedHyenaBlock``) and dnaHNet (``HNetBackbone`` of Mamba-2 and attention blocks); anything else
runs its ordinary forward. Outputs equal the ordinary forward to float rounding (tests: every hidden state
within 1e-5 in float32). For hyenadna-large-1m on 1,000,001 tokens the whole process peaked at 4.94 GiB
resident (BENCHMARKS.md).

Before anything large is allocated, :func:`check_memory` compares :func:`estimate_memory` with the memory
available to this process (``MemAvailable`` and any cgroup limit, :mod:`dnalm.memory`) and raises
:class:`LongContextMemoryError`, a :class:`dnalm.data.errors.DataError`, so the command line prints it
as one line.

Scoring convention (as ``dnalm.eval.scoring``): natural-log likelihoods; position t of the output scores token
t+1 of the input, so with [BOS] prepended every base is scored; special tokens other than [UNK] are not, nor N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from dnalm.data.errors import DataError
from dnalm.eval.scoring import score, token_logprobs
from dnalm.memory import RUNTIME_BYTES, MemoryNeed, NotEnoughMemoryError, available_memory, gib, memory_limit
from dnalm.models.attention import CausalSelfAttention, RotaryEmbedding
from dnalm.models.heads import count_hidden_states
from dnalm.models.lm import HALF, blocks_of, float32_params
from dnalm.models.hnet import HNetBackbone, HNetStage, Stack, ema_smooth
from dnalm.models.hyena import HyenaBlock
from dnalm.models.mamba2 import Mamba2Block, ssd_scan
from dnalm.models.striped_hyena import HyenaMixer, StripedHyenaBlock, modal_filter, split_streams
from dnalm.models.transformer import TransformerBlock
from dnalm.ops.fftconv import fft_long_conv, fft_size
from dnalm.runtime import half_compute
from dnalm.tokenizer import decode

__all__ = [
    "LONG_FROM", "DEFAULT_CHUNK", "LongContextMemoryError", "MemoryEstimate", "available_memory",
    "estimate_memory", "check_memory", "forward_long", "one_pass_supported", "score_records", "tokens_for",
    "RecordScore",
]  # fmt: skip

LONG_FROM = 32_768  # tokens: from this length on, dnalm score and dnalm embed use forward_long
DEFAULT_CHUNK = 16_384  # positions per chunk of the position-wise parts (at most; see auto_chunk)
CHUNK_BYTES = 512 * 2**20  # budget for one chunk's temporaries (projections, the MLP's hidden layer)
FFT_GROUP_BYTES = 256 * 2**20  # budget for one channel group's FFT buffers

Output = Literal["logits", "hidden", "logprobs"]
MemoryEstimate = MemoryNeed  # the name this module used before dnalm.memory existed


class LongContextMemoryError(DataError, NotEnoughMemoryError):
    """The one-pass computation would not fit in the memory available; nothing large was allocated."""


def channel_group_size(length: int, channels: int, extra_per_channel: int = 0) -> int:
    """Channels per FFT group: as many as fit in FFT_GROUP_BYTES (spectra of input and filter, the
    inverse transform and the output, per channel about 12 n + 8 L bytes, plus ``extra_per_channel``)."""
    n = fft_size(length)
    per_channel = 12 * n + 8 * length + extra_per_channel
    return max(1, min(channels, FFT_GROUP_BYTES // per_channel))


# ------------------------------------------------------------------------------------------ support


def _block_pass(block: nn.Module) -> Callable[..., None] | None:
    """The in-place one-pass schedule of one block, or None when the block type has none."""
    if isinstance(block, HyenaBlock):
        return _hyena_block_
    if isinstance(block, TransformerBlock):
        return _transformer_block_
    if isinstance(block, StripedHyenaBlock):
        return _striped_block_
    if isinstance(block, Mamba2Block):
        return _mamba_block_
    return None


def _stack_supported(layers: Any) -> bool:
    return bool(layers) and all(_block_pass(b) is not None for b in layers)


def _hnet_supported(stage: HNetStage) -> bool:
    if stage.innermost:
        return _stack_supported(stage.main.layers)
    return _stack_supported(stage.encoder.layers) and _stack_supported(stage.decoder.layers) and _hnet_supported(
        stage.main
    )


def one_pass_supported(model: Any) -> bool:
    """Whether :func:`forward_long` has a memory-lean schedule for ``model``'s backbone."""
    bb = getattr(model, "backbone", None)
    if isinstance(bb, HNetBackbone):
        return _hnet_supported(bb.stage0)
    return _stack_supported(getattr(bb, "layers", None))


# ------------------------------------------------------------------------------------------ memory


def _linear_out(module: nn.Module) -> int:
    """Widest Linear output of a module (the MLP's hidden width, a projection's 3D): a chunk's temporaries."""
    return max([m.out_features for m in module.modules() if isinstance(m, nn.Linear)] or [0])


def _block_bytes(block: nn.Module, L: int, c: int, item: int) -> int:
    """What one block's schedule holds besides the residual stream: its (L, *) buffers plus one chunk's
    temporaries or one FFT channel group (whichever is larger)."""
    D = (block.norm1 if hasattr(block, "norm1") else block.norm).weight.shape[0]
    wide = _linear_out(block)
    chunk_tmp = c * (3 * wide * item + 4 * D * 4)
    n = fft_size(L)
    if isinstance(block, HyenaBlock):
        mixer = block.mixer
        N, C = mixer.order, (mixer.order - 1) * D
        filters = L * C * 4  # the filter table
        group = channel_group_size(L, D)
        phases = {
            # filter table + one chunk of the filter MLP (its hidden layers and the window)
            "filters": filters + c * (3 * _linear_out(mixer.filter_fn) + 3 * C) * 4,
            # filter table + N streams (x0, gates, v*x) + one chunk of projections or one FFT group
            "mixer": filters + N * L * D * item + max(c * (N + 1) * D * item * 4, group * (12 * n + 8 * L)),
            # out_proj + MLP per chunk, x0 * v still held
            "mlp": L * D * item + c * (block.mlp.fc1.out_features * 2 + 4 * D) * 4,
        }
        return max(phases.values())
    mixer = getattr(block, "mixer", None) or getattr(block, "attn", None)
    if isinstance(mixer, CausalSelfAttention):
        return 2 * L * D * item + chunk_tmp + c * mixer.n_head * 4 * 4  # keys, values; a chunk; its log-sum-exp
    if isinstance(mixer, HyenaMixer):
        group = channel_group_size(L, D, 4 * L)
        return 2 * L * D * item + max(chunk_tmp, group * (12 * n + 12 * L))  # x2 and u; chunk or FFT group + filters
    if isinstance(block, Mamba2Block):
        m = block.mixer
        return chunk_tmp + c * m.nheads * m.chunk_size * 4 * 3  # the SSD scan's (T, T) weights per chunk
    return chunk_tmp


def auto_chunk(model: Any) -> int:
    """Positions per chunk: DEFAULT_CHUNK, fewer for wide models so that one chunk's temporaries (three of the
    widest projection's outputs in the weights' dtype, four float32 rows of the residual width) stay within
    CHUNK_BYTES; a multiple of 256 (Mamba-2's scan chunks divide it)."""
    item = next(model.parameters()).element_size()
    D = model.config.d_model
    per_position = 3 * _linear_out(model.backbone) * item + 16 * D
    return int(max(256, min(DEFAULT_CHUNK, CHUNK_BYTES // max(per_position, 1) // 256 * 256)))


def estimate_memory(model: Any, length: int, output: Output = "logits", chunk: int | None = None) -> MemoryNeed:
    """Peak memory of ``forward_long(model, ids of this length, output)``; ``model`` may live on the meta device.

    The terms follow the schedule (module docstring): runtime, weights, token ids, the float32 residual
    stream, the largest block's buffers, the output. A dnaHNet stage adds its own residual stream and the
    stage below at the target ratios (a router that keeps more positions needs more). The benchmarks
    (benchmarks/bench_1m.py, bench_long.py) print this estimate beside the measured peak.
    """
    if not one_pass_supported(model):
        raise ValueError(f"no one-pass schedule for this model ({type(model.backbone).__name__})")
    cfg = model.config
    L, V = int(length), cfg.vocab_size
    item = next(model.parameters()).element_size()
    c = min(chunk or auto_chunk(model), L)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    params += sum(b.numel() * b.element_size() for b in model.buffers())
    bb = model.backbone
    if isinstance(bb, HNetBackbone):
        streams, largest, n_pos, stage = 0, 0, float(L), bb.stage0
        while True:
            d = stage.d
            Ls = int(math.ceil(n_pos))
            layers = list(stage.main.layers) if stage.innermost else [*stage.encoder.layers, *stage.decoder.layers]
            largest = max([largest] + [_block_bytes(b, Ls, min(c, Ls), item) for b in layers])
            streams += Ls * d * 4 + (0 if stage.innermost else Ls * (d * 4 + 8 + 4))  # stream, chunks, p/index
            if stage.innermost:
                break
            n_pos /= stage.target_ratio
            stage = stage.main
        residual = streams
    else:
        residual = L * cfg.d_model * 4
        largest = max(_block_bytes(b, L, c, item) for b in bb.layers)
    out_bytes = {"logits": L * V * 4, "hidden": 0, "logprobs": L * 4 + c * V * 4 * 3}[output]
    parts = {
        "runtime": RUNTIME_BYTES,
        "weights": params,
        "one block's float32 copy": block_float32_bytes(model),
        "token ids": L * 8,
        "RoPE tables": rope_table_bytes(model, L),
        "retained per attention block": attention_retained_bytes(model),
        "residual (L, D) float32": residual,
        "largest layer phase": largest,
        "output": out_bytes,
    }
    return MemoryNeed(int(sum(parts.values())), parts)


def rope_table_bytes(model: Any, length: int) -> int:
    """The cos/sin tables the attention layers keep after a pass over ``length`` positions (grown by doubling,
    at most ``RotaryEmbedding.CACHE_ROWS`` rows each), plus the angles of one call past the cache."""
    ropes = [m for m in model.modules() if isinstance(m, RotaryEmbedding)]
    if not ropes:
        return 0
    rows = min(2 * length, RotaryEmbedding.CACHE_ROWS)
    kept = sum(2 * rows * (m.head_dim // 2) * 4 for m in ropes)  # cos and sin, float32
    return kept + (length * (ropes[0].head_dim // 2) * 8 * 3 if length > RotaryEmbedding.CACHE_ROWS else 0)


def attention_retained_bytes(model: Any) -> int:
    """Memory a pass keeps after each attention block, half of the block's weight bytes per block: an
    empirical term. Measured with bf16 weights at width 2048 (Transformer++ blocks, 1 against 6 blocks): the
    peak grew by 39 MB per extra block at 16,384 tokens and 43-51 MB at 32,768 beyond the weights and every
    term above (a block's weights are 98 MB); the cause (allocator or oneDNN caches) was not isolated, and
    glibc's malloc_trim after each block did not release it."""
    total = 0
    for m in model.modules():
        if isinstance(m, (TransformerBlock, StripedHyenaBlock)) and isinstance(getattr(m, "attn", None) or
                                                                              getattr(m, "mixer", None),
                                                                              CausalSelfAttention):
            total += sum(p.numel() * p.element_size() for p in m.parameters()) // 2
    return total


def block_float32_bytes(model: Any) -> int:
    """The float32 copy of the largest block's half-precision weights (bf16 as released), which a pass that
    computes in float32 holds besides the stored weights (0 for float32 weights)."""
    def half_bytes(module: nn.Module) -> int:
        return sum(p.numel() * 4 for p in module.parameters() if p.dtype in HALF)

    blocks = blocks_of(model.backbone)
    if blocks == [model.backbone]:  # no flat list of blocks (dnaHNet): its stages' layers, one at a time
        blocks = [b for m in model.backbone.modules() if isinstance(m, nn.ModuleList) for b in m] or blocks
    return max([half_bytes(b) for b in blocks] + [half_bytes(model.norm_f)])


def check_memory(
    model: Any, length: int, output: Output = "logits", max_memory: int | None = None, chunk: int | None = None
) -> MemoryNeed | None:
    """Raise LongContextMemoryError if the one-pass estimate exceeds ``max_memory`` bytes (default: what
    :func:`dnalm.memory.memory_limit` reports). None for models without a one-pass schedule."""
    if not one_pass_supported(model):
        return None
    est = estimate_memory(model, length, output, chunk)
    limit, source = memory_limit(max_memory)
    if limit is not None and est.total > limit:
        raise LongContextMemoryError(
            f"scoring {length:,} tokens in one pass needs about {est} (residual stream "
            f"{gib(est.parts['residual (L, D) float32'])}, largest layer phase "
            f"{gib(est.parts['largest layer phase'])}, weights {gib(est.parts['weights'])}), but only {gib(limit)} "
            f"is available ({source}); free memory, use a machine with more, or score shorter pieces "
            "(e.g. dnalm eval --seq-len)"
        )
    return est


# ------------------------------------------------------------------------------------------ the pass


class _Stop(Exception):
    """Raised with the requested hidden state as soon as it is computed (nothing after it runs)."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value


@dataclass
class _Ctx:
    chunk: int
    group: int | None
    upcast: bool = False  # run each half-precision block in float32 (converted for its pass only)
    want: int | None = None  # hidden-state index to stop at (HNet taps), None = run to the end
    tap: int = 0  # index of the next hidden state produced


@torch.no_grad()  # not inference_mode: tables a module caches here stay usable for training later
def forward_long(
    model: Any,
    ids: torch.Tensor | np.ndarray,
    output: Output = "logits",
    layer: int = -1,
    chunk: int | None = None,
    channel_group: int | None = None,
    check: bool = True,
    max_memory: int | None = None,
    compute: Literal["auto", "float32", "weights"] | None = None,
) -> torch.Tensor:
    """Run one long token sequence ``ids`` (L,) through ``model`` in a single pass (no windows).

    ``output``: ``"logits"`` (L, V) float32; ``"hidden"`` (L, D) float32, the hidden state ``layer``
    indexed as ``DNALM``'s ``hidden_states`` (0 = embeddings, i = after block i or the i-th stage tap of a
    dnaHNet, -1 = after the final norm); ``"logprobs"`` (L-1,) float32, log p(ids[t+1] | ids[:t+1]).
    Supported models (:func:`one_pass_supported`) use the memory-lean schedule of the module docstring
    (same numbers as ``model(ids)`` to float rounding); others run their ordinary forward. With ``check``,
    the memory estimate is compared with the available memory first (see :func:`check_memory`).

    ``compute``: the dtype of a block's matmuls when the weights are in half precision (bf16 as released):
    ``"weights"`` computes in their dtype, ``"float32"`` converts one block at a time to float32 for its pass
    (the stored weights stay untouched; one block's float32 copy is the only extra memory), ``"auto"`` picks
    bf16 where this CPU has native bf16 arithmetic (:func:`dnalm.runtime.fast_bf16`) and float32 elsewhere;
    None (default) follows the model's own ``compute`` setting and the command line's ``--precision``
    (:func:`dnalm.runtime.half_compute`), as the ordinary forward does. Long convolutions, norms and the
    residual stream are float32 in every case.
    """
    ids = torch.as_tensor(np.asarray(ids) if isinstance(ids, np.ndarray) else ids).long().reshape(-1)
    L = ids.shape[0]
    cfg = model.config
    if L > cfg.max_len:
        raise DataError(f"input of {L:,} tokens exceeds the model's maximum length {cfg.max_len:,}")
    if L < 1:
        raise DataError("forward_long needs at least one token")
    if output not in ("logits", "hidden", "logprobs"):
        raise ValueError(f"output must be logits, hidden or logprobs (got {output!r})")
    chunk = chunk or auto_chunk(model)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 (got {chunk})")
    n_states = count_hidden_states(model)
    if not -n_states <= layer < n_states:
        raise DataError(f"layer {layer} out of range: hidden states are 0..{n_states - 1} (or -1..-{n_states})")
    was_training = model.training
    model.eval()
    try:
        ids = ids.to(model.device)
        if not one_pass_supported(model):
            return _plain_forward(model, ids, output, layer % n_states)
        if check:
            check_memory(model, L, output, max_memory, chunk)
        want = layer % n_states if output == "hidden" else None
        half = any(p.dtype in HALF for p in model.parameters())
        mode = getattr(model, "compute", "auto") if compute is None else compute
        upcast = half and half_compute(mode, ids.device.type, ambient=compute is None) == "float32"
        ctx = _Ctx(chunk, channel_group, upcast, want if want is not None and want < n_states - 1 else None)
        try:
            r = _backbone_forward(model, ids, ctx)
        except _Stop as stop:
            return stop.value
        with float32_params(model.norm_f, upcast):
            return _head(model, r, ids, output, chunk, upcast)
    finally:
        model.train(was_training)


def _plain_forward(model: Any, ids: torch.Tensor, output: Output, layer: int) -> torch.Tensor:
    out = model(ids[None], output_hidden_states=output == "hidden")
    if output == "hidden":
        return out.hidden_states[layer][0].float()  # (L, D)
    logits = out.logits[0]  # (L, V)
    if output == "logits":
        return logits
    return token_logprobs(logits[:-1], ids[1:])  # (L-1,)


def _run_block(block: nn.Module, r: torch.Tensor, ctx: _Ctx) -> None:
    """One block's in-place pass; with ``ctx.upcast`` its half-precision weights are float32 for the pass."""
    with float32_params(block, ctx.upcast):
        _block_pass(block)(block, r, ctx)


def _emit(ctx: _Ctx, value: torch.Tensor) -> None:
    """A hidden state was produced; stop with it if it is the one asked for."""
    if ctx.want is not None and ctx.tap == ctx.want:
        raise _Stop(value)
    ctx.tap += 1


def _backbone_forward(model: Any, ids: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
    """Embeddings -> the backbone's output (L, D) float32, before the final norm."""
    x = model.embed(ids)  # (L, D)
    r = x.float()  # (L, D) float32 residual stream (no copy for float32 weights)
    del x
    _emit(ctx, r)
    bb = model.backbone
    if isinstance(bb, HNetBackbone):
        return _hnet_stage(bb.stage0, r, ctx, outermost=True)
    for block in bb.layers:
        _run_block(block, r, ctx)  # in place
        _emit(ctx, r)
    return r


def _head(model: Any, r: torch.Tensor, ids: torch.Tensor, output: Output, chunk: int, upcast: bool = False):
    L = r.shape[0]
    norm, head = model.norm_f, model.head_weight
    head = head.float() if upcast else head  # (V, D): small
    if output == "hidden":
        for s in range(0, L, chunk):
            r[s : s + chunk] = norm(r[s : s + chunk].to(norm.weight.dtype)).float()  # (c, D)
        return r
    result = torch.empty((L, model.config.vocab_size) if output == "logits" else (L - 1,), device=r.device)
    for s in range(0, L, chunk):
        e = min(L, s + chunk)
        logits = F.linear(norm(r[s:e].to(norm.weight.dtype)), head).float()  # (c, V)
        if output == "logits":
            result[s:e] = logits
        elif s < L - 1:
            e1 = min(e, L - 1)  # the last position predicts nothing inside the sequence
            result[s:e1] = token_logprobs(logits[: e1 - s], ids[s + 1 : e1 + 1])
    return result


def _chunks(L: int, chunk: int):
    for s in range(0, L, chunk):
        yield s, min(L, s + chunk)


def _causal_conv_chunk(x: torch.Tensor, history: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """A depthwise causal convolution of one chunk x (1, C, c) given the k-1 inputs before it (1, C, k-1):
    (output (1, C, c), the new history). ``weight`` (C, 1, k) in conv1d order (last tap = lag 0)."""
    xin = torch.cat([history, x], dim=-1)  # (1, C, k-1+c)
    y = F.conv1d(xin, weight, bias, groups=x.shape[1])  # (1, C, c): no padding, the history is it
    k1 = history.shape[-1]
    return y, xin[..., xin.shape[-1] - k1 :] if k1 else history


# ---- HyenaDNA


def _filters(mixer: Any, L: int, chunk: int) -> torch.Tensor:
    """The operator's long filters for length L as a contiguous (C, L) float32 table, built chunk by chunk
    of positions (the filter MLP and its window are position-wise); same values as ``long_filter(L)``."""
    fn = mixer.filter_fn
    if not all(hasattr(fn, a) for a in ("pos_emb", "implicit_filter", "modulation")):
        return mixer.long_filter(L).contiguous()
    if L > fn.l_max:
        return mixer.long_filter(L)  # raises the model's own error
    z, t = fn.pos_emb(L)  # (L, emb_dim), (L, 1)
    C = fn.bias.shape[0]
    h = torch.empty(C, L, dtype=torch.float32, device=z.device)  # (C, L), lag 0 first
    with torch.autocast(device_type=z.device.type, enabled=False):
        for s in range(0, L, chunk):
            e = min(L, s + chunk)
            h[:, s:e] = fn.modulation(t[s:e].float(), fn.implicit_filter(z[s:e])).t()  # (C, c)
    return h


def _hyena_block_(block: Any, r: torch.Tensor, ctx: _Ctx) -> None:
    """``r = block(r)`` for a HyenaBlock, in place.

    The operator's own stages (``HyenaOperator.short_conv``, ``long_conv``, ``output``) do the math;
    this function only schedules them. Streams are kept position-major, (L, D) like the residual, so every
    chunk reads and writes whole rows; a stage's (1, C, c) layout is a transposed view of a chunk.
    """
    chunk = ctx.chunk
    mixer = block.mixer
    L, D, N = r.shape[0], mixer.d_model, mixer.order
    k = mixer.short_filter.kernel_size[0]
    group = ctx.group or channel_group_size(L, D)
    h = _filters(mixer, L, chunk)  # ((N-1) D, L) float32

    # projections and the causal short convolution, chunk by chunk; keep x0, the gates, and v * x_{N-1}
    x0 = w = history = None
    rest: list[torch.Tensor] = []  # gates x_1 .. x_{N-2}, applied after the first long convolution
    for s, e in _chunks(L, chunk):
        z = mixer.in_proj(block.norm1(r[s:e].to(block.norm1.weight.dtype))).t()[None]  # (1, C, c)
        if x0 is None:
            x0, w = z.new_empty(L, D), z.new_empty(L, D)  # (L, D) each
            rest = [z.new_empty(L, D) for _ in range(N - 2)]
        if history is None:
            history = z.new_zeros(1, z.shape[1], k - 1)  # zeros before the sequence, as the causal conv sees
        zc = mixer.short_conv(z, history)[0].t()  # (c, C)
        history = torch.cat([history, z], dim=-1)[..., z.shape[-1] :]  # the last k-1 inputs, for the next chunk
        x0_c, *gates, v_c = zc.split(D, dim=1)  # each (c, D)
        x0[s:e] = x0_c
        torch.mul(v_c, gates[-1], out=w[s:e])  # the first long-conv input: v * x_{N-1}
        for buf, g in zip(rest, gates[:-1]):
            buf[s:e] = g
    del z, zc, history

    # long convolutions, a channel group at a time, written back over their input
    for o in range(N - 1):  # filter bank o goes with gate x_{N-1-o}, as in HyenaOperator.forward
        if o > 0:
            w.mul_(rest[N - 2 - o])
        for g0 in range(0, D, group):
            g1 = min(D, g0 + group)
            u = w[:, g0:g1].t().contiguous()[None]  # (1, g, L)
            w[:, g0:g1] = mixer.long_conv(u, o, h, channels=slice(g0, g1))[0].t()  # (L, g)
            del u
    del h, rest

    # the output gate, out_proj and the MLP are position-wise: update the residual chunk by chunk
    n2 = block.norm2.weight.dtype
    for s, e in _chunks(L, chunk):
        r[s:e] += mixer.output(x0[s:e].t()[None], w[s:e].t()[None])[0]  # (c, D)
        r[s:e] += block.mlp(block.norm2(r[s:e].to(n2)))  # (c, D)


# ---- attention (Transformer++, StripedHyena, dnaHNet)

_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s: int) -> torch.Tensor:
    """Causal attention of the queries q (1, H, c, hd) at positions s..s+c-1 over keys/values (1, H, s+c, hd).

    The keys before s are all visible (no mask), the chunk's own keys causally; the two partial results are
    combined through their log-sum-exp, so no (c, s+c) mask or score matrix is ever materialised."""
    if s == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if q.device.type != "cpu" or _flash is None:  # other devices: a boolean mask over this chunk's rows
        c = q.shape[2]
        mask = torch.ones(c, s + c, dtype=torch.bool, device=q.device).tril(s)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    o1, l1 = _flash(q, k[:, :, :s], v[:, :, :s], 0.0, False)
    o2, l2 = _flash(q, k[:, :, s:], v[:, :, s:], 0.0, True)
    m = torch.maximum(l1, l2)
    w1, w2 = (l1 - m).exp()[..., None], (l2 - m).exp()[..., None]  # (1, H, c, 1) float32
    return ((o1.float() * w1 + o2.float() * w2) / (w1 + w2)).to(q.dtype)


def _attention_(attn: CausalSelfAttention, norm: nn.Module, r: torch.Tensor, chunk: int) -> None:
    """``r += attn(norm(r))`` in place: keys and values for all positions first, then queries by chunk."""
    L = r.shape[0]
    dt = norm.weight.dtype
    keys = values = None
    for s, e in _chunks(L, chunk):
        _, k, v = attn._qkv(norm(r[s:e].to(dt))[None], s)  # (1, H, c, hd), RoPE at positions s..e-1
        if keys is None:
            keys = k.new_empty(1, k.shape[1], L, k.shape[3])
            values = v.new_empty(1, v.shape[1], L, v.shape[3])
        keys[:, :, s:e], values[:, :, s:e] = k, v
    for s, e in _chunks(L, chunk):  # r[s:] is untouched until its own chunk: the queries see the block's input
        q, _, _ = attn._qkv(norm(r[s:e].to(dt))[None], s)
        y = _attend(q, keys[:, :, :e], values[:, :, :e], s)  # (1, H, c, hd)
        r[s:e] += attn._merge(y)[0].float()


def _mlp_(norm: nn.Module, mlp: nn.Module, r: torch.Tensor, chunk: int) -> None:
    dt = norm.weight.dtype
    for s, e in _chunks(r.shape[0], chunk):
        r[s:e] += mlp(norm(r[s:e].to(dt))).float()


def _transformer_block_(block: TransformerBlock, r: torch.Tensor, ctx: _Ctx) -> None:
    _attention_(block.attn, block.norm1, r, ctx.chunk)
    _mlp_(block.norm2, block.mlp, r, ctx.chunk)


# ---- StripedHyena 1 and 2


def _striped_block_(block: StripedHyenaBlock, r: torch.Tensor, ctx: _Ctx) -> None:
    if isinstance(block.mixer, CausalSelfAttention):
        _attention_(block.mixer, block.norm1, r, ctx.chunk)
    else:
        _striped_hyena_mixer_(block.mixer, block.norm1, r, ctx)
    _mlp_(block.norm2, block.mlp, r, ctx.chunk)


def _striped_hyena_mixer_(mixer: HyenaMixer, norm: nn.Module, r: torch.Tensor, ctx: _Ctx) -> None:
    """``r += mixer(norm(r))`` for a StripedHyena (Evo 1 / Evo 2) Hyena operator, in place, on the operator's
    own stages: :meth:`~HyenaMixer.featurize` by chunk (fed the k-1 rows before the chunk as its halo),
    :func:`split_streams`, x2 and u = x1 * v kept (L, D); the long convolution by channel group for the
    full-length modal filters ("hyena" / hcl: the filter built for the group's channels only, FFT in float32),
    or :meth:`~HyenaMixer.long_conv` itself by chunk with a halo for the explicit ones (hcs, hcm); then
    :meth:`~HyenaMixer.output` and the residual by chunk."""
    L, D, chunk = r.shape[0], mixer.d_model, ctx.chunk
    dt = norm.weight.dtype
    k1 = mixer.short_filter.shape[-1] - 1
    x2 = u = None
    for s, e in _chunks(L, chunk):
        s0 = max(0, s - k1)  # the featurizer's halo: its causal FIR sees the k-1 rows before the chunk
        z, _ = mixer.featurize(norm(r[s0:e].to(dt))[None])  # (1, 3D, e - s0)
        zx2, x1, v = split_streams(z[..., s - s0 :], mixer.version, mixer.n_head)  # (1, D, c) each
        if x2 is None:
            x2, u = zx2.new_empty(L, D), zx2.new_empty(L, D)  # (L, D) each, position-major
        x2[s:e] = zx2[0].t()
        u[s:e] = (x1 * v)[0].t()
    del z, zx2, x1, v

    n = mixer.long_filter(2).shape[-1]  # 2 for a full-length (modal) filter, else the explicit FIR's length
    if n == 2:  # full-length modal filter: FFT by channel group, as long_conv does for all channels at once
        log_p, res = mixer.modal_params()  # (D, S) each
        group = ctx.group or channel_group_size(L, D, 4 * L)
        for g0 in range(0, D, group):
            g1 = min(D, g0 + group)
            h = modal_filter(log_p[g0:g1], res[g0:g1], L)  # (g, L) float32
            ug = u[:, g0:g1].t().contiguous()[None]  # (1, g, L)
            skip = None if mixer.skip is None else mixer.skip[g0:g1]
            u[:, g0:g1] = fft_long_conv(ug, h, skip)[0].t()
            del h, ug
    else:  # an explicit FIR (hcs, hcm): the operator's own long_conv over each chunk and its n-1-row halo
        prev = u.new_zeros(1, D, 0)
        for s, e in _chunks(L, chunk):
            ui = torch.cat([prev, u[s:e].t()[None]], dim=-1)  # (1, D, halo + c)
            halo = prev.shape[-1]
            prev = ui[..., max(0, ui.shape[-1] - (n - 1)) :].clone()
            u[s:e] = mixer.long_conv(ui)[0, :, halo:].t()  # (c, D)
    for s, e in _chunks(L, chunk):
        r[s:e] += mixer.output(x2[s:e].t()[None], u[s:e].t()[None])[0].float()  # (c, D)


# ---- Mamba-2 (dnaHNet)


def _mamba_block_(block: Mamba2Block, r: torch.Tensor, ctx: _Ctx) -> None:
    """``r += mixer(norm(r))`` for a Mamba-2 block: the conv with a halo and the SSD scan with its state
    carried from chunk to chunk (chunks are whole multiples of the scan's chunk size)."""
    m = block.mixer
    T = m.chunk_size
    step = max(T, ctx.chunk // T * T)
    dt = block.norm.weight.dtype
    k1 = m.d_conv - 1
    state = hist = None
    for s, e in _chunks(r.shape[0], step):
        z, xbc, dt_raw = m._split(m.in_proj(block.norm(r[s:e].to(dt))[None]))  # (1, c, E), (1, c, conv), (1, c, H)
        xt = xbc.transpose(1, 2)  # (1, conv_dim, c)
        if hist is None:
            hist = xt.new_zeros(1, xt.shape[1], k1)
        y, hist = _causal_conv_chunk(xt, hist, m.conv1d.weight, m.conv1d.bias)
        hist = hist.clone()
        x, Bm, Cm, dtv, A = m._ssm_inputs(F.silu(y).transpose(1, 2), dt_raw)
        ys, state = ssd_scan(x, dtv, A, Bm, Cm, T, state, fast=m.fast)  # (1, c, H, P)
        r[s:e] += m._output(ys, x, z)[0].float()


# ---- dnaHNet


def _stack_(stack: Stack, r: torch.Tensor, ctx: _Ctx) -> None:
    """A dnaHNet layer stack in place: its blocks, then its final norm (if any), by chunk."""
    for layer in stack.layers:
        _run_block(layer, r, ctx)
    if isinstance(stack.norm, nn.RMSNorm):
        dt = stack.norm.weight.dtype
        for s, e in _chunks(r.shape[0], ctx.chunk):
            r[s:e] = stack.norm(r[s:e].to(dt)).float()


def _hnet_stage(stage: HNetStage, x: torch.Tensor, ctx: _Ctx, outermost: bool = False) -> torch.Tensor:
    """One dnaHNet stage on x (L, d_prev) float32 -> (L, d_prev) float32, as ``HNetStage.forward`` for one
    unpadded sequence; the outermost stage reports its taps (encoder output, decoder input, decoder output)."""
    D = x.shape[-1]
    if stage.pad is not None:
        x = torch.cat([x, stage.pad.float().expand(x.shape[0], -1)], dim=-1)  # (L, d)
    if stage.innermost:
        _stack_(stage.main, x, ctx)
        return x[:, :D]
    L, chunk = x.shape[0], ctx.chunk
    h = x  # the encoder runs in place: h becomes its output
    _stack_(stage.encoder, h, ctx)
    if outermost:
        _emit(ctx, h)
    dt = stage.router.q_proj.weight.dtype
    p = torch.ones(L, dtype=torch.float32, device=h.device)  # p_0 = 1: the first position starts a chunk
    for s, e in _chunks(L, chunk):
        s1 = max(s, 1)
        if s1 < e:
            p[s1:e] = stage.router._prob(h[s1:e].to(dt), h[s1 - 1 : e - 1].to(dt))
    b = p > 0.5
    index = torch.nonzero(b).flatten()  # (M,) positions that start a chunk
    zc = _hnet_stage(stage.main, h[index], ctx)  # (M, d): the deeper network on the chunks only
    P = p[index].clamp(1e-4, 1 - 1e-4)
    zbar = ema_smooth(zc.to(dt)[None], P[None], stage.chunk_size)[0]  # (M, d)
    del zc
    which = (torch.cumsum(b.long(), 0) - 1).clamp_min(0)  # (L,) each position's chunk
    for s, e in _chunks(L, chunk):  # decoder input: dechunked value (STE factor 1) + residual projection
        h[s:e] = (zbar[which[s:e]] + stage.residual_proj(h[s:e].to(dt))).float()
    del zbar, which, p, b, index
    if outermost:
        _emit(ctx, h)
    _stack_(stage.decoder, h, ctx)
    if outermost:
        _emit(ctx, h)
    return h[:, :D]


# ------------------------------------------------------------------------------------- dnalm score


@dataclass
class RecordScore:
    name: str
    length: int  # bases in the record
    scored: int  # positions scored (bases and [UNK], not N; the first base only with [BOS])
    loglik_sum: float  # natural log
    one_pass: bool  # True: forward_long; False: batched dnalm.score

    @property
    def loglik_mean(self) -> float:
        return self.loglik_sum / self.scored if self.scored else float("nan")


def tokens_for(model: Any, ids: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """Token ids of one record under the model's tokenizer rules ([BOS]/[SEP], lower case as [UNK])."""
    tok = model.tokenizer
    ids = tok.model_ids(np.asarray(ids, dtype=np.int64), lower).astype(np.int64)  # [UNK] / Evo bytes
    parts = ([np.array([tok.bos_id])] if tok.prepend_bos else []) + [ids] + ([np.array([tok.sep_id])] if tok.append_sep else [])
    return np.concatenate(parts).astype(np.int64)


def score_records(
    model: Any,
    records: list,
    long_from: int = LONG_FROM,
    batch_size: int = 8,
    max_memory: int | None = None,
    progress: bool = False,
) -> list[RecordScore]:
    """Log-likelihood of each record (``dnalm.data.fasta.SeqRecord``): records of ``long_from`` tokens or
    more go through :func:`forward_long` one at a time, shorter ones through batched ``dnalm.score``."""
    limit = int(model.config.max_len)
    toks = [tokens_for(model, r.ids, r.lower) for r in records]
    for r, t in zip(records, toks):
        if len(t) > limit:
            raise DataError(
                f"record {r.name!r} has {len(r):,} bases ({len(t):,} tokens) but the model accepts at most "
                f"{limit:,} tokens; use a longer-context model, or score it in windows with dnalm eval --fasta"
            )
    long_idx = [i for i, t in enumerate(toks) if len(t) >= long_from]
    for i in long_idx:  # fail before any work if a long record cannot fit
        check_memory(model, len(toks[i]), "logprobs", max_memory)
    out: list[RecordScore | None] = [None] * len(records)
    short_idx = [i for i in range(len(records)) if i not in set(long_idx)]
    bar = tqdm(total=sum(len(r) for r in records), desc="score", unit="base", unit_scale=True,
               disable=not progress, dynamic_ncols=True)
    try:
        for b0 in range(0, len(short_idx), batch_size):
            part = short_idx[b0 : b0 + batch_size]
            per_base = score(model, [decode(records[i].ids, records[i].lower) for i in part], reduce="none",
                             batch_size=batch_size)
            for i, lp in zip(part, per_base):
                out[i] = RecordScore(records[i].name, len(records[i]), int(np.isfinite(lp).sum()), float(np.nansum(lp)),
                                     False)  # NaN at N: not scored
                bar.update(len(records[i]))
        for i in long_idx:
            t = torch.from_numpy(toks[i])
            lp = forward_long(model, t, "logprobs", check=False)  # (L-1,)
            counted = model.tokenizer.scored(t[1:]).to(lp.device)  # bases and [UNK], not N, as dnalm.score
            out[i] = RecordScore(records[i].name, len(records[i]), int(counted.sum()),
                                 float(lp[counted].double().sum()), True)
            bar.update(len(records[i]))
    finally:
        bar.close()
    return out  # type: ignore[return-value]
