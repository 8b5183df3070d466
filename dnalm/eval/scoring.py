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

from dnalm.tokenizer import Tokenizer, scored


def window_bases(model: Any) -> int:
    """Bases per window: the model's max length minus the special tokens its tokenizer adds."""
    tok = model.tokenizer
    return int(model.config.max_len) - int(tok.prepend_bos) - int(tok.append_sep)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) under ``logits`` (..., V): (...) float32. ``logits[..., t, :]`` must be the prediction
    for ``targets[..., t]``."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


# Prefix sharing (score_tokens): rows of one length that agree on at least this share of their positions
# (and MIN_SHARED_PREFIX tokens) are scored from one prefix pass; shorter common prefixes are not worth a
# separate pass.
MIN_SHARED_FRACTION = 0.25
MIN_SHARED_PREFIX = 128


def shared_prefix_groups(rows: Sequence[np.ndarray]) -> tuple[list[tuple[list[int], int]], list[int]]:
    """Groups of rows (same length) that share a long common prefix: ([(row indices, prefix length p)],
    the rows left alone). Rows sorted lexicographically put the rows sharing the longest prefixes next to
    each other; a group's prefix is the smallest common prefix along its run, at most len - 1."""
    by_len: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_len.setdefault(len(r), []).append(i)
    groups, alone = [], []
    for L, idx in by_len.items():
        need = max(MIN_SHARED_PREFIX, int(MIN_SHARED_FRACTION * L))
        if L <= need or len(idx) < 2:
            alone += idx
            continue
        mat = np.stack([np.asarray(rows[i], dtype=np.int64) for i in idx])  # (n, L)
        keys = [r.astype(">i8").tobytes() for r in mat]  # big-endian: byte order = token order
        order = sorted(range(len(idx)), key=keys.__getitem__)  # lexicographic
        run, p = [idx[order[0]]], L - 1
        for a, b in zip(order[:-1], order[1:]):
            diff = np.flatnonzero(mat[a] != mat[b])
            lcp = min(int(diff[0]) if diff.size else L, L - 1)
            if min(p, lcp) >= need:
                run.append(idx[b])
                p = min(p, lcp)
            else:
                (groups.append((run, p)) if len(run) > 1 else alone.extend(run))
                run, p = [idx[b]], L - 1
        (groups.append((run, p)) if len(run) > 1 else alone.extend(run))
    return groups, alone


def _score_shared(model: Any, rows: Sequence[np.ndarray], group: list[int], p: int, batch_size: int,
                  out: list[np.ndarray]) -> None:
    """Rows ``group`` agree on their first p tokens: one prefix pass, then positions p.. of each row."""
    L = len(rows[group[0]])
    first = torch.as_tensor(np.asarray(rows[group[0]], dtype=np.int64))
    logits, state = model.forward_prefix(first[None, :p].to(model.device), L)  # (1, p, V)
    shared = token_logprobs(logits[:, :-1], first[None, 1:p].to(model.device)).double().cpu().numpy()[0]  # (p-1,)
    last = torch.log_softmax(logits[0, -1].float(), dim=-1).double().cpu().numpy()  # predicts token p of each row
    for start in range(0, len(group), batch_size):
        idx = group[start : start + batch_size]
        x = torch.as_tensor(np.stack([np.asarray(rows[i], dtype=np.int64)[p:] for i in idx])).to(model.device)
        ll = token_logprobs(model.forward_from(state, x)[:, :-1], x[:, 1:]).double().cpu().numpy()  # (B, L-p-1)
        for r, i in enumerate(idx):
            out[i] = np.concatenate([shared, last[int(rows[i][p]) : int(rows[i][p]) + 1], ll[r]])


@torch.no_grad()  # not inference_mode: models cache tensors (RoPE tables) later used with autograd
def score_tokens(
    model: Any, rows: Sequence[Sequence[int] | np.ndarray], batch_size: int = 8, share_prefix: bool | None = None
) -> list[np.ndarray]:
    """Per-position log-likelihoods of token rows (specials included, as the model reads them).

    Returns one float64 array per row of ``len(row) - 1`` values: ``out[i][t] = log p(rows[i][t+1] |
    rows[i][:t+1])``. Rows are batched longest first, right-padded.

    ``share_prefix`` (default: when the model's family allows it, ``DNALM.shares_prefix``): rows of one
    length that agree on a long prefix (a reference window and its variants) are scored with one pass over
    the prefix and one over each row's remaining positions (:func:`shared_prefix_groups`). Exact for a
    causal model: the same values up to float rounding.
    """
    n = len(rows)
    out: list[np.ndarray] = [np.zeros(0)] * n
    if share_prefix is None:
        share_prefix = bool(getattr(model, "shares_prefix", False))
    groups, alone = shared_prefix_groups(rows) if share_prefix and n > 1 else ([], list(range(n)))
    order = sorted(alone, key=lambda i: -len(rows[i]))
    was_training = model.training
    model.eval()
    try:
        for group, p in groups:
            _score_shared(model, rows, group, p, batch_size, out)
        n = len(order)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x = torch.full((len(idx), len(rows[idx[0]])), model.tokenizer.pad_id, dtype=torch.long)  # (B, L)
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
    tok: Tokenizer = model.tokenizer
    bos = bool(tok.prepend_bos)
    rows = []
    for i, w in enumerate(windows):
        # the tokenizer's ids: HyenaDNA maps lower case to [UNK], Evo's byte scheme reads bytes (lower case
        # only where a case mask is given)
        ids = tok.model_ids(np.asarray(w, dtype=np.int64), None if lower is None else lower[i]).astype(np.int64)
        rows.append(np.concatenate([[tok.bos_id], ids]) if bos else ids)
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
