"""The token store: genomes prepared once into memory-mapped arrays that samplers read windows from.

Layout of a store directory (``dnalm prepare ... --out DIR``)::

    DIR/tokens.u8       uint8 token ids (dnalm.tokenizer) of every record, concatenated, no separators
    DIR/lower.u8        one byte per base, 1 where the input was lower case (soft-masked repeat)
    DIR/nruns.npy       int64 (K, 2): [start, end) of every run of N, in global offsets
    DIR/index.json      records (name, description, offset, length, source, circular, split, counts),
                        split intervals and annotated genes
    DIR/manifest.json   input checksums, options, counts, split sizes, timing; written last

Conventions (owned here, stated once):

- Coordinates in the index and in every API are 0-based half-open *record* coordinates
  ``(record_index, start, end)``; ``offset`` maps them into the concatenated arrays.
- Splits are ``train``, ``val`` (alias ``validation``) and ``test``. A record goes whole to ``val`` or
  ``test`` when its name matches a ``val_records``/``test_records`` glob pattern. Otherwise it is cut into
  contiguous blocks: the first ``1 - val_fraction - test_fraction`` of the record is train, then a val
  block, then a test block at its end (for a kind of held-out split that is chosen by name, that block is
  omitted). Samplers keep every window inside one interval, so no window crosses a split boundary.
- The store is written into a temporary sibling directory and renamed into place, so a killed prepare
  never leaves a store that looks complete; the next prepare removes such leftovers (dnalm.outputs).
  ``TokenStore.open`` refuses a temporary folder and checks the manifest and the sizes.
- Re-running prepare with the same inputs (by content checksum) and options is a no-op that returns the
  manifest with ``up_to_date: True``; changed inputs or options rebuild the store.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

from dnalm.checkpoint import atomic_dir
from dnalm.data.annotation import Feature, annotation_format, check_features, gene_features, read_annotations
from dnalm.data.errors import DataError
from dnalm.data.fasta import sniff_format
from dnalm.data.sequences import read_sequences
from dnalm.data.tables import check_input_file
from dnalm.outputs import clean_stale, is_temporary
from dnalm.tokenizer import C, G, N
from dnalm.version import __version__

STORE_FORMAT = "dnalm-token-store"
STORE_VERSION = 1
TOKENS_FILE, LOWER_FILE, NRUNS_FILE = "tokens.u8", "lower.u8", "nruns.npy"
INDEX_FILE, MANIFEST_FILE = "index.json", "manifest.json"
SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"validation": "val", "valid": "val", "training": "train"}


def default_genome() -> tuple[Path, Path]:
    """The embedded E. coli K-12 MG1655 genome and its RefSeq GFF3 (package data)."""
    base = resources.files("dnalm") / "resources"
    return Path(str(base / "ecoli_k12_mg1655.fa.gz")), Path(str(base / "ecoli_k12_mg1655.gff3.gz"))


def canonical_split(name: str) -> str:
    """'train', 'val' or 'test' (accepts 'validation'); DataError otherwise."""
    key = _SPLIT_ALIASES.get(name, name)
    if key not in SPLITS:
        raise DataError(f"unknown split {name!r}; use one of train, val (validation), test, or all")
    return key


@dataclass(frozen=True)
class StoreRecord:
    """One record of a store (counts: G+C bases, N bases, lower-case bases)."""

    name: str
    description: str
    offset: int
    length: int
    source: str
    circular: bool
    split: str  # 'train', 'val', 'test' (whole record) or 'blocks' (train + held-out blocks)
    gc: int
    n: int
    lower: int


class Gene(NamedTuple):
    """An annotated gene in record coordinates (end may pass the record end on circular records)."""

    record_index: int
    start: int
    end: int
    strand: int
    name: str


# ---------------------------------------------------------------------------------------------- prepare


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_patterns(patterns: Sequence[str], option: str) -> list[str]:
    if isinstance(patterns, str):
        patterns = [patterns]
    for p in patterns:
        if not isinstance(p, str):
            raise DataError(f"{option}: record patterns must be strings (got {p!r})")
    return [p.strip() for p in patterns if p.strip()]


def _existing_manifest(out: Path) -> dict | None:
    """The manifest of a complete store at ``out``; None when ``out`` is absent or an empty directory."""
    if not out.exists():
        return None
    if out.is_dir() and not any(out.iterdir()):
        return None
    mpath = out / MANIFEST_FILE
    try:
        manifest = json.loads(mpath.read_text())
        if manifest.get("format") == STORE_FORMAT and manifest.get("complete"):
            return manifest
    except (OSError, ValueError):
        pass
    raise DataError(
        f"{out}: exists and is not a complete dnalm token store; choose another --out or remove it "
        "(prepare never overwrites other files)"
    )


def _split_records(
    records: list[dict[str, Any]],
    val_fraction: float,
    test_fraction: float,
    val_records: list[str],
    test_records: list[str],
) -> dict[str, list[list[int]]]:
    """Assign each record (whole, or as train/val/test blocks) to splits; sets record['split']."""
    splits: dict[str, list[list[int]]] = {s: [] for s in SPLITS}
    used = {p: False for p in val_records + test_records}
    for i, r in enumerate(records):
        name, n = r["name"], r["length"]
        in_val = [p for p in val_records if fnmatchcase(name, p)]
        in_test = [p for p in test_records if fnmatchcase(name, p)]
        for p in in_val + in_test:
            used[p] = True
        if in_val and in_test:
            raise DataError(
                f"record {name!r} matches both --val-records {in_val[0]!r} and --test-records {in_test[0]!r}"
            )
        if in_val or in_test:
            r["split"] = "val" if in_val else "test"
            splits[r["split"]].append([i, 0, n])
            continue
        n_val = 0 if val_records else int(round(n * val_fraction))
        n_test = 0 if test_records else int(round(n * test_fraction))
        a = max(0, n - n_val - n_test)
        b = min(n, a + n_val)
        r["split"] = "blocks" if (n_val or n_test) else "train"
        for split, s, e in (("train", 0, a), ("val", a, b), ("test", b, n)):
            if e > s:
                splits[split].append([i, s, e])
    unused = [p for p, hit in used.items() if not hit]
    if unused:
        names = ", ".join(r["name"] for r in records[:10]) + (" ..." if len(records) > 10 else "")
        raise DataError(f"record pattern {unused[0]!r} matches no record (records: {names})")
    return splits


def prepare(
    inputs: Sequence[str | Path],
    out: str | Path,
    annotations: Sequence[str | Path] = (),
    *,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    val_records: Sequence[str] = (),
    test_records: Sequence[str] = (),
    zero_based_gff: bool = False,
    circular: Sequence[str] = (),
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Prepare FASTA/GenBank ``inputs`` (+ GFF3/GTF ``annotations``) into a token store at ``out``.

    Args:
        inputs: sequence files (FASTA plain/gzip/bgzip, GenBank); record names must be unique across them.
        out: the store directory (created atomically; replaced when inputs or options changed).
        annotations: GFF3 or GTF files whose genes feed genic windows (GenBank features are always used).
        val_fraction, test_fraction: share of each record held out as a contiguous block at its end.
        val_records, test_records: glob patterns; matching records go whole to that split (and the
            fraction for that split is then not used).
        zero_based_gff: the annotation files write 0-based starts (the phiX174 ORF GFF does).
        circular: glob patterns of circular records (features may cross their origin).
        force: rebuild even when the store is up to date.
        progress: show a progress bar on stderr.

    Returns the manifest; ``manifest["up_to_date"]`` is True when nothing had to be done.
    Raises DataError for bad inputs or options; nothing is written then.
    """
    t0 = time.perf_counter()
    out = Path(out)
    clean_stale(out)  # temporaries of a killed prepare, also when the store is up to date
    inputs = [Path(p) for p in inputs]
    annotations = [Path(p) for p in annotations]
    if not inputs:
        raise DataError("prepare: no input files given")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= float(value) < 1.0:
            raise DataError(f"prepare: {name} must be in [0, 1) (got {value})")
    if val_fraction + test_fraction >= 1.0:
        raise DataError(f"prepare: val_fraction + test_fraction must be < 1 (got {val_fraction + test_fraction})")
    val_records = _check_patterns(val_records, "--val-records")
    test_records = _check_patterns(test_records, "--test-records")
    circular = _check_patterns(circular, "--circular")
    for p in inputs:
        check_input_file(p, "genome file")
    for p in annotations:
        check_input_file(p, "annotation file")

    options = {
        "val_fraction": float(val_fraction),
        "test_fraction": float(test_fraction),
        "val_records": val_records,
        "test_records": test_records,
        "zero_based_gff": bool(zero_based_gff),
        "circular": circular,
    }
    input_sums = [file_sha256(p) for p in inputs]
    annot_sums = [file_sha256(p) for p in annotations]
    fingerprint = {
        "store_version": STORE_VERSION,
        "inputs": [[p.name, s] for p, s in zip(inputs, input_sums)],
        "annotations": [[p.name, s] for p, s in zip(annotations, annot_sums)],
        "options": options,
    }
    existing = _existing_manifest(out)
    if existing is not None and not force and existing.get("fingerprint") == fingerprint:
        try:
            TokenStore.open(out)
            return {**existing, "up_to_date": True}
        except DataError:
            pass  # damaged by hand: rebuild
    with atomic_dir(out) as tmp:
        manifest = _build(tmp, inputs, input_sums, annotations, annot_sums, options, progress)
        manifest["fingerprint"] = fingerprint
        manifest["replaced_previous"] = existing is not None
        manifest["seconds"] = round(time.perf_counter() - t0, 3)
        manifest["mb_per_s"] = round(manifest["counts"]["bases"] / 1e6 / max(manifest["seconds"], 1e-9), 3)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


