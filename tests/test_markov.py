"""The order-k Markov baseline against a direct dictionary-count implementation, on real phage DNA."""

import math
from collections import Counter
from pathlib import Path

import pytest

from dnalm.data.fasta import read_fasta
from dnalm.eval.likelihood import MarkovBaseline
from dnalm.tokenizer import decode

DATA = Path(__file__).parent / "data"


def naive_bits(train: str, held: str, k: int, alpha: float = 1.0) -> float:
    """Add-alpha order-k chain; a position with fewer than k bases before it uses all it has."""
    counts = [Counter() for _ in range(k + 1)]
    for j in range(k + 1):
        for t in range(j, len(train)):
            counts[j][train[t - j : t + 1]] += 1
    total = 0.0
    for t in range(len(held)):
        j = min(k, t)
        ctx, tgt = held[t - j : t], held[t]
        n_ctx = sum(counts[j][ctx + b] for b in "ACGT")
        total -= math.log2((counts[j][ctx + tgt] + alpha) / (n_ctx + 4 * alpha))
    return total / len(held)


@pytest.mark.parametrize("k", [0, 1, 3, 5])
def test_markov_matches_naive_counts(k):
    rec = next(read_fasta(DATA / "phage_lambda.fa"))
    train_ids, held_ids = rec.ids[:30000], rec.ids[40000:42000]
    model = MarkovBaseline(max_order=5).fit([train_ids])
    got, n = model.bits_per_base([held_ids], k)
    assert n == len(held_ids)
    assert got == pytest.approx(naive_bits(decode(train_ids), decode(held_ids), k), rel=1e-9)
