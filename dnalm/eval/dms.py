"""Zero-shot protein fitness from DNA (deep mutational scans): map each protein mutant to a DNA change,
score the delta log-likelihood of the gene, and compare with measured fitness (Spearman).

Protocol (stated once here, repeated in the output header):

- Mutants are written like ``G21A`` (wild-type residue, 1-based position, new residue; ``*`` is a stop),
  several per variant joined by ``:``. The wild-type residue must match the translated CDS.
- Codon choice: the mutant codon is one that encodes the new residue with the **fewest nucleotide
  changes** from the wild-type codon (standard genetic code). A synonymous "mutant" (``G21G``) keeps the
  wild-type codon, so its delta is exactly 0. Ties (several codons at the same distance) are broken by
  ``ties``: ``"first"`` takes the first codon in alphabetical (A < C < G < T) order; ``"mean"`` scores
  every tied codon and averages the deltas. The chosen codon(s) are written to the output.
- Window: the whole CDS when it fits the model's context; otherwise a window of the model's length
  centred on the mutated codons. ``delta_sum`` = LL(mutant) - LL(wild type), natural log, summed over the
  window; ``delta_mean`` = per scored base (N bases are context, never scored).
- Baselines reported beside the model (the literature warns that trivial scores are strong on DMS):
  BLOSUM62 substitution score of each mutation (summed over a multi-mutant), and any numeric column of the
  input named as a baseline (e.g. ``dE``, EVmutation's statistical energy in the shared APH(3')II file).

BLOSUM62 is written below as data, from the NCBI BLAST matrix file ``BLOSUM62`` (Henikoff & Henikoff,
PNAS 89:10915, 1992; ftp.ncbi.nih.gov/blast/matrices/BLOSUM62); the stop row/column (``*``) is -4 against
every residue and 1 against itself, as in that file.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dnalm.data.errors import DataError, listing
from dnalm.data.sequences import read_sequences
from dnalm.data.tables import read_table
from dnalm.eval.metrics import progress as bar
from dnalm.eval.metrics import spearman
from dnalm.eval.scoring import count_scored, window_bases, window_logliks
from dnalm.tokenizer import decode, encode_bytes, reverse_complement_ids

# ------------------------------------------------------------------------------------------ data tables

BASES = "TCAG"
# Standard genetic code (NCBI translation table 1; table 11 of bacteria has the same amino acids),
# codons in TCAG x TCAG x TCAG order.
_AA_TCAG = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
CODON_TABLE: dict[str, str] = {
    a + b + c: _AA_TCAG[16 * i + 4 * j + k]
    for i, a in enumerate(BASES)
    for j, b in enumerate(BASES)
    for k, c in enumerate(BASES)
}
SYNONYMS: dict[str, list[str]] = {}
for _codon, _aa in sorted(CODON_TABLE.items()):
    SYNONYMS.setdefault(_aa, []).append(_codon)  # alphabetical (A<C<G<T) within each residue

_B62_ORDER = "ARNDCQEGHILKMFPSTWYV"
_B62_ROWS = """
 4 -1 -2 -2  0 -1 -1  0 -2 -1 -1 -1 -1 -2 -1  1  0 -3 -2  0
-1  5  0 -2 -3  1  0 -2  0 -3 -2  2 -1 -3 -2 -1 -1 -3 -2 -3
-2  0  6  1 -3  0  0  0  1 -3 -3  0 -2 -3 -2  1  0 -4 -2 -3
-2 -2  1  6 -3  0  2 -1 -1 -3 -4 -1 -3 -3 -1  0 -1 -4 -3 -3
 0 -3 -3 -3  9 -3 -4 -3 -3 -1 -1 -3 -1 -2 -3 -1 -1 -2 -2 -1
