"""Sampling DNA from a language model: prefill the prompt once, then one recurrent step per new token.

Generation protocol (every family that supports it; ``dnalm.models.spec.RecurrentBackbone``): the backbone has
``prefill(x: (B, L, D)) -> (hidden: (B, L, D), state)`` and ``step(x_t: (B, D), state) -> (hidden_t: (B, D),
state)``, hidden states taken before the final norm, like ``forward``. The state is whatever the family
needs (a KV cache, FIR histories, modal states) and may be updated in place. The step path equals the
full forward pass to float tolerance (tests/test_generation.py checks every family). A backbone without
these methods is still served, by recomputing the whole prefix for every token (``use_cache=False``
forces that path, which the benchmark uses as the baseline).

Sampling conventions:

- Only the letters of ``alphabet`` (default "ACGT") can be drawn: the other logits (special tokens, N,
  the unused rows of a 512-entry byte vocabulary) are masked out before sampling.
- ``temperature`` <= 0 means greedy decoding (argmax); otherwise logits are divided by it, then
  ``top_k`` keeps the k most likely letters and ``top_p`` the smallest set whose probability reaches p
  (nucleus sampling; the most likely letter is always kept).
- Randomness comes from one ``torch.Generator`` seeded with ``seed`` (None draws a fresh seed), so a
  seed, a model and the same arguments give the same sequences.
- The prompt is encoded by the model's tokenizer ([BOS] prepended for native models; a trailing [SEP]
  of imported HyenaDNA tokenizers is dropped so generation continues after the last base). Prompts of
  equal token length are sampled together in one batch; ``num_samples`` continuations per prompt.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dnalm.memory import RUNTIME_BYTES, gib, memory_limit
from dnalm.models.lm import HALF
from dnalm.models.spec import RecurrentBackbone
from dnalm.runtime import computing, say_once
from dnalm.tokenizer import BASES, Tokenizer

__all__ = ["GenerationError", "generate", "prefill_logits", "step_logits", "sample_next", "supports_recurrent"]


class GenerationError(ValueError):
    """A bad generation request (prompt, length, sampling parameters); the message says what to change."""


def supports_recurrent(model: Any) -> bool:
    """Whether the model's backbone implements ``prefill`` and ``step`` (``dnalm.models.spec.RecurrentBackbone``)."""
    return isinstance(model.backbone, RecurrentBackbone)


def _logits(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "logits_of"):
        return model.logits_of(hidden)
    return F.linear(model.norm_f(hidden), model.head_weight).float()  # (..., V)


def _pass(model: Any):
    return model.computing() if hasattr(model, "computing") else contextlib.nullcontext()


def _embed(model: Any, ids: torch.Tensor) -> torch.Tensor:
    return model.embed_ids(ids) if hasattr(model, "embed_ids") else model.embed(ids)


def prefill_logits(model: Any, ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Run the prompt ids (B, L) through the model once; returns (logits at every position (B, L, V), state)."""
    with _pass(model):
        hidden, state = model.backbone.prefill(_embed(model, ids))  # (B, L, D)
        return _logits(model, hidden), state


def step_logits(model: Any, token: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
    """Feed one token per row (B,) after the state; returns (next-token logits (B, V), state)."""
    with _pass(model):
        hidden, state = model.backbone.step(_embed(model, token), state)  # (B, D)
        return _logits(model, hidden), state


@contextlib.contextmanager
def generation_precision(model: Any) -> Iterator[str | None]:
    """Weights stored in bf16/fp16 that a forward would upcast block by block (``model.upcasts()``): doing that
    for every generated token would convert all weights once per token. Instead, when a float32 copy of the
    whole model fits in the memory limit (:func:`dnalm.memory.memory_limit`), the weights are float32 for the
    whole generation (converted back exactly afterwards); otherwise the blocks compute in the weights' dtype.
    Yields a line saying which, or None when nothing had to be decided."""
    if not (hasattr(model, "upcasts") and model.upcasts()):
        yield None
        return
    params = list(model.parameters())
    need = RUNTIME_BYTES + sum(p.numel() * 4 for p in params)
    limit, source = memory_limit()
    if limit is None or need <= limit:
        dtypes = [p.dtype for p in params]
        for p in params:
            if p.dtype in HALF:
                p.data = p.data.float()
        try:
            yield f"float32 copy of the weights for generation ({gib(need)} of {gib(limit or 0)} {source})"
        finally:
            for p, dt in zip(params, dtypes):
                if p.dtype != dt:
                    p.data = p.data.to(dt)
        return
    with computing("weights"):
        yield (f"a float32 copy of the weights ({gib(need)}) does not fit in {gib(limit)} ({source}): generating "
               f"in the weights' dtype ({next(p.dtype for p in params if p.dtype in HALF)})")


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw one token id per row from logits (B, V); ``allowed`` (V,) bool restricts the choice. Returns (B,)."""
    logits = logits.float()
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)  # (B, V)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # probability mass of the strictly more likely tokens
        drop_sorted = before >= top_p  # never drops the first (most likely) token
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def _encode(tok: Tokenizer, prompt: str, name: str) -> list[int]:
    ids, _ = tok.encode(prompt, name)
    if tok.append_sep and ids and ids[-1] == tok.sep_id:
        ids = ids[:-1]
    if not ids:
        raise GenerationError(f"{name} is empty and this model's tokenizer adds no [BOS]: give at least one base")
    return ids


