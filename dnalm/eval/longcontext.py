"""One-pass inference over very long sequences: a 1,000,000-base sequence through HyenaDNA on a CPU.

Why not ``model(ids)``: the ordinary forward keeps a whole layer's intermediates alive at once. At 1M
tokens and width 256 one (L, D) float32 tensor is 1 GiB, and a Hyena block holds about fifteen of them
(the 3D projection before and after the short convolution, the gates, FFT spectra, the 4D MLP), so the
plain forward peaks far above a laptop's memory. :func:`forward_long` computes the same numbers for a
HyenaDNA model (a backbone of ``HyenaBlock``s) in pieces, one layer at a time, with the operator's own
stages (``HyenaOperator.short_conv``, ``long_conv``, ``output``):

1. the implicit long filters for length L, built in chunks of positions (the filter MLP is position-wise)
   into one (channels, L) float32 table;
2. the position-wise parts (LayerNorm, in_proj, the causal short convolution with a (k-1)-position halo
   from the previous chunk, the gates, out_proj, the MLP) in chunks of ``chunk`` positions;
3. the long convolutions ``channel_group`` channels at a time (``fft_long_conv`` works per channel), in
   float32 with FFT size ``fft_size(L)`` (the smallest even 5-smooth n >= 2L - 1, not the next power of
   two), each result written back over its input;
4. the float32 residual stream (L, D) updated in place; every per-layer buffer is freed before the next.

The peak is then the residual, the order's N stream buffers, the filter table and one channel group's
FFT buffers: about (N + 2) * L * D * 4 bytes plus the process itself. For hyenadna-large-1m on 1,000,001
tokens the whole process peaked at 4.94 GiB resident (estimate 4.86 GiB; BENCHMARKS.md). Other families
run their ordinary forward in one pass (their contexts are far shorter); their memory is not estimated.

Before anything large is allocated, :func:`check_memory` compares :func:`estimate_memory` with the memory
available to this process (``MemAvailable`` and any cgroup limit) and raises
:class:`LongContextMemoryError`, a :class:`dnalm.data.errors.DataError`, so the command line prints it
as one line.

Scoring convention (as ``dnalm.eval.scoring``): natural-log likelihoods; position t of the output scores token
t+1 of the input, so with [BOS] prepended every base is scored; special tokens other than [UNK] are not, nor N.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dnalm.data.errors import DataError
from dnalm.eval.scoring import score, token_logprobs
from dnalm.models.heads import count_hidden_states
from dnalm.models.hyena import HyenaBlock
from dnalm.ops.fftconv import fft_size
from dnalm.tokenizer import UNK, decode

LONG_FROM = 32_768  # tokens: from this length on, dnalm score (and embed) use forward_long
DEFAULT_CHUNK = 16_384  # positions per chunk of the position-wise parts
FFT_GROUP_BYTES = 256 * 2**20  # budget for one channel group's FFT buffers
RUNTIME_BYTES = 600 * 2**20  # the Python + PyTorch process itself, counted in the estimate

Output = Literal["logits", "hidden", "logprobs"]


class LongContextMemoryError(DataError):
    """The one-pass computation would not fit in the memory available; nothing large was allocated."""


@dataclass
class MemoryEstimate:
    """Estimated peak resident memory (bytes) of :func:`forward_long`, with the terms it adds up."""

    total: int
    parts: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.total / 2**30:.1f} GiB"


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def channel_group_size(length: int, channels: int) -> int:
    """Channels per FFT group: as many as fit in FFT_GROUP_BYTES (spectra of input and filter, the
    inverse transform and the output, per channel about 12 n + 8 L bytes)."""
    n = fft_size(length)
    per_channel = 12 * n + 8 * length
    return max(1, min(channels, FFT_GROUP_BYTES // per_channel))


def estimate_memory(model: Any, length: int, output: Output = "logits", chunk: int = DEFAULT_CHUNK) -> MemoryEstimate:
    """Peak memory of ``forward_long(model, ids of this length, output)`` for a HyenaDNA model.

    The terms follow the code below phase by phase (filters, projections and long convolutions, output);
    the benchmark (benchmarks/bench_1m.py) prints this estimate beside the measured peak.
    """
    cfg = model.config
    if not one_pass_supported(model):
        raise ValueError(f"memory estimates cover HyenaDNA models only (this one is {cfg.family})")
    L, D, N, V = int(length), cfg.d_model, cfg.order, cfg.vocab_size
    item = next(model.parameters()).element_size()
    C = (N - 1) * D  # long-filter channels
    c = min(chunk, L)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    params += sum(b.numel() * b.element_size() for b in model.buffers())
    residual = L * D * 4  # float32 residual stream
    filters = L * C * 4
    n = fft_size(L)
    group = channel_group_size(L, D)
    phases = {
        # filter table + one chunk of the filter MLP (its hidden layers and the window)
        "filters": filters + c * (3 * cfg.filter_order + 3 * C) * 4,
        # filter table + N streams (x0, gates, v*x) + one chunk of projections or one FFT group
        "mixer": filters + N * L * D * item + max(c * (N + 1) * D * item * 4, group * (12 * n + 8 * L)),
        # out_proj + MLP per chunk, x0 * v still held
        "mlp": L * D * item + c * (cfg.d_inner * 2 + 4 * D) * 4,
    }
    out_bytes = {"logits": L * V * 4, "hidden": 0, "logprobs": L * 4 + c * V * 4 * 3}[output]
    parts = {
        "runtime": RUNTIME_BYTES,
        "weights": params,
        "token ids": L * 8,
        "residual (L, D) float32": residual,
        "largest layer phase": max(phases.values()),
        "output": out_bytes,
    }
    return MemoryEstimate(int(sum(parts.values())), parts)


def available_memory() -> int | None:
    """Bytes this process can still use: MemAvailable, capped by a cgroup v2/v1 limit; None if unknown."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:
            avail = min(avail, int(limit) - usage)
        break
    return avail