@dataclass
class _Sequences:
    """What reading the sequence files gave: record rows for the index, base counts, and GenBank features."""

    records: list[dict[str, Any]]
    counts: np.ndarray  # (256,) occurrences of C, G and N token ids
    lower: int  # lower-case bases
    features: list[Feature]  # GenBank features (always used for genes)
    inputs: list[dict[str, Any]]  # per input file, for the manifest

    @property
    def bases(self) -> int:
        return sum(r["length"] for r in self.records)


def _build(
    tmp: Path,
    inputs: list[Path],
    input_sums: list[str],
    annotations: list[Path],
    annot_sums: list[str],
    options: dict[str, Any],
    progress: bool,
) -> dict:
    """Write the store's files into ``tmp``; returns the manifest (without its fingerprint and timing)."""
    seqs = _write_sequences(tmp, inputs, input_sums, options, progress)
    gene_rows, annot_info = _read_genes(seqs, annotations, annot_sums, options)
    splits = _split_records(
        seqs.records, options["val_fraction"], options["test_fraction"], options["val_records"], options["test_records"]
    )
    index = {"records": seqs.records, "splits": splits, "genes": [list(g) for g in gene_rows]}
    (tmp / INDEX_FILE).write_text(json.dumps(index) + "\n")
    return _manifest(seqs, gene_rows, annot_info, splits, options)