def _check(n_tokens: int, temperature: float, top_k: int | None, top_p: float | None, num_samples: int, alphabet: str):
    if n_tokens < 1:
        raise GenerationError(f"n_tokens must be >= 1 (got {n_tokens})")
    if num_samples < 1:
        raise GenerationError(f"num_samples must be >= 1 (got {num_samples})")
    if temperature < 0:
        raise GenerationError(f"temperature must be >= 0 (got {temperature}); 0 means greedy")
    if top_k is not None and top_k < 1:
        raise GenerationError(f"top_k must be >= 1 (got {top_k})")
    if top_p is not None and not 0 < top_p <= 1:
        raise GenerationError(f"top_p must be in (0, 1] (got {top_p})")
    bad = sorted(set(alphabet.upper()) - set(BASES))
    if not alphabet or bad:
        raise GenerationError(f"alphabet must be letters of {BASES!r} (got {alphabet!r})")


@torch.inference_mode()
def generate(
    model: Any,
    prompt: str | Sequence[str],
    n_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    num_samples: int = 1,
    alphabet: str = "ACGT",
    use_cache: bool = True,
    progress: bool = False,
) -> str | list[str]:
    """Sample ``n_tokens`` bases after each prompt; returns only the new bases.

    A single prompt string with ``num_samples=1`` gives a string; otherwise a list ordered prompt by
    prompt, ``num_samples`` continuations each. ``use_cache=False`` recomputes the whole prefix for
    every token (slow; the reference the recurrent path is checked against). ``progress`` shows a tqdm
    bar on stderr. Raises :class:`GenerationError` for bad arguments or a prompt plus ``n_tokens`` that
    exceeds the model's maximum length.
    """
    single = isinstance(prompt, str)
    prompts = [prompt] if single else list(prompt)
    if not prompts:
        raise GenerationError("no prompt given")
    _check(n_tokens, temperature, top_k, top_p, num_samples, alphabet)
    tok = Tokenizer(**{**model.tokenizer.to_dict(), "model_max_length": None})
    encoded = [_encode(tok, p, f"prompt {i}") for i, p in enumerate(prompts)]
    max_len = model.config.max_len
    for i, ids in enumerate(encoded):
        if len(ids) + n_tokens - 1 > max_len:
            raise GenerationError(
                f"prompt {i} ({len(ids)} tokens) plus {n_tokens} new tokens needs {len(ids) + n_tokens - 1} "
                f"positions, more than the model's maximum length {max_len}; shorten the prompt or n_tokens"
            )
    device = model.device
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, ()).item()))
    allowed = torch.zeros(model.config.vocab_size, dtype=torch.bool, device=device)
    letters = np.array([7 + BASES.index(c) for c in alphabet.upper()])  # dnalm ids A=7 C=8 G=9 T=10 N=11
    allowed[torch.from_numpy(tok.model_ids(letters).astype(np.int64))] = True  # Evo: the upper-case bytes
    recurrent = use_cache and supports_recurrent(model)

    results: list[list[str]] = [[] for _ in prompts]
    groups: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        groups.setdefault(len(ids), []).append(i)
    bar = None
    if progress:
        bar = tqdm(total=n_tokens * len(groups), desc="generating", unit="tok", file=sys.stderr)
    was_training = model.training
    model.eval()
    try:
        with generation_precision(model) as note:
            if note:
                say_once(f"dnalm generate: {note}")
            for members in groups.values():
                rows = [encoded[i] for i in members for _ in range(num_samples)]
                ids = torch.tensor(rows, dtype=torch.long, device=device)  # (B, L)
                new = _sample_batch(model, ids, n_tokens, temperature, top_k, top_p, generator, allowed, recurrent, bar)
                for j, i in enumerate(members):
                    block = new[j * num_samples : (j + 1) * num_samples]
                    results[i] = [tok.decode(r) for r in block.cpu()]
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    if single and num_samples == 1:
        return results[0][0]
    return [s for r in results for s in r]


def _sample_batch(model, ids, n_tokens, temperature, top_k, top_p, generator, allowed, recurrent, bar) -> torch.Tensor:
    """(B, L) prompt ids -> (B, n_tokens) sampled ids."""
    out = torch.empty(ids.shape[0], n_tokens, dtype=torch.long, device=ids.device)
    if recurrent:
        logits, state = prefill_logits(model, ids)
        logits = logits[:, -1]  # (B, V)
    else:
        seq = ids
        logits = model(seq).logits[:, -1]
    for t in range(n_tokens):
        nxt = sample_next(logits, temperature, top_k, top_p, generator, allowed)  # (B,)
        out[:, t] = nxt
        if bar is not None:
            bar.update(1)
        if t == n_tokens - 1:
            break
        if recurrent:
            logits, state = step_logits(model, nxt, state)
        else:
            seq = torch.cat([seq, nxt[:, None]], dim=1)  # (B, L+t+1): recompute everything
            logits = model(seq).logits[:, -1]
    return out
