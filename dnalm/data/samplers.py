"""Samplers: where training and evaluation windows come from.

Every sampler draws the *global* batch from one RNG stream and returns only this rank's share of it, so a
run on 2 ranks sees exactly the same global batch as a run on 1 rank with the same seed. A rank's share is
its contiguous slice of rows: rows ``[rank * B / W, (rank + 1) * B / W)`` (B must divide by W).

Determinism and resuming: each sampler owns one PCG64 generator seeded by ``(seed, sampler kind)``.
``state_dict()`` is a small JSON-able dict holding the generator state (and a draw count);
``load_state_dict()`` continues the identical stream.

Window placement (random windows): a window lies entirely inside one interval of the split (never across a
split or record boundary); intervals shorter than the window are skipped; an interval is picked with
probability proportional to its number of possible window starts, so every valid window is equally likely.
Windows with more than ``max_n_fraction`` N are redrawn.

Genic windows (as Evo 2 used): pick an annotated gene uniformly; its region is the gene plus ``flank``
bases on each side, clipped to the split interval that holds it. A window of length L is placed uniformly
inside the region when the region is at least L long, otherwise so that it covers the whole region; it
always stays inside the interval.

Reverse-complement augmentation flips a window (ids complemented and reversed, case mask reversed) with
probability 1/2.

Reading a batch: one vectorized draw, then one gather per array from zero-copy strided views of the
memory map (``TokenStore.windows_view``). The case mask is read only when asked for
(``next_batch(..., case_mask=True)``, the default; the trainer asks only when ``repeat_weight != 1``), and
arrays that hold one value (``valid``, ``strand`` without reverse complement) are shared read-only views.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache

import numpy as np
import torch

from dnalm.data.errors import DataError
from dnalm.data.store import TokenStore
from dnalm.tokenizer import A, PAD, T

_MAX_REDRAW_ROUNDS = 100


@dataclass
class Batch:
    """This rank's rows of a batch of windows (PAD / False where ``valid`` is False).

    Random, genic and mixture batches share what need not be copied: ``valid`` (all True for full-length
    windows) and ``strand`` without reverse complement are read-only broadcast views, and ``record`` and
    ``start`` are views of the draw. ``lower`` is None when the batch was drawn with ``case_mask=False``.
    """

    ids: np.ndarray  # (B, L) uint8 token ids of bases
    lower: np.ndarray | None  # (B, L) bool, True = lower case (soft-masked repeat); None when not requested
    valid: np.ndarray  # (B, L) bool, False at padding
    record: np.ndarray | None = None  # (B,) int64 record index per row (-1 for an all-padding row)
    start: np.ndarray | None = None  # (B,) int64 window start in record coordinates
    strand: np.ndarray | None = None  # (B,) int8: +1 as stored, -1 reverse-complemented


@dataclass
class Windows:
    """Coordinates of drawn windows (no sequence yet)."""

    store: TokenStore
    record: np.ndarray  # (n,) int64 record index
    start: np.ndarray  # (n,) int64 start in record coordinates
    offset: np.ndarray  # (n,) int64 start in the store's concatenated arrays (record offset + start)
    rc: np.ndarray | None  # (n,) bool reverse-complement flag; None when no window is flipped

    def rows(self, sel) -> Windows:
        """The windows picked by ``sel`` (a slice, boolean mask or index array)."""
        rc = None if self.rc is None else self.rc[sel]
        return Windows(self.store, self.record[sel], self.start[sel], self.offset[sel], rc)


# A draw of n rows: (row positions, windows for those rows) groups that together cover rows 0..n-1.
# Positions None: one group holding rows 0..n-1 in order (what a single random or genic sampler draws).
Draw = list[tuple[np.ndarray | None, Windows]]


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"rank {rank} / world_size {world_size}: need world_size >= 1 and 0 <= rank < world_size")


def _rank_rows(n: int, rank: int, world_size: int) -> tuple[int, int]:
    if n % world_size:
        raise DataError(f"global batch size {n} is not divisible by the world size {world_size}")
    per = n // world_size
    return rank * per, (rank + 1) * per


@lru_cache(maxsize=64)
def _constant(value: bool | int, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    """A read-only array of ``shape`` holding ``value`` everywhere, without allocating it (all strides 0).

    Cached: ``valid`` and ``strand`` of every batch of one shape are the same object, which costs nothing
    per batch (np.ones would allocate and fill; np.broadcast_to costs a few microseconds).
    """
    return np.ndarray(shape, dtype=dtype, buffer=np.array(value, dtype=dtype).tobytes(), strides=(0,) * len(shape))


def _gather(w: Windows, seq_len: int, case_mask: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Ids, case mask (None unless ``case_mask``) and strand of windows ``w``, flipped where ``w.rc``."""
    tok_windows, low_windows = w.store.windows_view(seq_len)  # (total - L + 1, L) zero-copy strided views
    ids = tok_windows[w.offset]  # one gather in C, no per-row Python
    lower = low_windows[w.offset] if case_mask else None
    if w.rc is None:
        return ids, lower, _constant(1, np.int8, (len(ids),))
    flip = np.flatnonzero(w.rc)
    if flip.size:
        ids[flip] = _reversed(_complement(ids[flip]))
        if lower is not None:
            lower[flip] = _reversed(lower[flip])
    return ids, lower, np.where(w.rc, np.int8(-1), np.int8(1))


