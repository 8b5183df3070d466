"""Samplers on a small real store (phiX174 + GFF, lambda, T7 GenBank, hg38 chr2 slice with 10 kb of N):
placement rules, N filter, reverse complement, genic windows, mixtures, rank sharding, resuming, tiling."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from dnalm.data.errors import DataError
from dnalm.data.samplers import (
    GenicWindowSampler,
    MixtureSampler,
    RandomWindowSampler,
    TilingSampler,
    _complement,
    _reversed,
)
from dnalm.data.store import TokenStore, prepare
from dnalm.tokenizer import COMPLEMENT_ID, N, PAD, reverse_complement_ids

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> TokenStore:
    out = tmp_path_factory.mktemp("store") / "s"
    prepare(
        [DATA / "phage_phix174.fa", DATA / "phage_lambda.fa", DATA / "phage_t7.gb", DATA / "human_chr2_1-100000_softmasked.fa.gz"],
        out,
        [DATA / "phage_phix174.gff"],
        zero_based_gff=True,
        circular=["NC_001422.1"],
        val_fraction=0.1,
        test_fraction=0.1,
        progress=False,
    )
    return TokenStore.open(out)


def _inside(store, split, batch, seq_len):
    """Each row lies inside one interval of the split (so never across a split or record boundary)."""
    ivs = store.intervals(split)
    for r, s in zip(batch.record, batch.start):
        assert any(r == i and a <= s and s + seq_len <= b for i, a, b in ivs), (r, s)


def _forward(store, batch, seq_len):
    """The rows read straight from the store at their coordinates (undoing reverse complement)."""
    ids = np.stack([store.window(int(r), int(s), int(s) + seq_len)[0] for r, s in zip(batch.record, batch.start)])
    low = np.stack([store.window(int(r), int(s), int(s) + seq_len)[1] for r, s in zip(batch.record, batch.start)])
    return ids, low


def test_random_windows_inside_split_with_n_filter_and_rc(store):
    L = 2_000
    sampler = RandomWindowSampler(store, "train", seed=3, rc_augment=True, max_n_fraction=0.1)
    batch = sampler.next_batch(256, L)
    assert batch.ids.shape == (256, L) and batch.ids.dtype == np.uint8 and batch.valid.all()
    _inside(store, "train", batch, L)
    assert np.all((batch.ids == N).sum(axis=1) <= 0.1 * L)
    fwd_ids, fwd_low = _forward(store, batch, L)
    rc = batch.strand == -1
    assert 0.35 < rc.mean() < 0.65
    assert np.array_equal(batch.ids[~rc], fwd_ids[~rc]) and np.array_equal(batch.lower[~rc], fwd_low[~rc])
    assert np.array_equal(batch.ids[rc], reverse_complement_ids(fwd_ids[rc]))
    assert np.array_equal(batch.lower[rc], fwd_low[rc][:, ::-1])
    # Without the filter, windows overlapping the 10 kb N block of the hg38 slice do occur.
    loose = RandomWindowSampler(store, "train", seed=3, max_n_fraction=1.0).next_batch(256, L)
    assert np.any((loose.ids == N).sum(axis=1) > 0.1 * L)


def test_random_windows_uniform_over_valid_starts(store):
    """Intervals are hit in proportion to their number of possible window starts."""
    L = 3_000
    ivs = store.intervals("train")
    sampler = RandomWindowSampler(store, "train", seed=0, max_n_fraction=1.0)
    recs = np.concatenate([sampler.next_batch(500, L).record for _ in range(8)])  # 4,000 windows
    starts = np.array([e - s - L + 1 for _, s, e in ivs], dtype=float)
    expected = starts / starts.sum() * len(recs)
    observed = np.array([np.sum(recs == r) for r, _, _ in ivs])
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    assert chi2 < 16.3, (observed, expected)  # 3 degrees of freedom: p < 0.001 beyond 16.3
    # Short intervals are skipped: with L = 4,500 phiX's 4,308 bp of train can hold no window.
    short = RandomWindowSampler(store, "train", seed=0, max_n_fraction=1.0).next_batch(300, 4_500)
    assert not np.any(short.record == 0)


def test_window_longer_than_every_interval(store):
    with pytest.raises(DataError, match=r"window length 90000 is longer than every interval of split 'train' \(longest: chr2:1-100000 \[0, 80000\), 80000 bp\)"):
        RandomWindowSampler(store, "train").next_batch(2, 90_000)
    with pytest.raises(DataError, match="longer than every interval"):
        GenicWindowSampler(store, "val").next_batch(2, 20_000)


def test_rank_sharding_matches_single_rank(store):
    one = RandomWindowSampler(store, seed=7, rc_augment=True)
    ranks = [RandomWindowSampler(store, seed=7, rc_augment=True, rank=r, world_size=2) for r in range(2)]
    for L in (500, 1_000):
        full = one.next_batch(8, L)
        parts = [s.next_batch(8, L) for s in ranks]
        assert np.array_equal(np.concatenate([p.ids for p in parts]), full.ids)
        assert np.array_equal(np.concatenate([p.lower for p in parts]), full.lower)
    with pytest.raises(DataError, match="not divisible by the world size 2"):
        ranks[0].next_batch(7, 100)


def test_state_restore_continues_stream(store):
    a = RandomWindowSampler(store, seed=1, rc_augment=True)
    a.next_batch(4, 300)
    state = json.loads(json.dumps(a.state_dict()))  # JSON-able
    expected = [a.next_batch(4, 300).ids for _ in range(3)]
    b = RandomWindowSampler(store, seed=1, rc_augment=True)
    b.load_state_dict(state)
    assert all(np.array_equal(b.next_batch(4, 300).ids, e) for e in expected)
    with pytest.raises(DataError, match="settings changed"):
        RandomWindowSampler(store, "val", seed=1).load_state_dict(state)


def test_genic_windows_surround_genes(store):
    flank, L = 200, 1_500
    sampler = GenicWindowSampler(store, "train", flank=flank, seed=2)
    assert sampler.num_genes() > 50
    batch = sampler.next_batch(200, L)
    _inside(store, "train", batch, L)
    genes = store.genes()
    for r, s in zip(batch.record, batch.start):
        # The window meets some gene's region: [start - flank, end + flank).
        assert any(g.record_index == r and g.start - flank < s + L and s < g.end + flank for g in genes)
    # Genes drive placement: phiX (11 genes in 5 kb) is hit far more often than its share of bases.
    share_bases = store.records[0].length / len(store)
    assert np.mean(batch.record == 0) > 3 * share_bases
    assert not np.any(batch.record == 3)  # the hg38 slice has no annotation
    assert GenicWindowSampler(store, "train", flank=flank, seed=2).next_batch(200, L).start.tolist() == batch.start.tolist()


def test_mixture_weights_exclusion_sharding_and_resume(store):
    def make(rank=0, world_size=1):
        phages = RandomWindowSampler(store, seed=11, exclude=["chr2*"])
        human = RandomWindowSampler(store, seed=12, exclude=["NC_*", "gi|*"])
        return MixtureSampler([(phages, 0.7), (human, 0.3)], seed=5, rank=rank, world_size=world_size)

    mix = make()
    recs = np.concatenate([mix.next_batch(500, 200).record for _ in range(4)])
    assert abs(np.mean(recs == 3) - 0.3) < 0.04  # 2,000 rows, sd about 0.01
    state = json.loads(json.dumps(mix.state_dict()))
    after = [mix.next_batch(6, 400) for _ in range(2)]
    resumed = make()
    resumed.load_state_dict(state)
    assert all(np.array_equal(resumed.next_batch(6, 400).ids, b.ids) for b in after)
    two = [make(r, 2) for r in range(2)]
    for s in two:
        s.load_state_dict(state)
    for b in after:
        got = [s.next_batch(6, 400) for s in two]
        assert np.array_equal(np.concatenate([g.ids for g in got]), b.ids)
        assert np.array_equal(np.concatenate([g.record for g in got]), b.record)
    with pytest.raises(DataError, match="weights must be >= 0"):
        MixtureSampler([(RandomWindowSampler(store), -1.0)])
    with pytest.raises(DataError, match="has no sequence after excluding"):
        RandomWindowSampler(store, exclude=["*"])


def test_tiling_scores_every_base_once(store):
    L = 7_000
    for split in ("val", ["val", "test"]):
        ivs = store.intervals(split)
        tiler = TilingSampler(store, split, L)
        covered = {}
        for batch in tiler.batches(3):
            assert batch.ids.shape[1] == L
            assert np.all(batch.ids[~batch.valid] == PAD) and not batch.lower[~batch.valid].any()
            for row in range(len(batch.ids)):
                n = int(batch.valid[row].sum())
                assert batch.valid[row, :n].all()  # padding only at the end
                r, s = int(batch.record[row]), int(batch.start[row])
                ids, _ = store.window(r, s, s + n)
                assert np.array_equal(batch.ids[row, :n], ids)
                for pos in range(s, s + n, 97):  # spot-check positions, then count exactly below
                    assert (r, pos) not in covered
                    covered[(r, pos)] = True
                covered.setdefault(("bases", r), 0)
                covered[("bases", r)] += n
        for r, a, b in ivs:
            assert covered[("bases", r)] == sum(e - s for i, s, e in ivs if i == r)
        assert tiler.num_bases() == sum(e - s for _, s, e in ivs)
    # Two ranks together see exactly the windows of one rank, in the same number of batches.
    one = [b for b in TilingSampler(store, "val", 1_000).batches(5)]
    two = [list(TilingSampler(store, "val", 1_000, rank=r, world_size=2).batches(5)) for r in range(2)]
    assert len(two[0]) == len(two[1]) == len(one)
    got = sorted((int(r), int(s)) for part in two for b in part for r, s, v in zip(b.record, b.start, b.valid) if v.any())
    want = sorted((int(r), int(s)) for b in one for r, s in zip(b.record, b.start))
    assert got == want
    # A token cap keeps an evenly spread subset of windows.
    capped = TilingSampler(store, "val", 1_000)
    assert capped.num_bases(max_tokens=5_000) <= 5_000 and sum(int(b.valid.sum()) for b in capped.batches(4, 5_000)) == capped.num_bases(5_000)


def test_tiling_resume(store):
    tiler = TilingSampler(store, "test", 2_000)
    it = tiler.batches(2)
    next(it)
    next(it)
    state = tiler.state_dict()
    rest = [b.start.tolist() for b in it]
    again = TilingSampler(store, "test", 2_000)
    again.load_state_dict(state)
    assert [b.start.tolist() for b in again.batches(2)] == rest


def test_genic_needs_annotation(tmp_path):
    prepare([DATA / "phage_lambda.fa"], tmp_path / "s", progress=False)
    with pytest.raises(DataError, match="no annotated genes; prepare it with --gff"):
        GenicWindowSampler(TokenStore.open(tmp_path / "s"))


def _samplers(store):
    """One of each kind, with reverse complement and (genic, mixture) as rank 1 of 2."""
    mixture = MixtureSampler(
        [
            (RandomWindowSampler(store, seed=11, exclude=["chr2*"], rc_augment=True), 0.5),
            (RandomWindowSampler(store, seed=12, exclude=["NC_*", "gi|*"], rc_augment=True), 0.3),
            (GenicWindowSampler(store, seed=13, rc_augment=True), 0.2),
        ],
        seed=5, rank=1, world_size=2,
    )
    return {
        "random": RandomWindowSampler(store, "train", seed=3, rc_augment=True, max_n_fraction=0.1),
        "genic": GenicWindowSampler(store, "train", flank=200, seed=2, rc_augment=True, rank=1, world_size=2),
        "mixture": mixture,
    }


def _digest(batches) -> str:
    h = hashlib.sha256()
    for b in batches:
        for a, dtype in ((b.ids, np.uint8), (b.lower, np.bool_), (b.record, np.int64), (b.start, np.int64),
                         (b.strand, np.int8)):
            h.update(np.ascontiguousarray(a, dtype=dtype).tobytes())
    return h.hexdigest()[:16]


def test_outputs_unchanged_for_the_same_seed(store):
    """The same seed gives the same windows as before the speed work of issue 16 (digests recorded with the
    sampler of commit ae844fa): changing them would silently change the training data of every run."""
    want = {"random": "23e834f70f21d7c0", "genic": "9558b0f3d24644ff", "mixture": "cc757d105513bff0"}
    shapes = {"random": [(64, 2_000), (8, 300)], "genic": [(40, 1_500), (8, 300)], "mixture": [(64, 400), (8, 1_000)]}
    for kind, sampler in _samplers(store).items():
        batches = [sampler.next_batch(n, L) for n, L in shapes[kind]]
        assert _digest(batches) == want[kind], kind
        for b, (n, L) in zip(batches, shapes[kind]):  # and every row is what a plain per-row read gives
            assert b.ids.shape == (n // sampler.world_size, L) and b.valid.all()
            for i, (r, s, strand) in enumerate(zip(b.record.tolist(), b.start.tolist(), b.strand.tolist())):
                ids, low = store.window(r, s, s + L)
                if strand == -1:
                    ids, low = reverse_complement_ids(ids), low[::-1]
                assert np.array_equal(b.ids[i], ids) and np.array_equal(b.lower[i], low), (kind, i)


def test_case_mask_only_when_asked(store):
    """case_mask=False reads no mask (lower is None) and leaves everything else, and the stream, unchanged."""
    for kind, with_mask in _samplers(store).items():
        without = _samplers(store)[kind]
        for n, L in ((16, 700), (4, 2_000)):
            a, b = with_mask.next_batch(n, L), without.next_batch(n, L, case_mask=False)
            assert b.lower is None and a.lower is not None and a.lower.shape == a.ids.shape
            for field in ("ids", "valid", "record", "start", "strand"):
                assert np.array_equal(getattr(a, field), getattr(b, field)), (kind, field)
        assert json.dumps(with_mask.state_dict()) == json.dumps(without.state_dict())


def test_batches_share_constants_and_own_their_sequence(store):
    """valid (and strand without reverse complement) are zero-stride read-only views, not per-batch copies;
    ids and lower are the batch's own arrays, so writing to them cannot reach the memory-mapped store."""
    sampler = RandomWindowSampler(store, "train", seed=4)
    batch = sampler.next_batch(32, 1_000)
    assert batch.valid.all() and batch.valid.strides == (0, 0) and not batch.valid.flags.writeable
    assert np.all(batch.strand == 1) and batch.strand.strides == (0,) and not batch.strand.flags.writeable
    r, s = int(batch.record[0]), int(batch.start[0])
    before = store.window(r, s, s + 1_000)[0].copy()
    assert batch.ids.flags.writeable and batch.ids.flags.owndata and batch.lower.flags.owndata
    batch.ids[0] = PAD
    batch.lower[0] = True
    assert np.array_equal(store.window(r, s, s + 1_000)[0], before)
    assert np.array_equal(sampler.next_batch(32, 1_000).valid, np.ones((32, 1_000), dtype=bool))


