"""Held-out likelihood: loss, perplexity and bits per base of a model on a store split, and the
order-k Markov baseline fitted on the training split.

Windows are tiled so every base of the split is scored exactly once. Each window is fed as
[BOS] + bases[:-1] and predicts all its bases, so the first base of a window is scored with no context
(the same convention the trainer uses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from dnalm.tokenizer import A, BOS, PAD

LN2 = math.log(2.0)


def lm_inputs(
    ids: np.ndarray, lower: np.ndarray, valid: np.ndarray, repeat_weight: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of base windows (B, L) -> (input_ids, targets, weights), all (B, L).

    input = [BOS] + bases[:-1]; target = bases, PAD where invalid; weight = repeat_weight at lower-case
    positions, 1 elsewhere, 0 at padding.
    """
    targets = torch.from_numpy(np.where(valid, ids, PAD).astype(np.int64))  # (B, L)
    inputs = torch.empty_like(targets)
    inputs[:, 0] = BOS
    inputs[:, 1:] = targets[:, :-1]
    weights = np.where(lower, np.float32(repeat_weight), np.float32(1.0)) * valid
    return inputs, targets, torch.from_numpy(weights.astype(np.float32))


@dataclass
class EvalResult:
    loss: float  # mean cross-entropy, nats per base
    n_bases: int

    @property
    def bits_per_base(self) -> float:
        return self.loss / LN2

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    def to_dict(self, prefix: str = "") -> dict[str, float]:
        return {
            f"{prefix}loss": self.loss,
            f"{prefix}bits_per_base": self.bits_per_base,
            f"{prefix}perplexity": self.perplexity,
            f"{prefix}bases": self.n_bases,
        }


@torch.no_grad()
def evaluate_lm(
    model: torch.nn.Module,
    store,
    split: str | list[str],
    seq_len: int,
    batch_size: int = 8,
    max_tokens: int | None = None,
    progress: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> EvalResult:
    """Unweighted held-out cross-entropy over the tiled ``split`` of ``store`` (every base once)."""
    from dnalm.data.samplers import TilingSampler

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tiler = TilingSampler(store, split, seq_len, rank=rank, world_size=world_size)
    total = min(tiler.num_bases(), max_tokens) if max_tokens else tiler.num_bases()
    nll, count = 0.0, 0
    bar = tqdm(total=total, desc="eval", unit="base", disable=not progress, leave=False)
    try:
        for batch in tiler.batches(batch_size, max_tokens=max_tokens):
            inputs, targets, _ = lm_inputs(batch.ids, batch.lower, batch.valid)
            logits = model(inputs.to(device)).logits  # (B, L, V)
            ce = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.to(device).reshape(-1), ignore_index=PAD, reduction="sum"
            )
            n = int(batch.valid.sum())
            nll += float(ce)
            count += n
            bar.update(n)
    finally:
        bar.close()
        model.train(was_training)
    if count == 0:
        raise ValueError(f"split {split!r} has no bases to evaluate")
    return EvalResult(nll / count, count)


class MarkovBaseline:
    """Order-k Markov chains (k = 0..max_order) over A/C/G/T with add-alpha smoothing.

    Fitted on the training intervals of a store; scored on held-out intervals with the full
    preceding context inside each interval (positions near an interval start use the orders their
    context allows). Positions whose target or context contains N are not scored.
    """

    def __init__(self, max_order: int = 10, alpha: float = 1.0):
        if not 0 <= max_order <= 12:
            raise ValueError("max_order must be between 0 and 12")
        self.max_order = max_order
        self.alpha = alpha
        self.counts = [np.zeros(4 ** (k + 1), dtype=np.int64) for k in range(max_order + 1)]

    @staticmethod
    def _codes(ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(k+1)-mer codes ending at each position t >= k, and whether they are N-free."""
        base = ids.astype(np.int64) - A  # A C G T -> 0..3, N -> 4
        ok = (base >= 0) & (base < 4)
        if len(base) <= k:
            return np.zeros(0, np.int64), np.zeros(0, bool)
        win = np.lib.stride_tricks.sliding_window_view(np.where(ok, base, 0), k + 1)  # (L-k, k+1)
        codes = win @ (4 ** np.arange(k, -1, -1, dtype=np.int64))
        valid = np.lib.stride_tricks.sliding_window_view(ok, k + 1).all(axis=1)
        return codes, valid

    def fit(self, sequences) -> "MarkovBaseline":
        for ids in sequences:
            for k in range(self.max_order + 1):
                codes, valid = self._codes(ids, k)
                self.counts[k] += np.bincount(codes[valid], minlength=4 ** (k + 1))
        return self

    def log2_probs(self, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """log2 P(base_t | previous k bases) for each position of one contiguous sequence."""
        out = np.zeros(len(ids))
        scored = np.zeros(len(ids), dtype=bool)
        for j in range(min(k, len(ids) - 1) + 1):
            codes, valid = self._codes(ids, j)
            cnt = self.counts[j].reshape(-1, 4)  # (4^j contexts, 4)
            ctx, tgt = codes // 4, codes % 4
            p = (cnt[ctx, tgt] + self.alpha) / (cnt[ctx].sum(axis=1) + 4 * self.alpha)
            if j < k:  # order j only for the position whose context is exactly j bases long
                out[j] = np.log2(p[0])
                scored[j] = valid[0]
            else:
                out[j:] = np.log2(p)
                scored[j:] = valid
        return out, scored

    def bits_per_base(self, sequences, order: int) -> tuple[float, int]:
        total, n = 0.0, 0
        for ids in sequences:
            lp, scored = self.log2_probs(ids, order)
            total -= lp[scored].sum()
            n += int(scored.sum())
        return total / max(n, 1), n


def markov_report(train_store, eval_store, eval_split: str | list[str], max_order: int = 10) -> dict[int, float]:
    """Bits per base on ``eval_split`` of ``eval_store`` of order-0..max_order Markov chains fitted on the
    training split of ``train_store`` (the two stores may be the same)."""
    train = [train_store.window(r, s, e)[0] for r, s, e in train_store.intervals("train")]
    held = [eval_store.window(r, s, e)[0] for r, s, e in eval_store.intervals(eval_split)]
    model = MarkovBaseline(max_order).fit(train)
    return {k: model.bits_per_base(held, k)[0] for k in range(max_order + 1)}