def _complement(ids: np.ndarray) -> np.ndarray:
    """``COMPLEMENT_ID[ids]`` (A<->T, C<->G, every other byte unchanged) in plain uint8 arithmetic.

    Table lookup widens the uint8 index to int64 first, and np.where / ``where=`` take slow masked loops on
    bytes: this costs about 1/13 of the lookup.
    """
    acgt = (ids - np.uint8(A) <= np.uint8(T - A)).view(np.uint8)  # 1 exactly at A, C, G, T (uint8 wraps around)
    return ids + acgt * (np.uint8(A + T) - ids - ids)  # A + T - x at A, C, G, T; x elsewhere


def _reversed(rows: np.ndarray) -> np.ndarray:
    """``rows[:, ::-1]``, copied by torch.flip: about 10x faster than numpy's byte-by-byte negative-stride copy."""
    return torch.from_numpy(rows).flip(1).numpy()


def _materialize(draw: Draw, lo: int, hi: int, seq_len: int, case_mask: bool) -> Batch:
    """Read rows ``[lo, hi)`` of a draw from the stores into a Batch (full-length windows)."""
    m = hi - lo
    valid = _constant(True, np.bool_, (m, seq_len))
    if len(draw) == 1 and draw[0][0] is None:
        # One group in row order (a random or genic sampler): this rank's rows are a slice of it.
        w = draw[0][1]
        if m != len(w.offset):
            w = w.rows(slice(lo, hi))
        ids, lower, strand = _gather(w, seq_len, case_mask)
        return Batch(ids, lower, valid, w.record, w.start, strand)
    ids = np.empty((m, seq_len), dtype=np.uint8)
    lower = np.empty((m, seq_len), dtype=bool) if case_mask else None
    record = np.empty(m, dtype=np.int64)
    start = np.empty(m, dtype=np.int64)
    strand = np.empty(m, dtype=np.int8)
    for pos, w in draw:
        keep = (pos >= lo) & (pos < hi)
        if not keep.any():
            continue
        rows = pos[keep] - lo
        part = w.rows(keep)
        ids[rows], low, strand[rows] = _gather(part, seq_len, case_mask)
        if lower is not None:
            lower[rows] = low
        record[rows], start[rows] = part.record, part.start
    return Batch(ids, lower, valid, record, start, strand)