-1  1  0  0 -3  5  2 -2  0 -3 -2  1  0 -3 -1  0 -1 -2 -1 -2
-1  0  0  2 -4  2  5 -2  0 -3 -3  1 -2 -3 -1  0 -1 -3 -2 -2
 0 -2  0 -1 -3 -2 -2  6 -2 -4 -4 -2 -3 -3 -2  0 -2 -2 -3 -3
-2  0  1 -1 -3  0  0 -2  8 -3 -3 -1 -2 -1 -2 -1 -2 -2  2 -3
-1 -3 -3 -3 -1 -3 -3 -4 -3  4  2 -3  1  0 -3 -2 -1 -3 -1  3
-1 -2 -3 -4 -1 -2 -3 -4 -3  2  4 -2  2  0 -3 -2 -1 -2 -1  1
-1  2  0 -1 -3  1  1 -2 -1 -3 -2  5 -1 -3 -1  0 -1 -3 -2 -2
-1 -1 -2 -3 -1  0 -2 -3 -2  1  2 -1  5  0 -2 -1 -1 -1 -1  1
-2 -3 -3 -3 -2 -3 -3 -3 -1  0  0 -3  0  6 -4 -2 -2  1  3 -1
-1 -2 -2 -1 -3 -1 -1 -2 -2 -3 -3 -1 -2 -4  7 -1 -1 -4 -3 -2
 1 -1  1  0 -1  0  0  0 -1 -2 -2  0 -1 -2 -1  4  1 -3 -2 -2
 0 -1  0 -1 -1 -1 -1 -2 -2 -1 -1 -1 -1 -2 -1  1  5 -2 -2  0
-3 -3 -4 -4 -2 -2 -3 -2 -2 -3 -2 -3 -1  1 -4 -3 -2 11  2 -3
-2 -2 -2 -3 -2 -1 -2 -3  2 -1 -1 -2 -1  3 -3 -2 -2  2  7 -1
 0 -3 -3 -3 -1 -2 -2 -3 -3  3  1 -2  1 -1 -2 -2  0 -3 -1  4