def _write_sequences(tmp: Path, inputs: list[Path], input_sums: list[str], options: dict[str, Any], progress: bool
                     ) -> _Sequences:  # fmt: skip
    """Stream every record of ``inputs`` into tokens.u8 / lower.u8 and the runs of N into nruns.npy."""
    records: list[dict[str, Any]] = []
    where: dict[str, Path] = {}
    nruns: list[np.ndarray] = []
    features: list[Feature] = []
    input_info: list[dict[str, Any]] = []
    counts = np.zeros(256, dtype=np.int64)
    lower_total, offset = 0, 0
    # disable=None: progress only on a terminal, so logs stay clean
    bar = tqdm(desc="prepare", unit="bp", unit_scale=True, disable=None if progress else True, leave=False)
    try:
        with open(tmp / TOKENS_FILE, "wb") as tok_f, open(tmp / LOWER_FILE, "wb") as low_f:
            for path, digest in zip(inputs, input_sums):
                fmt = sniff_format(path)
                n_rec = n_bases = 0
                for rec in read_sequences(path):
                    if rec.name in where:
                        raise DataError(
                            f"{path}: record {rec.name!r} was already read from {where[rec.name]}; "
                            "record names must be unique across inputs"
                        )
                    where[rec.name] = path
                    n = len(rec)
                    tok_f.write(memoryview(rec.ids))
                    low_f.write(memoryview(rec.lower.view(np.uint8)))
                    # counts by comparison: np.bincount would first widen every byte to int64
                    c = {k: int(np.count_nonzero(rec.ids == k)) for k in (C, G, N)}
                    for k, v in c.items():
                        counts[k] += v
                    n_lower = int(np.count_nonzero(rec.lower))
                    lower_total += n_lower
                    if c[N]:
                        edges = np.diff((rec.ids == N).view(np.int8), prepend=np.int8(0), append=np.int8(0))
                        runs = np.stack([np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)], axis=1)
                        nruns.append(runs.astype(np.int64) + offset)
                    is_circular = rec.circular or any(fnmatchcase(rec.name, p) for p in options["circular"])
                    records.append(
                        {
                            "name": rec.name,
                            "description": rec.description,
                            "offset": offset,
                            "length": n,
                            "source": str(path),
                            "circular": bool(is_circular),
                            "split": "train",
                            "gc": int(c[C] + c[G]),
                            "n": int(c[N]),
                            "lower": n_lower,
                        }
                    )
                    features.extend(rec.features)
                    offset += n
                    n_rec += 1
                    n_bases += n
                    bar.update(n)
                input_info.append(
                    {
                        "path": str(path.resolve()),
                        "sha256": digest,
                        "bytes": path.stat().st_size,
                        "format": fmt,
                        "records": n_rec,
                        "bases": n_bases,
                    }
                )
    finally:
        bar.close()
    np.save(tmp / NRUNS_FILE, np.concatenate(nruns) if nruns else np.zeros((0, 2), dtype=np.int64))
    return _Sequences(records, counts, lower_total, features, input_info)