class _Sampler:
    """Shared machinery: one seeded RNG stream, rank sharding, state."""

    kind = "sampler"
    _stream = 0  # separates the streams of different sampler kinds with the same seed

    def __init__(self, seed: int, rank: int, world_size: int):
        _check_rank(rank, world_size)
        if int(seed) < 0:
            raise DataError(f"seed must be >= 0 (got {seed})")
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.draws = 0
        # One generator for the whole stream (building a seeded generator per batch costs ~0.1 ms).
        self._gen = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, self._stream])))

    def _rng(self) -> np.random.Generator:
        self.draws += 1
        return self._gen

    def draw(self, n: int, seq_len: int) -> Draw:  # pragma: no cover - abstract
        raise NotImplementedError

    def next_batch(self, global_batch_size: int, seq_len: int, *, case_mask: bool = True) -> Batch:
        """Draw the next global batch of ``global_batch_size`` windows of ``seq_len``; return this rank's rows.

        ``case_mask=False`` skips reading the case mask (``Batch.lower`` is None): the trainer asks for it
        only when a loss weight uses it. The windows and the stream are the same either way.
        """
        if global_batch_size < 1 or seq_len < 1:
            raise DataError(f"batch size and sequence length must be >= 1 (got {global_batch_size}, {seq_len})")
        lo, hi = _rank_rows(global_batch_size, self.rank, self.world_size)
        return _materialize(self.draw(global_batch_size, seq_len), lo, hi, seq_len, case_mask)

    def _settings(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        """The sampler's position (JSON-able)."""
        return {
            "kind": self.kind,
            "seed": self.seed,
            "draws": self.draws,
            "rng": self._gen.bit_generator.state,  # plain dict of ints (JSON-able)
            "settings": self._settings(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue the stream saved by :meth:`state_dict` (same kind and settings required)."""
        if state.get("kind") != self.kind:
            raise DataError(f"sampler state is for a {state.get('kind')!r} sampler, not {self.kind!r}")
        if state.get("settings", {}) != self._settings():
            raise DataError(
                f"{self.kind} sampler settings changed since the state was saved "
                f"(saved {state.get('settings')}, now {self._settings()}); resuming would not continue the stream"
            )
        self.seed, self.draws = int(state["seed"]), int(state["draws"])
        self._gen.bit_generator.state = state["rng"]


def _filter_intervals(store: TokenStore, split: str | Sequence[str], exclude: Iterable[str]) -> np.ndarray:
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)
    ivs = [
        iv for iv in store.intervals(split) if not any(fnmatchcase(store.records[iv[0]].name, p) for p in exclude)
    ]
    if not ivs:
        why = f" after excluding {exclude}" if exclude else ""
        raise DataError(f"{store.path}: split {split!r} has no sequence{why}")
    return np.array(ivs, dtype=np.int64).reshape(-1, 3)


def _too_short(store: TokenStore, ivs: np.ndarray, split, seq_len: int, what: str = "interval") -> DataError:
    lens = ivs[:, 2] - ivs[:, 1]
    k = int(np.argmax(lens))
    rec = store.records[int(ivs[k, 0])].name
    return DataError(
        f"{store.path}: window length {seq_len} is longer than every {what} of split {split!r} "
        f"(longest: {rec} [{int(ivs[k, 1])}, {int(ivs[k, 2])}), {int(lens[k])} bp); use a shorter sequence length"
    )


class _NFilter:
    """Redraws windows with too many N, in vectorized rounds."""

    def __init__(self, store: TokenStore, max_n_fraction: float):
        if not 0.0 <= max_n_fraction <= 1.0:
            raise DataError(f"max_n_fraction must be in [0, 1] (got {max_n_fraction})")
        self.store, self.max_n_fraction = store, float(max_n_fraction)

    def run(self, n: int, seq_len: int, propose, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``propose(m) -> (records, starts, offsets)``; returns n accepted windows in draw order."""
        if self.max_n_fraction >= 1.0 or not len(self.store._n_start):
            return propose(n)  # nothing to filter
        limit = self.max_n_fraction * seq_len
        out = propose(n)
        bad = np.flatnonzero(self.store.n_count(out[2], seq_len) > limit)
        rounds = 1
        while bad.size:  # usually no row is rejected, and the first proposal is returned as it is
            if rounds == _MAX_REDRAW_ROUNDS:
                raise DataError(
                    f"{self.store.path}: could not find {what} of length {seq_len} with at most "
                    f"{self.max_n_fraction:.0%} N after {_MAX_REDRAW_ROUNDS} rounds; raise max_n_fraction or "
                    "exclude N-rich records"
                )
            redrawn = propose(bad.size)  # the rejected rows only, in row order
            for arr, new in zip(out, redrawn):
                arr[bad] = new
            bad = bad[self.store.n_count(redrawn[2], seq_len) > limit]
            rounds += 1
        return out


class RandomWindowSampler(_Sampler):
    """Uniformly random windows of a split (see the module docstring for the placement rule)."""

    kind = "random"
    _stream = 1

    def __init__(
        self,
        store: TokenStore,
        split: str | Sequence[str] = "train",
        *,
        seed: int = 0,
        rc_augment: bool = False,
        max_n_fraction: float = 0.1,
        exclude: Iterable[str] = (),
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(seed, rank, world_size)
        self.store, self.split, self.rc_augment = store, split, bool(rc_augment)
        self.exclude = [exclude] if isinstance(exclude, str) else list(exclude)
        self._ivs = _filter_intervals(store, split, self.exclude)  # (k, 3) record, start, end
        self._nfilter = _NFilter(store, max_n_fraction)
        self._cache: dict[int, tuple] = {}

    def _settings(self) -> dict:
        split = self.split if isinstance(self.split, str) else list(self.split)
        return {"split": split, "exclude": self.exclude, "bases": len(self.store)}

    def _usable(self, seq_len: int):
        if seq_len not in self._cache:
            lens = self._ivs[:, 2] - self._ivs[:, 1]
            ok = lens >= seq_len
            if not ok.any():
                raise _too_short(self.store, self._ivs, self.split, seq_len)
            ivs = self._ivs[ok]
            n_starts = lens[ok] - seq_len + 1  # possible window starts per interval
            cum = np.cumsum(n_starts)
            # Window number u (of all cum[-1]) lies in interval k and starts at ivs[k, 1] + u - (cum[k] - n_starts[k]).
            shift = ivs[:, 1] - cum + n_starts
            self._cache[seq_len] = (ivs[:, 0], shift, shift + self.store.global_offset(ivs[:, 0]), cum, int(cum[-1]))
        return self._cache[seq_len]

    def draw(self, n: int, seq_len: int) -> Draw:
        recs, shift, offset_shift, cum, total = self._usable(seq_len)
        rng = self._rng()

        def propose(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            u = rng.integers(0, total, size=m)  # a uniform index over all valid windows
            k = np.searchsorted(cum, u, side="right")
            return recs[k], u + shift[k], u + offset_shift[k]

        rec, start, offset = self._nfilter.run(n, seq_len, propose, "random windows")
        rc = rng.random(n) < 0.5 if self.rc_augment else None
        return [(None, Windows(self.store, rec, start, offset, rc))]


class GenicWindowSampler(_Sampler):
    """Windows around annotated genes with ``flank`` bases each side (see the module docstring)."""

    kind = "genic"
    _stream = 2

    def __init__(
        self,
        store: TokenStore,
        split: str | Sequence[str] = "train",
        *,
        flank: int = 1000,
        seed: int = 0,
        rc_augment: bool = False,
        max_n_fraction: float = 0.1,
        exclude: Iterable[str] = (),
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(seed, rank, world_size)
        if flank < 0:
            raise DataError(f"flank must be >= 0 (got {flank})")
        self.store, self.split, self.flank, self.rc_augment = store, split, int(flank), bool(rc_augment)
        self.exclude = [exclude] if isinstance(exclude, str) else list(exclude)
        genes = store.genes()
        if not genes:
            raise DataError(
                f"{store.path}: the store has no annotated genes; prepare it with --gff ANNOTATION "
                "(or a GenBank input) to use genic windows"
            )
        ivs = _filter_intervals(store, split, self.exclude)
        g = np.array([(x.record_index, x.start, x.end) for x in genes], dtype=np.int64)  # (G, 3)
        rows = []  # (record, interval start, interval end, region start, region end)
        for rec, s, e in ivs:
            hit = (g[:, 0] == rec) & (g[:, 1] < e) & (g[:, 2] > s)
            a = np.maximum(s, g[hit, 1] - self.flank)
            b = np.minimum(e, g[hit, 2] + self.flank)
            rows.append(np.stack([np.full(a.shape, rec), np.full(a.shape, s), np.full(a.shape, e), a, b], axis=1))
        self._regions = np.concatenate(rows) if rows else np.zeros((0, 5), dtype=np.int64)
        if not len(self._regions):
            raise DataError(f"{store.path}: no annotated gene lies in split {split!r}")
        self._ivs = ivs
        self._nfilter = _NFilter(store, max_n_fraction)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def _settings(self) -> dict:
        split = self.split if isinstance(self.split, str) else list(self.split)
        return {"split": split, "exclude": self.exclude, "flank": self.flank, "bases": len(self.store)}

    def num_genes(self) -> int:
        """Gene regions in this split (a gene cut by a split boundary counts on each side)."""
        return len(self._regions)

    def _placements(self, seq_len: int):
        """Per eligible region: record and the inclusive range [lo, hi] of window starts."""
        if seq_len not in self._cache:
            rec, s, e, a, b = self._regions.T
            long_region = b - a >= seq_len
            lo = np.where(long_region, a, b - seq_len)  # inside the region, or covering it
            hi = np.where(long_region, b - seq_len, a)
            lo, hi = np.maximum(lo, s), np.minimum(hi, e - seq_len)  # stay inside the interval
            ok = e - s >= seq_len
            if not ok.any():
                raise _too_short(self.store, self._ivs, self.split, seq_len, "interval holding a gene")
            self._cache[seq_len] = (rec[ok], lo[ok], hi[ok])
        return self._cache[seq_len]

    def draw(self, n: int, seq_len: int) -> Draw:
        recs, lo, hi = self._placements(seq_len)
        rng = self._rng()

        def propose(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            k = rng.integers(0, len(recs), size=m)
            rec, start = recs[k], rng.integers(lo[k], hi[k] + 1)
            return rec, start, self.store.global_offset(rec) + start

        rec, start, offset = self._nfilter.run(n, seq_len, propose, "genic windows")
        rc = rng.random(n) < 0.5 if self.rc_augment else None
        return [(None, Windows(self.store, rec, start, offset, rc))]


class MixtureSampler(_Sampler):
    """A weighted mixture of samplers: each row of the global batch picks its source by weight.

    Example: ``MixtureSampler([(genic, 0.7), (random, 0.3)])`` gives 70% genic and 30% whole-genome windows.
    The sources' own rank settings are ignored; the mixture shards the global batch.
    """

    kind = "mixture"
    _stream = 3

    def __init__(self, sources: Sequence[tuple[_Sampler, float]], *, seed: int = 0, rank: int = 0, world_size: int = 1):
        super().__init__(seed, rank, world_size)
        if not sources:
            raise DataError("a mixture needs at least one source")
        weights = np.array([float(w) for _, w in sources])
        if np.any(~np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
            raise DataError(f"mixture weights must be >= 0 with a positive sum (got {weights.tolist()})")
        self.sources = [s for s, _ in sources]
        self.weights = weights / weights.sum()

    def _settings(self) -> dict:
        return {"weights": [round(float(w), 12) for w in self.weights]}

    def draw(self, n: int, seq_len: int) -> Draw:
        rng = self._rng()
        which = rng.choice(len(self.sources), size=n, p=self.weights)  # (n,) source of each row
        out: Draw = []
        for j, src in enumerate(self.sources):
            rows = np.flatnonzero(which == j)
            if rows.size:
                out.extend((rows if pos is None else rows[pos], w) for pos, w in src.draw(rows.size, seq_len))
        return out

    def state_dict(self) -> dict:
        return {**super().state_dict(), "sources": [s.state_dict() for s in self.sources]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        subs = state.get("sources", [])
        if len(subs) != len(self.sources):
            raise DataError(f"mixture state has {len(subs)} sources, this mixture has {len(self.sources)}")
        for s, d in zip(self.sources, subs):
            s.load_state_dict(d)


class TilingSampler:
    """Deterministic tiling of a split for evaluation: every base scored exactly once.

    Each interval is cut into consecutive windows of ``seq_len``; the last window of an interval may be
    shorter and is padded on the right (``valid`` False, ids PAD). Batches hold ``batch_size`` windows
    globally; each rank gets its contiguous share, and the last batch is padded with empty rows to a
    multiple of the world size so every rank runs the same number of batches.
    """

    def __init__(self, store: TokenStore, split: str | Sequence[str], seq_len: int, *, rank: int = 0, world_size: int = 1):
        _check_rank(rank, world_size)
        if seq_len < 1:
            raise DataError(f"sequence length must be >= 1 (got {seq_len})")
        self.store, self.split, self.seq_len = store, split, int(seq_len)
        self.rank, self.world_size = int(rank), int(world_size)
        ivs = store.intervals(split)
        recs, starts, lens = [], [], []
        for rec, s, e in ivs:
            st = np.arange(s, e, seq_len, dtype=np.int64)
            recs.append(np.full(st.shape, rec, dtype=np.int64))
            starts.append(st)
            lens.append(np.minimum(seq_len, e - st))
        empty = np.zeros(0, dtype=np.int64)
        self._rec = np.concatenate(recs) if recs else empty
        self._start = np.concatenate(starts) if starts else empty
        self._len = np.concatenate(lens) if lens else empty
        self.batches_done = 0
        self._resume_at = 0

    def num_windows(self) -> int:
        return int(len(self._rec))

    def _selected(self, max_tokens: int | None) -> np.ndarray:
        """All windows, or an evenly spaced subset of about ``max_tokens`` bases (at least one window)."""
        n = self.num_windows()
        if max_tokens is None or max_tokens >= int(self._len.sum()):
            return np.arange(n)
        keep = max(1, int(max_tokens) // self.seq_len)
        return np.unique(np.linspace(0, n - 1, keep).round().astype(np.int64))

    def num_bases(self, max_tokens: int | None = None) -> int:
        """Bases the tiling scores (the whole split when ``max_tokens`` is None)."""
        return int(self._len[self._selected(max_tokens)].sum())

    def batches(self, batch_size: int, max_tokens: int | None = None) -> Iterator[Batch]:
        """Yield this rank's share of each global batch of ``batch_size`` windows, in a fixed order."""
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1 (got {batch_size})")
        sel = self._selected(max_tokens)
        L, W = self.seq_len, self.world_size
        first = self._resume_at
        self._resume_at = 0
        self.batches_done = first
        for b0 in range(first * batch_size, len(sel), batch_size):
            rows = sel[b0 : b0 + batch_size]
            total = -(-len(rows) // W) * W  # pad the row count to a multiple of the world size
            per = total // W
            mine = np.full(per, -1, dtype=np.int64)
            part = rows[self.rank * per : (self.rank + 1) * per]
            mine[: len(part)] = part
            ids = np.full((per, L), PAD, dtype=np.uint8)
            lower = np.zeros((per, L), dtype=bool)
            valid = np.zeros((per, L), dtype=bool)
            record = np.full(per, -1, dtype=np.int64)
            start = np.zeros(per, dtype=np.int64)
            for i, w in enumerate(mine):
                if w < 0:
                    continue
                rec, s, n = int(self._rec[w]), int(self._start[w]), int(self._len[w])
                t, lo = self.store.window(rec, s, s + n)
                ids[i, :n], lower[i, :n], valid[i, :n] = t, lo, True
                record[i], start[i] = rec, s
            self.batches_done += 1
            yield Batch(ids, lower, valid, record, start, np.ones(per, dtype=np.int8))

    def state_dict(self) -> dict:
        """How many batches of the current pass were yielded (to resume a long evaluation)."""
        return {"kind": "tiling", "batches_done": self.batches_done}

    def load_state_dict(self, state: dict) -> None:
        """The next :meth:`batches` call skips the batches already done."""
        if state.get("kind") != "tiling":
            raise DataError(f"sampler state is for a {state.get('kind')!r} sampler, not 'tiling'")
        self._resume_at = int(state["batches_done"])