"""


def _blosum62() -> dict[tuple[str, str], int]:
    rows = [list(map(int, line.split())) for line in _B62_ROWS.strip().splitlines()]
    m = {(a, b): rows[i][j] for i, a in enumerate(_B62_ORDER) for j, b in enumerate(_B62_ORDER)}
    for a in _B62_ORDER:
        m[(a, "*")] = m[("*", a)] = -4
    m[("*", "*")] = 1
    return m


BLOSUM62: dict[tuple[str, str], int] = _blosum62()


def translate(cds: str) -> str:
    """Translate a CDS (standard code; a final stop codon becomes ``*``)."""
    cds = cds.upper()
    return "".join(CODON_TABLE.get(cds[i : i + 3], "X") for i in range(0, len(cds) - len(cds) % 3, 3))


def closest_codons(wt_codon: str, aa: str) -> tuple[list[str], int]:
    """Codons for residue ``aa`` with the fewest nucleotide changes from ``wt_codon`` (alphabetical),
    and that number of changes. The wild-type codon itself wins when it already encodes ``aa``."""
    wt_codon = wt_codon.upper()
    if aa not in SYNONYMS:
        raise DataError(f"unknown amino acid {aa!r} (use one of {''.join(sorted(SYNONYMS))})")
    dist = {c: sum(x != y for x, y in zip(c, wt_codon)) for c in SYNONYMS[aa]}
    best = min(dist.values())
    return [c for c in SYNONYMS[aa] if dist[c] == best], best


# ------------------------------------------------------------------------------------------ input


@dataclass
class Mutation:
    wt: str
    pos: int  # 1-based residue
    mut: str


_MUT = re.compile(r"^([A-Z*])(\d+)([A-Z*])$")


def parse_mutant(text: str) -> list[Mutation]:
    """``G21A`` or ``G21A:L22P`` -> mutations; raises ValueError on anything else."""
    muts = []
    for part in text.strip().split(":"):
        m = _MUT.match(part.strip().upper())
        if not m:
            raise ValueError(f"{part!r} is not a mutation like G21A")
        muts.append(Mutation(m[1], int(m[2]), m[3]))
    return muts


def read_mutants(
    path: str | Path,
    variant_column: str | None = None,
    fitness_column: str | None = None,
    baseline_columns: Sequence[str] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Read a DMS table: ``;``, tab or ``,`` separated (sniffed from the header), ``#`` comment lines (see
    :mod:`dnalm.data.tables` for encodings, compression, ``-`` and pipes).

    Columns: the mutant (``variant``/``mutant``/``mutation`` or ``variant_column``), optional measured
    fitness (``y``/``fitness``/``score``/``DMS_score`` or ``fitness_column``), and baselines: every other
    numeric column unless ``baseline_columns`` names them. An empty or NA fitness is missing (left out of
    the correlations and counted in ``meta["missing_fitness"]``); any other value that is not a number is
    an error naming the row, as are malformed mutants.
    """
    table = read_table(path, "mutant table", delimiters=(";", "\t", ","))
    name = table.name
    header = table.header
    iv = table.column(variant_column, ("variant", "mutant", "mutation", "mutations"), "mutant", option="--variant-column")
    iy = table.column(fitness_column, ("y", "fitness", "score", "DMS_score"), "fitness", required=False,
                      option="--fitness-column")
    if baseline_columns is None:
        base_idx = [j for j in range(len(header)) if j not in (iv, iy) and all(_is_number(v) for v in table.values(j))]
    else:
        base_idx = [table.column(b, (), "baseline", option="--baseline-column") for b in baseline_columns]
    rows, bad = [], []
    for lineno, cols in zip(table.lines, table.rows):
        try:
            muts = parse_mutant(cols[iv])
        except ValueError as e:
            bad.append(f"line {lineno}: {e}")
            continue
        row = {"line": lineno, "variant": cols[iv], "mutations": muts, "cols": cols}
        for j in ([iy] if iy is not None else []) + base_idx:
            if not _is_number(cols[j]):
                bad.append(f"line {lineno}: {header[j]} {cols[j]!r} is not a number")
        rows.append(row)
    if bad:
        raise DataError(f"{name}: " + listing(bad, "malformed rows"))
    for r in rows:
        r["fitness"] = _num(r["cols"][iy]) if iy is not None else float("nan")
        r["baselines"] = {header[j]: _num(r["cols"][j]) for j in base_idx}
    missing = sum(1 for r in rows if iy is not None and not np.isfinite(r["fitness"]))
    meta = {"variant": header[iv], "fitness": header[iy] if iy is not None else None,
            "baselines": [header[j] for j in base_idx], "delimiter": table.delimiter, "missing_fitness": missing,
            "source": name}
    return rows, meta


_MISSING = ("", "nan", "na", "n/a", "none", ".")


def _is_number(s: str) -> bool:
    """A finite number, or a missing value (empty, NA, NaN, '.')."""
    if s.strip().lower() in _MISSING:
        return True
    try:
        return bool(np.isfinite(float(s)))
    except ValueError:
        return False