def _read_genes(seqs: _Sequences, annotations: list[Path], annot_sums: list[str], options: dict[str, Any]
                ) -> tuple[list[tuple], list[dict[str, Any]]]:  # fmt: skip
    """Genes from the annotation files and the GenBank features, checked against the records' lengths:
    (sorted (record index, start, end, strand, name) rows, per-annotation-file manifest entries)."""
    records = seqs.records
    lengths = {r["name"]: r["length"] for r in records}
    circ = {r["name"] for r in records if r["circular"]}
    index_of = {r["name"]: i for i, r in enumerate(records)}
    genes: list[Feature] = []
    annot_info: list[dict[str, Any]] = []
    for path, digest in zip(annotations, annot_sums):
        feats = read_annotations(path, zero_based_starts=options["zero_based_gff"], lengths=lengths, circular=circ)
        known = [f for f in feats if f.seqid in lengths]
        if feats and not known:
            names = ", ".join(list(lengths)[:5]) + (" ..." if len(lengths) > 5 else "")
            raise DataError(
                f"{path}: no feature lies on a record of the inputs (first seqid {feats[0].seqid!r}; "
                f"records: {names}); check that the annotation belongs to these sequences"
            )
        file_genes = gene_features(known)
        genes.extend(file_genes)
        annot_info.append(
            {
                "path": str(path.resolve()),
                "sha256": digest,
                "bytes": path.stat().st_size,
                "format": annotation_format(path),
                "features": len(known),
                "genes": len(file_genes),
                "skipped_features": len(feats) - len(known),  # on sequences not among the inputs
            }
        )
    if seqs.features:
        check_features(seqs.features, lengths, circ, "GenBank features")
        genes.extend(gene_features(seqs.features))
    gene_rows = sorted(
        (index_of[f.seqid], f.start, f.end, f.strand, f.name or f.id or f"{f.type}@{f.start}") for f in genes
    )
    return gene_rows, annot_info


