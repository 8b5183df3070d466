"""Zero-shot variant-effect scoring: delta log-likelihood (alt - ref) of a window centred on each variant.

Protocol (Evo 2's BRCA1 protocol, docs/architectures.md §6):

- For each variant take a window of ``W`` bases centred on it (clipped to the chromosome: near an end the
  window is shifted inwards, never shortened, unless the record itself is shorter than ``W``).
- Score the reference window and the same window with the allele swapped, **same length for both**
  (for an indel the alternative window is cut or extended at its right end to ``W`` bases, so there is
  no length bias). The score of a window is the natural-log likelihood of all its bases under the
  model (the model's [BOS] makes the first base scored too). N bases are context only, never scored.
- Report ``delta_sum`` = LL(alt) - LL(ref) summed over the window, and ``delta_mean`` = the same per
  scored base (``delta_sum`` / the reference window's A/C/G/T count, ``W`` when it has no N): tiny
  numbers, same ranking within one window size.
- Each distinct reference window is scored once and reused (several variants at one position share it).
- Optionally (``rc_average``) the reverse complements of both windows are scored too and the two strand
  deltas averaged.
- With labels, the AUROC of the positive class (e.g. LOF) against the rest uses ``-delta_sum``: a
  damaging variant should make the window less likely.

Coordinates (stated once, here): variant files are 1-based as in VCF. A FASTA record normally starts at
chromosome position 1. A record that is a *region* is mapped in one of two ways, and the output says which:

1. its name has the form ``chrom:start-end`` (1-based inclusive; e.g. ``chr17:42425000-43600000``, as in
   the shared BRCA1 file) and its length equals ``end - start + 1``: base ``i`` (0-based) of the record is
   position ``start + i`` of ``chrom``;
2. ``fasta_offset=P`` (``--fasta-offset P``): base 0 of every record is position ``P`` (1-based).

Chromosome names match exactly, or else after dropping a leading ``chr`` (so ``17`` matches ``chr17``,
and ``M``/``MT`` match each other).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dnalm.data.errors import DataError, listing
from dnalm.data.sequences import read_sequences
from dnalm.data.tables import display_name, parse_table, read_lines
from dnalm.eval.metrics import progress as bar
from dnalm.eval.metrics import write_tsv
from dnalm.eval.scoring import count_scored, window_bases, window_logliks
from dnalm.tokenizer import decode, encode_bytes, reverse_complement_ids

# ------------------------------------------------------------------------------------------ windows


def resolve_window(model: Any, window: int | None, default: int = 8192) -> tuple[int, str]:
    """The window to use and a note: ``None`` means ``default`` clipped to the model's context;
    an explicit window longer than the model accepts is an error."""
    limit = window_bases(model)
    if window is None:
        w = min(default, limit)
        note = f"window {w} bases" + (f" (the model's context; {default} requested by default)" if w < default else "")
        return w, note
    if window < 1:
        raise DataError(f"--window must be >= 1 (got {window})")
    if window > limit:
        raise DataError(
            f"--window {window} is longer than the model accepts ({limit} bases plus special tokens); "
            f"use --window {limit} or less"
        )
    return window, f"window {window} bases"


# ------------------------------------------------------------------------------------------ variant files


@dataclass
class Variant:
    """One variant as read from a file (``pos`` is 1-based; ``row`` is the 1-based line number)."""

    row: int
    chrom: str
    pos: int
    ref: str
    alt: str
    id: str = "."
    fields: dict[str, str] = field(default_factory=dict)  # other columns (TSV) or INFO keys (VCF)

    @property
    def is_snv(self) -> bool:
        return len(self.ref) == 1 and len(self.alt) == 1


_ALLELE = re.compile(r"^[ACGTNacgtn]+$")
CHROM_COLUMNS = ("chrom", "#chrom", "chromosome", "chr", "seqid", "contig")
POS_COLUMNS = ("pos", "position", "pos_hg38", "start")
REF_COLUMNS = ("ref", "reference", "ref_allele")
ALT_COLUMNS = ("alt", "alternate", "alt_allele")




def read_variants(
    path: str | Path,
    *,
    allow_indels: bool = False,
    pos_column: str | None = None,
) -> tuple[list[Variant], dict[str, str]]:
    """Read a VCF (``##fileformat=VCF`` / ``#CHROM`` header, .vcf or .vcf.gz) or a delimited table.

    A table needs a header naming chromosome / position / ref / alt columns (case-insensitive; first of
    ``chrom, chromosome, chr, seqid``; ``pos, position, pos_hg38, start`` or ``pos_column``; ``ref,
    reference``; ``alt, alternate``). Multi-allelic VCF rows become one variant per ALT allele.
    Returns the variants and a dict describing the columns used.

    Raises DataError listing the offending rows for: malformed lines, non-integer or < 1 positions,
    alleles that are not A/C/G/T/N (symbolic ``<DEL>``, ``*``, ``.``), and non-SNV rows unless
    ``allow_indels`` (then simple indels with explicit alleles are accepted).
    """
    lines = read_lines(path, "variant file")
    name = display_name(path)
    if not any(line.strip() for line in lines):
        raise DataError(f"{name}: the variant file is empty (only blank lines)")
    is_vcf = str(path).lower().endswith((".vcf", ".vcf.gz")) or lines[0].startswith("##fileformat=VCF") or any(
        line.startswith("#CHROM") for line in lines[:5000]
    )
    variants, info, bad = (_parse_vcf if is_vcf else _parse_table)(name, lines, pos_column)
    if bad:
        raise DataError(f"{name}: " + listing(bad, "malformed rows"))
    if not variants:
        raise DataError(f"{name}: no variants found (no data lines after the header)")
    check_variants(variants, name, allow_indels)
    info["format"] = "vcf" if is_vcf else "table"
    return variants, info


def check_variants(variants: list[Variant], path: str | Path, allow_indels: bool = False) -> None:
    """Upper-case the alleles in place; DataError (listing rows) for alleles that are not A/C/G/T/N,
    alt == ref, and non-SNVs unless ``allow_indels``."""
    symbolic = [f"line {v.row}: {v.ref}>{v.alt}" for v in variants
                if not (_ALLELE.match(v.ref) and _ALLELE.match(v.alt))]
    if symbolic:
        raise DataError(
            f"{path}: " + listing(symbolic, "rows with alleles that are not plain A/C/G/T/N")
            + " (symbolic or missing alleles cannot be scored)"
        )
    for v in variants:
        v.ref, v.alt = v.ref.upper(), v.alt.upper()
    same = [f"line {v.row}: {v.ref}>{v.alt}" for v in variants if v.ref == v.alt]
    if same:
        raise DataError(f"{path}: " + listing(same, "rows whose alt allele equals the ref allele"))
    if not allow_indels:
        non_snv = [f"line {v.row}: {v.chrom}:{v.pos} {v.ref}>{v.alt}" for v in variants if not v.is_snv]
        if non_snv:
            raise DataError(
                f"{path}: " + listing(non_snv, "non-SNV rows")
                + " (only single-nucleotide variants by default; pass --indels to score simple indels)"
            )


def _parse_vcf(path: str, lines: list[str], pos_column: str | None):
    variants: list[Variant] = []
    bad: list[str] = []
    seen_header = False
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("##"):
            continue
        if line.startswith("#"):
            seen_header = True
            continue
        cols = line.rstrip("\r").split("\t")
        if len(cols) < 5:
            bad.append(f"line {lineno}: {len(cols)} tab-separated columns, a VCF row needs at least 5")
            continue
        chrom, pos_s, vid, ref, alts = cols[:5]
        try:
            pos = int(pos_s)
        except ValueError:
            bad.append(f"line {lineno}: POS {pos_s!r} is not an integer")
            continue
        if pos < 1:
            bad.append(f"line {lineno}: POS {pos} < 1 (VCF positions are 1-based)")
            continue
        info: dict[str, str] = {}
        if len(cols) > 7 and cols[7] not in (".", ""):
            for item in cols[7].split(";"):
                k, _, v = item.partition("=")
                info[k] = v if _ else "1"
        for alt in alts.split(","):
            variants.append(Variant(lineno, chrom, pos, ref, alt, vid, info))
    if not seen_header and variants:
        bad.append("no '#CHROM' header line before the data lines")
    return variants, {"chrom": "CHROM", "pos": "POS", "ref": "REF", "alt": "ALT"}, bad


def _parse_table(path: str, lines: list[str], pos_column: str | None):
    table = parse_table(lines, path, "variant table", delimiters=("\t", ","))
    ic = table.column(None, CHROM_COLUMNS, "chromosome")
    ip = table.column(pos_column, POS_COLUMNS, "position", option="--pos-column")
    ir = table.column(None, REF_COLUMNS, "reference allele")
    ia = table.column(None, ALT_COLUMNS, "alternative allele")
    header = table.header
    id_col = table.column(None, ("id", "variant_id", "name"), "id", required=False)
    variants: list[Variant] = []
    bad: list[str] = []
    for lineno, cols in zip(table.lines, table.rows):
        try:
            pos = int(cols[ip])
        except ValueError:
            bad.append(f"line {lineno}: {header[ip]} {cols[ip]!r} is not an integer")
            continue
        if pos < 1:
            bad.append(f"line {lineno}: {header[ip]} {pos} < 1 (positions are 1-based)")
            continue
        vid = cols[id_col] if id_col is not None else "."
        variants.append(Variant(lineno, cols[ic], pos, cols[ir], cols[ia], vid, dict(zip(header, cols))))
    return variants, {"chrom": header[ic], "pos": header[ip], "ref": header[ir], "alt": header[ia]}, bad


# ------------------------------------------------------------------------------------------ reference


@dataclass
class RefRecord:
    """A FASTA record placed on a chromosome: base i (0-based) is position ``offset + i`` (1-based)."""

    name: str
    chrom: str
    offset: int
    ids: np.ndarray  # uint8 token ids
    lower: np.ndarray  # bool case mask
    mapping: str  # how the offset was decided, for the output header

    def __len__(self) -> int:
        return len(self.ids)


_REGION = re.compile(r"^(?P<chrom>[^:\s]+):(?P<start>[\d,]+)-(?P<end>[\d,]+)$")


def _norm_chrom(name: str) -> str:
    n = name.lower()
    n = n[3:] if n.startswith("chr") else n
    return "mt" if n == "m" else n


def load_reference(path: str | Path, fasta_offset: int | None = None) -> list[RefRecord]:
    """Read a FASTA (any compression) and place its records on chromosomes (see the module docstring)."""
    path = Path(path)
    if fasta_offset is not None and fasta_offset < 1:
        raise DataError(f"--fasta-offset must be a 1-based position >= 1 (got {fasta_offset})")
    out = []
    for rec in read_sequences(path):
        m = _REGION.match(rec.name)
        if fasta_offset is not None:
            out.append(RefRecord(rec.name, rec.name, fasta_offset, rec.ids, rec.lower,
                                 f"{rec.name}: base 0 = position {fasta_offset} (--fasta-offset)"))
        elif m:
            start, end = int(m["start"].replace(",", "")), int(m["end"].replace(",", ""))
            if end - start + 1 != len(rec.ids):
                raise DataError(
                    f"{path}: record {rec.name!r} names a region of {end - start + 1:,} bp but holds "
                    f"{len(rec.ids):,} bases; pass --fasta-offset to place it explicitly"
                )
            out.append(RefRecord(rec.name, m["chrom"], start, rec.ids, rec.lower,
                                 f"{rec.name}: base 0 = {m['chrom']}:{start} (region in the FASTA header)"))
        else:
            out.append(RefRecord(rec.name, rec.name, 1, rec.ids, rec.lower, f"{rec.name}: whole chromosome"))
    if not out:
        raise DataError(f"{path}: no FASTA records")
    return out


def _match_records(variants: list[Variant], records: list[RefRecord], path: Path) -> list[tuple[Variant, RefRecord]]:
    exact = {}
    for r in records:
        exact.setdefault(r.chrom, []).append(r)
    norm = {}
    for r in records:
        norm.setdefault(_norm_chrom(r.chrom), []).append(r)
    pairs, unknown, outside = [], [], []
    for v in variants:
        cands = exact.get(v.chrom) or norm.get(_norm_chrom(v.chrom))
        if not cands:
            unknown.append(f"line {v.row}: {v.chrom!r}")
            continue
        rec = next((r for r in cands if r.offset <= v.pos and v.pos + len(v.ref) - 1 < r.offset + len(r)), None)
        if rec is None:
            spans = ", ".join(f"{r.chrom}:{r.offset}-{r.offset + len(r) - 1}" for r in cands)
            outside.append(f"line {v.row}: {v.chrom}:{v.pos} (the FASTA covers {spans})")
            continue
        pairs.append((v, rec))
    if unknown:
        names = ", ".join(sorted({r.chrom for r in records}))
        raise DataError(
            f"{path}: " + listing(unknown, "rows on chromosomes not in the FASTA") + f" (FASTA has: {names})"
        )
    if outside:
        raise DataError(f"{path}: " + listing(outside, "rows with positions outside the FASTA"))
    return pairs


def _check_ref_alleles(pairs: list[tuple[Variant, RefRecord]], path: Path) -> None:
    bad = []
    for v, rec in pairs:
        i = v.pos - rec.offset
        ids, _ = encode_bytes(v.ref.encode())
        if not np.array_equal(rec.ids[i : i + len(ids)], ids):
            fa = decode(rec.ids[i : i + len(ids)])
            bad.append(f"line {v.row}: {v.chrom}:{v.pos} ref {v.ref} but the FASTA has {fa}")
    if bad:
        raise DataError(
            f"{path}: " + listing(bad, "reference alleles that do not match the FASTA")
            + " (wrong genome build, or wrong --fasta-offset / --pos-column?)"
        )


# ------------------------------------------------------------------------------------------ the protocol


@dataclass
class VariantResults:
    """Per-variant scores and what produced them. ``rows`` is a list of dicts (one per variant)."""

    rows: list[dict[str, Any]]
    window: int
    rc_average: bool
    notes: list[str]
    columns: dict[str, str]
    n_windows_scored: int = 0
    seconds: float = 0.0

    HEADER = ("row", "id", "chrom", "pos", "ref", "alt", "window_start", "window_end", "window_len",
              "delta_sum", "delta_mean")

    def header(self, extra: Sequence[str] = ()) -> list[str]:
        cols = list(self.HEADER)
        if self.rc_average:
            cols += ["delta_sum_fwd", "delta_sum_rc"]
        return cols + list(extra)

    def write_tsv(self, path: str | Path, extra_columns: Sequence[str] = ()) -> Path:
        """Write the TSV atomically (``# `` comment lines say how the scores were made)."""
        cols = self.header(extra_columns)
        comments = [
            "delta = log-likelihood(alt window) - log-likelihood(ref window), natural log; "
            "delta_sum over the window, delta_mean = delta_sum / scored bases of the reference window (N not scored)",
            f"window centred on the variant, {self.window} bases; window_start/end are 1-based inclusive",
            "strands: " + ("mean of forward and reverse-complement deltas" if self.rc_average else "forward only"),
            *self.notes,
        ]
        return write_tsv(path, cols, ([r.get(c, "") for c in cols] for r in self.rows), comments)

    def labels(self, column: str, positive: Sequence[str] | None = None) -> np.ndarray:
        """Binary labels (1 = positive) from a column of the input (TSV column or VCF INFO key)."""
        return binary_labels([(r["row"], r["_fields"].get(column)) for r in self.rows], column, positive)


def binary_labels(
    values: Sequence[tuple[int, str | None]], column: str, positive: Sequence[str] | None, source: str | None = None
) -> np.ndarray:
    """(row, raw value) pairs -> 0/1 labels. Raises DataError on missing/empty values, ambiguity, or labels
    that are all one class (an AUROC needs both), before any scoring is spent on them."""
    where = f"{source}: label column {column!r}" if source else f"label column {column!r}"
    missing = [f"line {row}" for row, v in values if v is None or str(v).strip() in ("", ".", "NA", "nan")]
    if missing:
        raise DataError(f"{where}: " + listing(missing, "rows with an empty or missing label"))
    raw = [str(v).strip() for _, v in values]
    distinct = sorted(set(raw))
    if positive:
        pos = {p.strip() for p in positive}
        unknown = pos - set(distinct)
        if unknown:
            raise DataError(f"{where}: positive value(s) {sorted(unknown)} never occur (values: {distinct[:20]})")
        y = np.array([1 if v in pos else 0 for v in raw], dtype=np.int64)
    else:
        truthy, falsy = {"1", "true", "yes", "1.0"}, {"0", "false", "no", "0.0"}
        if not set(v.lower() for v in distinct) <= truthy | falsy:
            raise DataError(
                f"{where} holds {len(distinct)} distinct values ({', '.join(distinct[:10])}); "
                "name the positive class(es) with --positive (e.g. --positive LOF)"
            )
        y = np.array([1 if v.lower() in truthy else 0 for v in raw], dtype=np.int64)
    if len(y) and y.min() == y.max():
        which = "positive" if y[0] else "negative"
        raise DataError(f"{where}: all {len(y)} labels are {which}; an AUROC needs both classes")
    return y


def score_variants(
    model: Any,
    fasta: str | Path,
    variants: str | Path | list[Variant],
    *,
    window: int | None = None,
    rc_average: bool = False,
    fasta_offset: int | None = None,
    pos_column: str | None = None,
    allow_indels: bool = False,
    batch_size: int = 8,
    chunk_size: int = 256,
    progress: bool = True,
    source: str | None = None,
) -> VariantResults:
    """Score every variant (see the module docstring for the protocol).

    Args:
        model: a DNALM (any family).
        fasta: reference FASTA (plain or gzip); region records are placed as described above.
        variants: a VCF/TSV path, or already-read ``Variant`` objects.
        window: bases per window; ``None`` = 8,192 or the model's context if shorter.
        rc_average: also score reverse complements and average the two strand deltas.
        fasta_offset: 1-based chromosome position of base 0 of each record (overrides header regions).
        pos_column: position column of a table (default: the first of pos, position, pos_hg38, start).
        allow_indels: accept simple indels (scored with same-length windows).
        batch_size: windows per forward pass.
        chunk_size: variants built into windows at a time (bounds memory on large files).
        progress: show a tqdm bar on stderr.
        source: the file name to use in messages when ``variants`` are already read.

    Returns a :class:`VariantResults`. Raises DataError (listing rows) on unknown chromosomes, positions
    outside the FASTA, reference alleles that do not match, and malformed input.
    """
    t0 = time.perf_counter()
    fasta = Path(fasta)
    if isinstance(variants, (str, Path)):
        vlist, columns = read_variants(variants, allow_indels=allow_indels, pos_column=pos_column)
        vpath = Path(variants)
    else:
        vlist, columns, vpath = list(variants), {}, Path(source or "<variants>")
        check_variants(vlist, vpath, allow_indels)
    w, wnote = resolve_window(model, window)
    records = load_reference(fasta, fasta_offset)
    pairs = _match_records(vlist, records, vpath)
    _check_ref_alleles(pairs, vpath)
    notes = [wnote, "reference placement: " + "; ".join(sorted({r.mapping for r in records})[:4])]
    if columns:
        notes.append("columns used: " + ", ".join(f"{k}={v}" for k, v in columns.items()))

    cache: dict[tuple, float] = {}  # window key -> log-likelihood sum (fwd, and rc under key + ("rc",))
    counted: dict[tuple, int] = {}  # window key -> bases the sum counts (all but N)
    rows: list[dict[str, Any]] = []
    n_scored = 0
    pbar = bar(total=len(pairs), desc="variants", enabled=progress)
    try:
        for c0 in range(0, len(pairs), chunk_size):
            chunk = pairs[c0 : c0 + chunk_size]
            plans = [_plan(v, rec, w) for v, rec in chunk]
            todo: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # key -> (ids, case mask)
            for plan in plans:
                for key, build in ((plan["ref_key"], plan["ref"]), (plan["alt_key"], plan["alt"])):
                    if key not in cache and key not in todo:
                        todo[key] = build()
                        if rc_average:
                            ids, low = todo[key]
                            todo[key + ("rc",)] = (reverse_complement_ids(ids), low[::-1].copy())
            keys = list(todo)
            if keys:
                sums = window_logliks(model, [todo[k][0] for k in keys], batch_size=batch_size,
                                      lower=[todo[k][1] for k in keys])
                cache.update(zip(keys, sums.tolist()))
                counted.update((k, count_scored(todo[k][0])) for k in keys)
                n_scored += len(keys)
            for (v, rec), plan in zip(chunk, plans):
                fwd = cache[plan["alt_key"]] - cache[plan["ref_key"]]
                row: dict[str, Any] = {
                    "row": v.row, "id": v.id, "chrom": v.chrom, "pos": v.pos, "ref": v.ref, "alt": v.alt,
                    "window_start": rec.offset + plan["start"],
                    "window_end": rec.offset + plan["start"] + plan["len"] - 1,
                    "window_len": plan["len"], "_fields": v.fields,
                }
                if rc_average:
                    rc = cache[plan["alt_key"] + ("rc",)] - cache[plan["ref_key"] + ("rc",)]
                    row.update(delta_sum_fwd=fwd, delta_sum_rc=rc)
                    delta = 0.5 * (fwd + rc)
                else:
                    delta = fwd
                row.update(delta_sum=delta, delta_mean=delta / max(counted[plan["ref_key"]], 1))
                rows.append(row)
            pbar.update(len(chunk))
    finally:
        pbar.close()
    return VariantResults(rows, w, rc_average, notes, columns, n_scored, time.perf_counter() - t0)


def _plan(v: Variant, rec: RefRecord, w: int) -> dict[str, Any]:
    """Window placement for one variant: same start and length for the ref and alt windows."""
    n = len(rec)
    p = v.pos - rec.offset  # 0-based position of the first ref base in the record
    wl = min(w, n)
    shrink = max(0, len(v.ref) - len(v.alt))  # a deletion needs this many extra bases on the right
    if n < wl + shrink:
        wl = n - shrink
    start = min(max(p - wl // 2, 0), n - wl - shrink)
    ids, low = rec.ids, rec.lower  # the case mask matters only to tokenizers that map lower case to [UNK]
    alt_ids, _ = encode_bytes(v.alt.encode())
    alt_low = np.zeros(len(alt_ids), dtype=bool)

    def ref() -> tuple[np.ndarray, np.ndarray]:
        return ids[start : start + wl].copy(), low[start : start + wl].copy()

    def alt() -> tuple[np.ndarray, np.ndarray]:
        right = slice(p + len(v.ref), start + wl + shrink)
        seq = np.concatenate([ids[start:p], alt_ids, ids[right]])
        case = np.concatenate([low[start:p], alt_low, low[right]])
        return seq[:wl].copy(), case[:wl].copy()  # an insertion pushes bases out on the right

    return {
        "start": start,
        "len": wl,
        "ref_key": (rec.name, start, wl),
        "alt_key": (rec.name, start, wl, p, v.ref, v.alt),
        "ref": ref,
        "alt": alt,
    }


# ------------------------------------------------------------------------------------------ command