def _num(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        return float("nan")


# ------------------------------------------------------------------------------------------ CDS placement


@dataclass
class CDSPlacement:
    """Where the coding sequence lies in a record, in the gene's orientation.

    ``start`` is the 0-based index of the first base of codon 1 in the oriented record (the record itself
    for strand +1, its reverse complement for strand -1); ``codons`` counts sense codons; ``stop`` tells
    whether an in-frame stop codon follows them inside the record."""

    record: str
    strand: int
    start: int
    codons: int
    stop: bool
    length: int  # record length
    how: str

    @property
    def end(self) -> int:
        """0-based exclusive end of the CDS (stop codon included) in the oriented record."""
        return self.start + 3 * self.codons + 3 * int(self.stop)

    def span(self) -> tuple[int, int]:
        """1-based inclusive record positions (forward-strand coordinates) of the CDS."""
        if self.strand == 1:
            return self.start + 1, self.end
        return self.length - self.end + 1, self.length - self.start

    def describe(self) -> str:
        a, b = self.span()
        flanks = (self.start, self.length - self.end)
        return (
            f"CDS {self.record}:{a}-{b} ({'+' if self.strand == 1 else '-'} strand, {self.codons} codons"
            + (" + stop codon" if self.stop else ", no stop codon in the record")
            + f"; {flanks[0]} bases upstream and {flanks[1]} downstream kept as context; {self.how})"
        )


def _protein_frames(seq: str) -> list[np.ndarray]:
    """The translation of each of the 3 forward frames of ``seq``, as uint8 arrays of residue letters."""
    return [np.frombuffer(translate(seq[f:]).encode(), dtype=np.uint8) for f in range(3)]


def _orf(seq: str, start: int) -> tuple[int, bool]:
    """(sense codons from ``start`` up to the first in-frame stop or the record end, whether a stop was found)."""
    n = 0
    for i in range(start, len(seq) - 2, 3):
        if CODON_TABLE.get(seq[i : i + 3]) == "*":
            return n, True
        n += 1
    return n, False


def find_cds(
    records: list[tuple[str, str]], residues: set[tuple[int, str]], offset: int = 0
) -> tuple[CDSPlacement | None, list[tuple[int, str, int, int]]]:
    """Search every record, strand and frame for the placements where the protein numbering puts each
    mutated wild-type residue (``residues``: (table number, residue) pairs) on a codon that encodes it.

    Returns (the chosen placement or None, all placements as (matches, record, strand, codon-1 start)). A
    full match wins; among several, the whole record read as the CDS (the plain CDS file) wins, then the
    only one whose codon 1 is ATG; otherwise None (ambiguous).
    """
    pairs = sorted(residues)
    nums = [n for n, _ in pairs]
    found: list[tuple[int, str, int, int]] = []
    for rec, seq in records:
        for strand, s in ((1, seq), (-1, decode(reverse_complement_ids(encode_bytes(seq.encode())[0])))):
            for f, prot in enumerate(_protein_frames(s)):
                # protein index of table residue 1: codon 1 inside the record, every mutated residue too
                lo, hi = max(1 - nums[0], -offset), len(prot) - nums[-1]
                if hi < lo:
                    continue
                score = np.zeros(hi - lo + 1, dtype=np.int64)
                for n, aa in pairs:
                    score += prot[lo + n - 1 : hi + n] == ord(aa)
                for j in np.flatnonzero(score == score.max()):
                    found.append((int(score[j]), rec, strand, f + 3 * (lo + int(j) + offset)))
    seqs = dict(records)

    def oriented(rec: str, strand: int) -> str:
        s = seqs[rec]
        return s if strand == 1 else decode(reverse_complement_ids(encode_bytes(s.encode())[0]))

    # an open reading frame: no stop codon between codon 1 and the last mutated residue
    last = nums[-1] - offset
    full = [c for c in found if c[0] == len(pairs) and _orf(oriented(c[1], c[2]), c[3])[0] >= last]

    how = f"found: the only reading frame on either strand that encodes all {len(pairs)} mutated wild-type residues"
    if len(full) > 1:
        whole = [c for c in full if c[2] == 1 and c[3] == 0]
        atg = [c for c in full if oriented(c[1], c[2])[c[3] : c[3] + 3] == "ATG"]
        if len(whole) == 1:
            full, how = whole, f"the whole record read as the CDS ({len(full)} frames encode the mutated residues)"
        elif len(atg) == 1:
            full, how = atg, f"the only one of {len(full)} matching reading frames whose codon 1 is ATG"
    if len(full) != 1:
        return None, found
    _, rec, strand, start = full[0]
    return _placement(rec, oriented(rec, strand), strand, start, how), found


def _placement(rec: str, seq: str, strand: int, start: int, how: str) -> CDSPlacement:
    codons, stop = _orf(seq, start) if start >= 0 else (0, False)
    return CDSPlacement(rec, strand, start, codons, stop, len(seq), how)


def place_cds(
    cds: str | Path,
    rows: list[dict[str, Any]],
    *,
    record: str | None = None,
    cds_start: int | None = None,
    cds_end: int | None = None,
    offset: int = 0,
    source: str = "mutant table",
) -> tuple[CDSPlacement, str]:
    """Find (or take from ``cds_start``/``cds_end``, 1-based inclusive record positions; start > end means
    the reverse strand) the coding sequence the mutants of ``rows`` refer to, and check every mutant's
    wild-type residue against it. Returns the placement and the oriented record sequence."""
    recs = [(r.name, decode(r.ids)) for r in read_sequences(cds)]
    if record is not None:
        recs = [r for r in recs if r[0] == record]
        if not recs:
            raise DataError(f"{cds}: no record named {record!r}")
    residues = {(m.pos, m.wt) for r in rows for m in r["mutations"]}
    numbering = f"; mutant residue n is codon n - {offset}" if offset else ""
    if cds_end is not None and cds_start is None:
        raise DataError("--cds-end needs --cds-start")
    if cds_start is not None:
        rec, seq = recs[0]
        n = len(seq)
        end = cds_end if cds_end is not None else None
        for flag, v in (("--cds-start", cds_start), ("--cds-end", end)):
            if v is not None and not 1 <= v <= n:
                raise DataError(f"{cds}: {flag} {v} is outside record {rec!r} (1..{n})")
        strand = -1 if end is not None and end < cds_start else 1
        oriented = seq if strand == 1 else decode(reverse_complement_ids(encode_bytes(seq.encode())[0]))
        start0 = cds_start - 1 if strand == 1 else n - cds_start
        place = _placement(rec, oriented, strand, start0, "given by --cds-start" + (" / --cds-end" if end else ""))
        if end is not None:
            length = abs(end - cds_start) + 1
            if length % 3:
                raise DataError(f"{cds}: --cds-start {cds_start} to --cds-end {end} is {length} nt, not whole codons")
            last = oriented[start0 + length - 3 : start0 + length]
            place.stop = CODON_TABLE.get(last) == "*"
            place.codons = length // 3 - int(place.stop)
    else:
        place, found = find_cds(recs, residues, offset)
        if place is None:
            full = [c for c in found if c[0] == len(residues)]
            if len(full) > 1:
                shown = "; ".join(f"{r}:{'+' if st == 1 else '-'} codon 1 at {s + 1}" for _, r, st, s in full[:6])
                raise DataError(
                    f"{cds}: {len(full)} reading frames translate to all {len(residues)} mutated wild-type residues "
                    f"({shown}); choose one with --cds-start (and --record)"
                )
            best = max((c[0] for c in found), default=0)
            tied = [c for c in found if c[0] == best]
            pick = next((c for c in tied if c[2] == 1 and c[3] == 0), tied[0] if tied else None)
            if pick is None or best == 0:
                rec, seq = recs[0]
                place = _placement(rec, seq, 1, 0, "the whole record read as the CDS")
            else:
                rec, strand, start = pick[1], pick[2], pick[3]
                seq = dict(recs)[rec]
                oriented = seq if strand == 1 else decode(reverse_complement_ids(encode_bytes(seq.encode())[0]))
                place = _placement(rec, oriented, strand, start, f"the best-matching frame, {best} of {len(residues)}")
    seq = dict(recs)[place.record]
    oriented = seq if place.strand == 1 else decode(reverse_complement_ids(encode_bytes(seq.encode())[0]))
    protein = translate(oriented[place.start : place.start + 3 * place.codons]) if place.start >= 0 else ""
    bad = []
    for r in rows:
        for m in r["mutations"]:
            c = m.pos - offset  # 1-based codon
            if not 1 <= c <= place.codons:
                bad.append(f"line {r['line']}: {r['variant']}: residue {m.pos} outside {1 + offset}..{place.codons + offset}"
                           + (f" (codon {c})" if offset else ""))
            elif protein[c - 1] != m.wt:
                bad.append(f"line {r['line']}: {r['variant']}: the CDS encodes {protein[c - 1]} at {m.pos}")
    if bad:
        raise DataError(
            f"{source}: " + listing(bad, "mutants whose wild-type residue does not match the CDS")
            + f" ({place.describe()}{numbering}; give --cds-start/--cds-end or --numbering-offset if this is not the CDS)"
        )
    return place, oriented


# ------------------------------------------------------------------------------------------ scoring


def score_dms(
    model: Any,
    cds: str | Path,
    variants: str | Path,
    *,
    ties: str = "first",
    record: str | None = None,
    cds_start: int | None = None,
    cds_end: int | None = None,
    numbering_offset: int = 0,
    variant_column: str | None = None,
    fitness_column: str | None = None,
    baseline_columns: Sequence[str] | None = None,
    batch_size: int = 8,
    progress: bool = True,
    mutants: tuple[list[dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Score every protein mutant of ``variants`` in the CDS of ``cds`` (see the module docstring).

    The CDS is found in the record(s) of ``cds`` (see :func:`place_cds`): the reading frame, on either
    strand, whose translation carries every mutant's wild-type residue, unless ``cds_start``/``cds_end``
    (1-based record positions) say where it is. ``numbering_offset`` K: mutant residue n is codon n - K
    (Ambler numbering of TEM-1, for example, starts at 3: K = 2). Bases around the CDS stay in the scored
    window as genomic context. ``mutants`` passes an already-read table (``read_mutants``' result).

    Returns ``{"rows": [...], "meta": {...}, "notes": [...], "spearman": {name: rho}, "cds": CDSPlacement}``;
    each row has variant, codons (wt>mut per mutation, ``|`` between tied choices), nt_changes, n_choices,
    dna (e.g. ``c.61G>C``, numbered from the first base of codon 1), delta_sum, delta_mean, fitness, blosum62
    and the baseline columns.
    """
    if ties not in ("first", "mean"):
        raise DataError(f"--ties must be 'first' or 'mean' (got {ties!r})")
    rows, meta = mutants if mutants is not None else read_mutants(variants, variant_column, fitness_column,
                                                                   baseline_columns)
    place, seq = place_cds(cds, rows, record=record, cds_start=cds_start, cds_end=cds_end,
                           offset=numbering_offset, source=meta.get("source", str(variants)))
    seq_ids = encode_bytes(seq.encode())[0]
    limit = window_bases(model)
    wl = min(len(seq), limit)

    def window_of(positions: list[int]) -> int:
        lo, hi = min(positions), max(positions) + 3  # codon span (0-based nt in the oriented record)
        if hi - lo > wl:
            raise DataError(f"mutated codons span {hi - lo} nt, more than the model's window of {wl}")
        centre = (lo + hi) // 2
        return min(max(centre - wl // 2, 0), len(seq) - wl)

    # build every candidate mutant sequence; identical sequences are scored once
    seqs: dict[tuple[int, str], np.ndarray] = {}
    plans = []
    for r in rows:
        per_mut = []
        for m in r["mutations"]:
            i = place.start + 3 * (m.pos - numbering_offset - 1)  # codon's first base in the oriented record
            codons, nt = closest_codons(seq[i : i + 3], m.mut)
            per_mut.append((i, codons, nt))
        start = window_of([i for i, _, _ in per_mut])
        combos = list(itertools.product(*[c for _, c, _ in per_mut]))
        if ties == "first":
            combos = combos[:1]
        keys = []
        for combo in combos:
            s = list(seq[start : start + wl])
            for (i, _, _), codon in zip(per_mut, combo):
                s[i - start : i - start + 3] = codon
            key = (start, "".join(s))
            if key not in seqs:
                seqs[key] = encode_bytes(key[1].encode())[0]
            keys.append(key)
        ref_key = (start, seq[start : start + wl])
        if ref_key not in seqs:
            seqs[ref_key] = seq_ids[start : start + wl]
        plans.append((per_mut, keys, ref_key))
    keys = list(seqs)
    sums: dict[tuple[int, str], float] = {}
    pbar = bar(total=len(keys), desc="windows", enabled=progress)
    try:
        for c0 in range(0, len(keys), 64):
            part = keys[c0 : c0 + 64]
            ll = window_logliks(model, [seqs[k] for k in part], batch_size=batch_size)
            sums.update(zip(part, ll.tolist()))
            pbar.update(len(part))
    finally:
        pbar.close()

    out_rows = []
    for r, (per_mut, mkeys, ref_key) in zip(rows, plans):
        deltas = [sums[k] - sums[ref_key] for k in mkeys]
        delta = float(np.mean(deltas))
        codon_txt, dna = [], []
        for m, (i, codons, nt) in zip(r["mutations"], per_mut):
            wc = seq[i : i + 3]
            codon_txt.append(f"{wc}>{'|'.join(codons)}")
            first = codons[0]
            c0 = i - place.start  # 0-based position of the codon in the CDS
            dna += [f"c.{c0 + k + 1}{wc[k]}>{first[k]}" for k in range(3) if wc[k] != first[k]]
        row = {
            "variant": r["variant"],
            "codons": ";".join(codon_txt),
            "nt_changes": sum(nt for _, _, nt in per_mut),
            "n_choices": len(mkeys) if ties == "mean" else int(np.prod([len(c) for _, c, _ in per_mut])),
            "dna": ";".join(dna) if dna else "synonymous",
            "delta_sum": delta,
            "delta_mean": delta / max(count_scored(seqs[ref_key]), 1),
            "fitness": r["fitness"],
            "blosum62": float(sum(BLOSUM62[(m.wt, m.mut)] for m in r["mutations"])),
        }
        row.update(r["baselines"])
        out_rows.append(row)

    y = np.array([r["fitness"] for r in out_rows])
    rho: dict[str, float] = {}
    if np.isfinite(y).sum() >= 3:
        rho["model delta"] = spearman([r["delta_sum"] for r in out_rows], y)
        rho["BLOSUM62"] = spearman([r["blosum62"] for r in out_rows], y)
        for b in meta["baselines"]:
            rho[b] = spearman([r[b] for r in out_rows], y)
        rho["-nt_changes"] = spearman([-r["nt_changes"] for r in out_rows], y)
    whole = place.start == 0 and place.end == len(seq) and place.strand == 1
    notes = [
        f"{place.describe()}; window {wl} nt"
        + (" (whole CDS)" if wl == len(seq) and whole else " (whole record)" if wl == len(seq)
           else " centred on the mutated codons"),
        "codon choice: fewest nucleotide changes from the wild-type codon; ties: "
        + ("first codon in A<C<G<T order" if ties == "first" else "mean delta over all tied codons"),
        "delta = LL(mutant window) - LL(wild-type window), natural log; delta_mean = delta_sum / scored (non-N) bases of the window",
    ]
    if numbering_offset:
        notes.append(f"numbering: mutant residue n is codon n - {numbering_offset} of the CDS")
    if place.start >= 0 and seq[place.start : place.start + 3] != "ATG":
        notes.append(f"codon 1 is {seq[place.start : place.start + 3]}, not ATG: if the table numbers residues "
                     "from another origin, pass --numbering-offset")
    if meta.get("missing_fitness"):
        notes.append(f"{meta['missing_fitness']} mutants have no fitness value (empty or NA): left out of the Spearman")
    return {"rows": out_rows, "meta": meta, "notes": notes, "spearman": rho, "n_windows": len(keys), "window": wl,
            "cds": place}