def _manifest(seqs: _Sequences, gene_rows: list, annot_info: list, splits: dict, options: dict[str, Any]) -> dict:
    counts, total, lower_total = seqs.counts, seqs.bases, seqs.lower
    acgt = total - int(counts[N])  # the reader emits only A/C/G/T/N ids
    split_sizes = {s: {"bases": int(sum(e - b for _, b, e in iv)), "intervals": len(iv)} for s, iv in splits.items()}
    return {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "complete": True,
        "dnalm_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": seqs.inputs,
        "annotations": annot_info,
        "options": options,
        "counts": {
            "records": len(seqs.records),
            "bases": total,
            "gc_bases": int(counts[C] + counts[G]),
            "n_bases": int(counts[N]),
            "lower_bases": int(lower_total),
            "gc_fraction": round(int(counts[C] + counts[G]) / acgt, 6) if acgt else 0.0,
            "n_fraction": round(int(counts[N]) / total, 6),
            "lower_fraction": round(lower_total / total, 6),
            "genes": len(gene_rows),
        },
        "splits": split_sizes,
        "up_to_date": False,
    }


# ---------------------------------------------------------------------------------------------- reading


class TokenStore:
    """A prepared store, memory-mapped read-only. Open with :meth:`TokenStore.open`."""

    def __init__(self, path: Path, manifest: dict, index: dict, tokens: np.ndarray, lower: np.ndarray, nruns):
        self.path = path
        self.manifest = manifest
        self.records = [StoreRecord(**r) for r in index["records"]]
        self.tokens = tokens  # (total,) uint8 memmap
        self.lower = lower  # (total,) bool memmap
        self._splits = {s: [tuple(x) for x in index["splits"].get(s, [])] for s in SPLITS}
        self._genes = [Gene(*g) for g in index.get("genes", [])]
        self._offsets = np.array([r.offset for r in self.records], dtype=np.int64)
        # N runs as sorted [start, end) global offsets and the N count before each run (for fast counting).
        self._n_start = np.ascontiguousarray(nruns[:, 0])
        self._n_end = np.ascontiguousarray(nruns[:, 1])
        self._n_before = np.concatenate([[0], np.cumsum(self._n_end - self._n_start)]).astype(np.int64)
        self._n_start_or_max = np.append(self._n_start, np.iinfo(np.int64).max)  # a run "after the end"
        self._by_name = {r.name: i for i, r in enumerate(self.records)}
        self._window_views: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def open(cls, path: str | Path) -> TokenStore:
        """Open a store directory; DataError when it is missing, incomplete or damaged."""
        path = Path(path)
        if not path.is_dir():
            raise DataError(f"{path}: no token store here; create one with `dnalm prepare INPUT... --out {path}`")
        if is_temporary(path):
            raise DataError(f"{path}: a temporary folder left by an interrupted `dnalm prepare`, not a store; remove it")
        try:
            manifest = json.loads((path / MANIFEST_FILE).read_text())
        except (OSError, ValueError):
            raise DataError(
                f"{path}: incomplete or not a dnalm token store (no readable {MANIFEST_FILE}); run dnalm prepare again"
            ) from None
        if manifest.get("format") != STORE_FORMAT or not manifest.get("complete"):
            raise DataError(f"{path}: {MANIFEST_FILE} does not describe a complete dnalm token store")
        if manifest.get("version") != STORE_VERSION:
            raise DataError(
                f"{path}: store version {manifest.get('version')} but this dnalm reads version {STORE_VERSION}; "
                "prepare it again"
            )
        try:
            index = json.loads((path / INDEX_FILE).read_text())
            nruns = np.load(path / NRUNS_FILE, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: damaged token store ({e}); prepare it again") from None
        total = manifest["counts"]["bases"]
        for fname in (TOKENS_FILE, LOWER_FILE):
            f = path / fname
            if not f.is_file() or f.stat().st_size != total:
                raise DataError(f"{path}: {fname} is missing or has the wrong size; prepare the store again")
        tokens = np.memmap(path / TOKENS_FILE, dtype=np.uint8, mode="r", shape=(total,))
        lower = np.memmap(path / LOWER_FILE, dtype=np.bool_, mode="r", shape=(total,))
        return cls(path, manifest, index, tokens, lower, nruns.reshape(-1, 2).astype(np.int64))

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def __repr__(self) -> str:
        return f"TokenStore({str(self.path)!r}, records={len(self.records)}, bases={len(self)})"

    def record_index(self, name: str) -> int:
        """Index of the record called ``name`` (DataError if absent)."""
        if name not in self._by_name:
            raise DataError(f"{self.path}: no record named {name!r}")
        return self._by_name[name]

    def intervals(self, split: str | Iterable[str]) -> list[tuple[int, int, int]]:
        """``(record_index, start, end)`` intervals of one split, several (adjacent ones merged), or 'all'."""
        names = [split] if isinstance(split, str) else list(split)
        if "all" in names:
            return [(i, 0, r.length) for i, r in enumerate(self.records)]
        keys = {canonical_split(s) for s in names}
        ivs = sorted(iv for k in keys for iv in self._splits[k])
        merged: list[tuple[int, int, int]] = []
        for rec, s, e in ivs:
            if merged and merged[-1][0] == rec and merged[-1][2] == s:
                merged[-1] = (rec, merged[-1][1], e)  # adjacent blocks of requested splits join
            else:
                merged.append((rec, s, e))
        return merged

    def genes(self) -> list[Gene]:
        """Annotated genes ``(record_index, start, end, strand, name)``, sorted; empty without annotations."""
        return list(self._genes)

    def window(self, record_index: int, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and lower-case mask of ``[start, end)`` of a record (read-only views of the memmaps)."""
        if not 0 <= record_index < len(self.records):
            raise DataError(f"{self.path}: record index {record_index} out of range (0..{len(self.records) - 1})")
        r = self.records[record_index]
        if not 0 <= start <= end <= r.length:
            raise DataError(f"{self.path}: window [{start}, {end}) outside record {r.name!r} of length {r.length}")
        return self.tokens[r.offset + start : r.offset + end], self.lower[r.offset + start : r.offset + end]

    def windows_view(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Zero-copy (total - length + 1, length) views of every window of ``length`` over the concatenated
        tokens and case mask; indexing them with global starts gathers a batch in one call."""
        if length not in self._window_views:
            from numpy.lib.stride_tricks import sliding_window_view

            # Plain ndarray views of the memmaps: slicing an np.memmap costs microseconds per call.
            tok, low = self.tokens.view(np.ndarray), self.lower.view(np.ndarray)
            self._window_views[length] = (sliding_window_view(tok, length), sliding_window_view(low, length))
        return self._window_views[length]

    def global_offset(self, record_index: np.ndarray | int) -> np.ndarray:
        """Offset of each record in the concatenated arrays."""
        return self._offsets[record_index]

    def n_before(self, pos: np.ndarray) -> np.ndarray:
        """Number of N bases in ``[0, pos)`` of the concatenated arrays, for an array of global offsets."""
        pos = np.asarray(pos, dtype=np.int64)
        k = np.searchsorted(self._n_end, pos, side="right")  # runs that end at or before pos
        # Run k ends after pos: its part before pos, if it starts before pos (the sampler's N filter is hot).
        return self._n_before[k] + np.maximum(pos - self._n_start_or_max[k], 0)

    def n_count(self, global_start: np.ndarray, length: int) -> np.ndarray:
        """Number of N bases in each ``[g, g + length)`` (global offsets)."""
        g = np.asarray(global_start, dtype=np.int64)
        return self.n_before(g + length) - self.n_before(g)
