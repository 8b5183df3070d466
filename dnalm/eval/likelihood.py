"""The order-k Markov baseline a DNA language model's held-out bits per base is compared with, fitted on
the training split of a store (the model's own held-out loss is ``dnalm.train.evaluate.evaluate_lm``).
"""

from __future__ import annotations

import numpy as np

from dnalm.tokenizer import A


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