def test_complement_and_reverse_match_the_tokenizer():
    every_byte = np.arange(256, dtype=np.uint8).reshape(4, 64)
    assert np.array_equal(_complement(every_byte.copy()), COMPLEMENT_ID[every_byte])
    assert np.array_equal(_reversed(every_byte), every_byte[:, ::-1])
    assert np.array_equal(_reversed(every_byte > 100), (every_byte > 100)[:, ::-1])


def test_n_count_matches_a_direct_count(store):
    """The N filter's count (from the N-run index) against counting N in the tokens themselves."""
    rng = np.random.default_rng(0)
    tokens = np.asarray(store.tokens)
    assert len(store._n_start) >= 1  # the hg38 slice's 10 kb N block (and any other runs)
    for L in (1, 100, 2_000, 20_000):
        starts = rng.integers(0, len(store) - L + 1, size=300)
        near = np.concatenate([store._n_start, store._n_end]) - L // 2  # windows cutting into N runs
        starts = np.concatenate([starts, np.clip(near, 0, len(store) - L)])
        want = [int(np.count_nonzero(tokens[s : s + L] == N)) for s in starts.tolist()]
        assert store.n_count(starts, L).tolist() == want, L


def test_n_filter_gives_up_with_a_clear_error(tmp_path):
    (tmp_path / "n.fa").write_text(">mostly_n\n" + "ACGT" * 10 + "N" * 3_000 + "\n")
    prepare([tmp_path / "n.fa"], tmp_path / "s", val_fraction=0.0, test_fraction=0.0, progress=False)
    sampler = RandomWindowSampler(TokenStore.open(tmp_path / "s"), "train", max_n_fraction=0.1)
    with pytest.raises(DataError, match="random windows of length 1000 with at most 10% N after 100 rounds"):
        sampler.next_batch(4, 1_000)
