"""The scoring core: token windows -> per-position log-likelihoods, and ``score`` on DNA strings.

Every user-facing log-likelihood in dnalm comes from here: :func:`score` (``dnalm.score``, ``dnalm score``),
the variant / essentiality / DMS deltas (:func:`window_logliks`) and the one-pass long-context path
(``dnalm.eval.longcontext``, through :func:`token_logprobs`).

Scoring convention (stated once, here): the natural-log likelihood of each token given the tokens before
it; position t of a model's output scores token t+1 of its input. Native models prepend [BOS], so every
base is scored; a model whose tokenizer does not (an imported HyenaDNA checkpoint) cannot score its first
base and says so through ``Tokenizer.prepend_bos``. Special tokens other than [UNK] are never scored, and
neither is N (``dnalm.tokenizer.scored``): sums and means count A/C/G/T only, per-base arrays hold NaN at N.

Batches are right-padded with [PAD] after sorting by length, which leaves a causal model's outputs at the
real positions unchanged (nothing after a position can affect it).
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np
import torch

from dnalm.tokenizer import BOS, PAD, UNK, Tokenizer, scored


def window_bases(model: Any) -> int:
    """Bases per window: the model's max length minus the special tokens its tokenizer adds."""
    tok = model.tokenizer
    return int(model.config.max_len) - int(tok.prepend_bos) - int(tok.append_sep)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) under ``logits`` (..., V): (...) float32. ``logits[..., t, :]`` must be the prediction
    for ``targets[..., t]``."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()  # not inference_mode: models cache tensors (RoPE tables) later used with autograd
def score_tokens(model: Any, rows: Sequence[Sequence[int] | np.ndarray], batch_size: int = 8) -> list[np.ndarray]:
    """Per-position log-likelihoods of token rows (specials included, as the model reads them).

    Returns one float64 array per row of ``len(row) - 1`` values: ``out[i][t] = log p(rows[i][t+1] |
    rows[i][:t+1])``. Rows are batched longest first, right-padded.
    """
    n = len(rows)
    out: list[np.ndarray] = [np.zeros(0)] * n
    order = sorted(range(n), key=lambda i: -len(rows[i]))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x = torch.full((len(idx), len(rows[idx[0]])), PAD, dtype=torch.long)  # (B, L)
            for r, i in enumerate(idx):
                x[r, : len(rows[i])] = torch.as_tensor(np.asarray(rows[i], dtype=np.int64))
            x = x.to(model.device)
            ll = token_logprobs(model(x).logits[:, :-1], x[:, 1:]).double().cpu().numpy()  # (B, L-1)
            for r, i in enumerate(idx):
                out[i] = ll[r, : len(rows[i]) - 1]
    finally:
        model.train(was_training)
    return out


def score(
    model: Any,
    seqs: list[str] | str,
    reduce: Literal["sum", "mean", "none"] = "sum",
    batch_size: int = 8,
) -> np.ndarray | list[np.ndarray]:
    """Log-likelihood (natural log) of each sequence's bases under ``model``.

    ``reduce="sum"`` gives the total, ``"mean"`` the per-base mean, ``"none"`` a per-base array for each
    sequence (the first base is scored only if the tokenizer prepends [BOS]). N bases are not scored: sums and
    means skip them, per-base arrays hold NaN there. A single string gives a single value (or array).
    """
    single = isinstance(seqs, str)
    seqs = [seqs] if single else list(seqs)
    tok: Tokenizer = model.tokenizer
    rows = [tok.encode(s, f"sequence {i}")[0] for i, s in enumerate(seqs)]
    results: list[Any] = []
    for row, ll in zip(rows, score_tokens(model, rows, batch_size)):
        targets = np.asarray(row[1:])
        per_base = np.where(tok.scored(targets), ll, np.nan)[targets >= tok.scored_min_id]  # per base; NaN at N
        if reduce == "sum":
            results.append(np.nansum(per_base))
        elif reduce == "mean":
            results.append(np.nanmean(per_base) if np.isfinite(per_base).any() else float("nan"))
        else:
            results.append(per_base)
    if reduce == "none":
        return results[0] if single else results
    arr = np.asarray(results, dtype=np.float64)
    return arr[0] if single else arr


def window_logliks(
    model: Any,
    windows: Sequence[np.ndarray] | np.ndarray,
    batch_size: int = 8,
    reduce: str = "sum",
    lower: Sequence[np.ndarray] | None = None,
) -> np.ndarray | list[np.ndarray]:
    """Log-likelihood (natural log) of windows of base token ids (A..N, uint8), batched.

    ``reduce="sum"`` returns one float per window (N bases skipped), ``"none"`` a float64 per-base array each
    (NaN at N). Models whose tokenizer prepends [BOS] score every base; otherwise the first base gets
    log-likelihood 0 (it has no context). ``lower`` (optional case masks) matters only for tokenizers that map lower case to [UNK]
    (imported HyenaDNA checkpoints).
    """
    bos = bool(model.tokenizer.prepend_bos)
    unk_lower = model.tokenizer.lowercase == "unk"
    rows = []
    for i, w in enumerate(windows):
        ids = np.asarray(w, dtype=np.int64)
        if unk_lower and lower is not None:
            ids = np.where(np.asarray(lower[i], dtype=bool), UNK, ids)
        rows.append(np.concatenate([[BOS], ids]) if bos else ids)
    per_base = score_tokens(model, rows, batch_size)
    if not bos:
        per_base = [np.concatenate([[0.0], ll]) for ll in per_base]  # the first base is unscored
    per_base = [np.where(scored(np.asarray(w)), ll, np.nan) for w, ll in zip(windows, per_base)]  # NaN at N
    if reduce == "none":
        return per_base
    return np.array([np.nansum(ll) for ll in per_base], dtype=np.float64)


def count_scored(window: np.ndarray) -> int:
    """Bases of a window of base ids that likelihoods count (all but N): the denominator of a per-base mean."""
    return int(np.count_nonzero(scored(np.asarray(window))))