def check_memory(
    model: Any, length: int, output: Output = "logits", max_memory: int | None = None, chunk: int = DEFAULT_CHUNK
) -> MemoryEstimate | None:
    """Raise LongContextMemoryError if the one-pass estimate exceeds ``max_memory`` bytes (default: what
    :func:`available_memory` reports, plus what this process already holds). None for non-Hyena models."""
    if not one_pass_supported(model):
        return None
    est = estimate_memory(model, length, output, chunk)
    limit = max_memory
    if limit is None:
        avail = available_memory()
        if avail is None:
            return est
        limit = avail + RUNTIME_BYTES  # the runtime term is already resident, not a new allocation
    if est.total > limit:
        raise LongContextMemoryError(
            f"scoring {length:,} tokens in one pass needs about {est} (residual stream "
            f"{_gib(est.parts['residual (L, D) float32'])}, largest layer phase "
            f"{_gib(est.parts['largest layer phase'])}), but only {_gib(limit)} is available; "
            "free memory, use a machine with more, or score shorter pieces (e.g. dnalm eval --seq-len)"
        )
    return est


# ------------------------------------------------------------------------------------------ the pass


@torch.no_grad()  # not inference_mode: tables a module caches here stay usable for training later
def forward_long(
    model: Any,
    ids: torch.Tensor | np.ndarray,
    output: Output = "logits",
    layer: int = -1,
    chunk: int = DEFAULT_CHUNK,
    channel_group: int | None = None,
    check: bool = True,
    max_memory: int | None = None,
) -> torch.Tensor:
    """Run one long token sequence ``ids`` (L,) through ``model`` in a single pass (no windows).

    ``output``: ``"logits"`` (L, V) float32; ``"hidden"`` (L, D) float32, the hidden state ``layer``
    indexed as ``DNALM``'s ``hidden_states`` (0 = embeddings, i = after block i, -1 = after the final
    norm); ``"logprobs"`` (L-1,) float32, log p(ids[t+1] | ids[:t+1]). HyenaDNA models use the
    memory-lean path described in the module docstring (same numbers as ``model(ids)`` to float
    rounding); other families run their ordinary forward. With ``check``, the memory estimate is
    compared with the available memory first (see :func:`check_memory`).
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
        return _hyena_forward(model, ids, output, layer % n_states, chunk, channel_group)
    finally:
        model.train(was_training)


def one_pass_supported(model: Any) -> bool:
    """Whether ``model`` is a stack of Hyena blocks, which :func:`forward_long` runs in its memory-lean pass."""
    layers = getattr(model.backbone, "layers", None)
    return bool(layers) and all(isinstance(block, HyenaBlock) for block in layers)


def _plain_forward(model: Any, ids: torch.Tensor, output: Output, layer: int) -> torch.Tensor:
    out = model(ids[None], output_hidden_states=output == "hidden")
    if output == "hidden":
        return out.hidden_states[layer][0].float()  # (L, D)
    logits = out.logits[0]  # (L, V)
    if output == "logits":
        return logits
    return token_logprobs(logits[:-1], ids[1:])  # (L-1,)


def _hyena_forward(model: Any, ids: torch.Tensor, output: Output, layer: int, chunk: int, group: int | None):
    L = ids.shape[0]
    x = model.embed(ids)  # (L, D)
    if output == "hidden" and layer == 0:
        return x.float()
    r = x.float()  # (L, D) float32 residual stream (no copy for float32 weights)
    del x
    for i, block in enumerate(model.backbone.layers):
        _hyena_block_(block, r, chunk, group)  # in place
        if output == "hidden" and layer == i + 1:
            return r
    norm, head = model.norm_f, model.head_weight
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


def _hyena_block_(block: Any, r: torch.Tensor, chunk: int, group: int | None) -> None:
    """``r = block(r)`` for a HyenaBlock, in place, with the memory plan of the module docstring.

    The operator's own stages (``HyenaOperator.short_conv``, ``long_conv``, ``output``) do the math;
    this function only schedules them. Streams are kept position-major, (L, D) like the residual, so every
    chunk reads and writes whole rows; a stage's (1, C, c) layout is a transposed view of a chunk.
    """
    mixer = block.mixer
    L, D, N = r.shape[0], mixer.d_model, mixer.order
    k = mixer.short_filter.kernel_size[0]
    group = group or channel_group_size(L, D)
    h = _filters(mixer, L, chunk)  # ((N-1) D, L) float32

    # projections and the causal short convolution, chunk by chunk; keep x0, the gates, and v * x_{N-1}
    x0 = w = history = None
    rest: list[torch.Tensor] = []  # gates x_1 .. x_{N-2}, applied after the first long convolution
    for s in range(0, L, chunk):
        e = min(L, s + chunk)
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
    for s in range(0, L, chunk):
        e = min(L, s + chunk)
        r[s:e] += mixer.output(x0[s:e].t()[None], w[s:e].t()[None])[0]  # (c, D)
        r[s:e] += block.mlp(block.norm2(r[s:e].to(n2)))  # (c, D)


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
