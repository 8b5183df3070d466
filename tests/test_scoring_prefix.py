"""Prefix sharing in the scoring core: rows that agree on a long prefix (a reference window and its
variants) are scored from one prefix pass (``PrefixBackbone``). The values must equal the plain batched
forward, per position, for every family that declares the capability, on real BRCA1 windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import dnalm.eval.scoring as scoring
from dnalm.eval.scoring import score_tokens, shared_prefix_groups
from dnalm.eval.variants import score_variants
from dnalm.models.hyena import HyenaConfig
from dnalm.models.lm import DNALM
from dnalm.models.transformer import TransformerConfig
from dnalm.tokenizer import BOS, encode_bytes
from realdata import perturbed

DATA = Path(__file__).parent / "data"
FASTA = DATA / "brca1_chr17_43044001-43064000.fa"
TSV = DATA / "brca1_findlay2018_demo40.tsv"


def brca1_ids() -> np.ndarray:
    seq = "".join(l.strip() for l in FASTA.read_text().splitlines() if not l.startswith(">"))
    return encode_bytes(seq.encode())[0].astype(np.int64)


def variant_rows(L: int) -> list[np.ndarray]:
    """Reference windows and edited copies (SNVs, an insertion cut back to length, a deletion filled from
    the right), reverse complements and an unrelated window, each with [BOS]: what the applications send."""
    ids = brca1_ids()
    rows = []
    for start in (1000, 5000):
        ref = ids[start : start + L]
        rows.append(ref)
        for p, b in ((L // 2, 4), (L // 2, 6), (L // 3, 7), (L - 2, 5)):
            alt = ref.copy()
            alt[p] = b if alt[p] != b else 5
            rows.append(alt)
        rows.append(np.concatenate([ref[: L // 2], [4, 5, 6], ref[L // 2 :]])[:L])  # insertion
        rows.append(np.concatenate([ref[: L // 2], ids[start + L // 2 + 2 : start + L + 2]]))  # deletion
        rows.append(ref[::-1].copy())
        rc = ref[::-1].copy()
        rc[L // 2] = 4 if rc[L // 2] != 4 else 5
        rows.append(rc)
    rows.append(ids[9000 : 9000 + L])
    rows.append(ids[9000 : 9000 + L // 2])  # another length: scored alone
    return [np.concatenate([[BOS], r]) for r in rows]


def models():
    torch.manual_seed(0)
    yield "hyena", perturbed(DNALM(HyenaConfig(n_layer=2, d_model=32, l_max=700)), seed=1).eval()
    yield "hyena-order3", perturbed(DNALM(HyenaConfig(n_layer=1, d_model=16, l_max=700, order=3)), seed=2).eval()
    yield "transformer", perturbed(DNALM(TransformerConfig(n_layer=2, d_model=32, n_head=2, max_len=700)), seed=3).eval()


@pytest.mark.parametrize("name,model", list(models()), ids=lambda x: x if isinstance(x, str) else "")
def test_shared_prefix_scores_equal_the_plain_forward(name, model):
    assert model.shares_prefix
    rows = variant_rows(600)
    groups, alone = shared_prefix_groups(rows)
    assert sum(len(g) for g, _ in groups) >= 12 and len(alone) >= 2
    plain = score_tokens(model, rows, batch_size=4, share_prefix=False)
    shared = score_tokens(model, rows, batch_size=4, share_prefix=True)
    for a, b, r in zip(shared, plain, rows):
        assert a.shape == b.shape == (len(r) - 1,)
        assert np.abs(a - b).max() < 1e-5
        assert abs(a.sum() - b.sum()) < 1e-5 * len(r)


def test_groups_are_the_rows_sharing_a_long_prefix():
    ids = brca1_ids()
    ref = ids[:400]
    a, b = ref.copy(), ref.copy()
    a[300], b[350] = (a[300] + 1) % 4 + 4, (b[350] + 1) % 4 + 4
    early = ref.copy()
    early[10] = (early[10] + 1) % 4 + 4  # differs before the minimum shared prefix
    rows = [a, ids[1000:1400], ref, early, b, ref.copy()]
    groups, alone = shared_prefix_groups(rows)
    assert len(groups) == 1
    members, p = groups[0]
    assert sorted(members) == [0, 2, 4, 5] and p == 300
    assert sorted(alone) == [1, 3]


def test_score_variants_same_deltas_with_and_without_sharing(monkeypatch):
    torch.manual_seed(0)
    model = perturbed(DNALM(HyenaConfig(n_layer=1, d_model=16, l_max=600)), seed=4).eval()
    shared = score_variants(model, FASTA, TSV, window=512, rc_average=True, progress=False)
    monkeypatch.setattr(scoring, "MIN_SHARED_PREFIX", 10**9)  # the plain path
    plain = score_variants(model, FASTA, TSV, window=512, rc_average=True, progress=False)
    d1 = np.array([r["delta_sum"] for r in shared.rows])
    d2 = np.array([r["delta_sum"] for r in plain.rows])
    assert np.abs(d1 - d2).max() < 1e-5 * 512 and np.abs(d1).max() > 1e-3
