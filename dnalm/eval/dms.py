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
  window; ``delta_mean`` = per base.
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
from dnalm.eval.metrics import progress as bar
from dnalm.eval.metrics import spearman
from dnalm.eval.scoring import window_bases, window_logliks
from dnalm.tokenizer import decode, encode_bytes

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
    """Read a DMS table: ``;``, tab or ``,`` separated (sniffed from the header), ``#`` comment lines.

    Columns: the mutant (``variant``/``mutant``/``mutation`` or ``variant_column``), optional measured
    fitness (``y``/``fitness``/``score``/``DMS_score`` or ``fitness_column``), and baselines: every other
    numeric column unless ``baseline_columns`` names them.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: mutant file not found")
    lines = [(i, ln.rstrip("\r\n")) for i, ln in enumerate(open(path), 1) if ln.strip() and not ln.startswith("#")]
    if not lines:
        raise DataError(f"{path}: no data lines (only comments?)")
    head_no, head = lines[0]
    delim = next((d for d in (";", "\t", ",") if d in head), None)
    header = [h.strip() for h in (head.split(delim) if delim else [head])]
    low = [h.lower() for h in header]

    def find(explicit: str | None, names: Sequence[str], required: bool, what: str) -> int | None:
        if explicit is not None:
            if explicit not in header:
                raise DataError(f"{path}: no column {explicit!r} for the {what} (columns: {', '.join(header)})")
            return header.index(explicit)
        for n in names:
            if n.lower() in low:
                return low.index(n.lower())
        if required:
            raise DataError(f"{path}: no {what} column (looked for {', '.join(names)}; columns: {', '.join(header)})")
        return None

    iv = find(variant_column, ("variant", "mutant", "mutation", "mutations"), True, "mutant")
    iy = find(fitness_column, ("y", "fitness", "score", "DMS_score"), False, "fitness")
    rows, bad = [], []
    for lineno, line in lines[1:]:
        cols = [c.strip() for c in (line.split(delim) if delim else [line])]
        if len(cols) != len(header):
            bad.append(f"line {lineno}: {len(cols)} fields, the header has {len(header)}")
            continue
        try:
            muts = parse_mutant(cols[iv])
        except ValueError as e:
            bad.append(f"line {lineno}: {e}")
            continue
        rows.append({"line": lineno, "variant": cols[iv], "mutations": muts, "cols": cols})
    if bad:
        raise DataError(f"{path}: " + listing(bad, "malformed rows"))
    if baseline_columns is None:
        base_idx = []
        for j, h in enumerate(header):
            if j in (iv, iy):
                continue
            if all(_is_number(r["cols"][j]) for r in rows):
                base_idx.append(j)
    else:
        base_idx = []
        for b in baseline_columns:
            if b not in header:
                raise DataError(f"{path}: no baseline column {b!r} (columns: {', '.join(header)})")
            base_idx.append(header.index(b))
    for r in rows:
        r["fitness"] = _num(r["cols"][iy]) if iy is not None else float("nan")
        r["baselines"] = {header[j]: _num(r["cols"][j]) for j in base_idx}
    meta = {"variant": header[iv], "fitness": header[iy] if iy is not None else None,
            "baselines": [header[j] for j in base_idx], "delimiter": delim}
    return rows, meta


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return s.lower() in ("", "nan", "na")


def _num(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        return float("nan")


# ------------------------------------------------------------------------------------------ scoring


def score_dms(
    model: Any,
    cds: str | Path,
    variants: str | Path,
    *,
    ties: str = "first",
    record: str | None = None,
    variant_column: str | None = None,
    fitness_column: str | None = None,
    baseline_columns: Sequence[str] | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Score every protein mutant of ``variants`` in the CDS of ``cds`` (see the module docstring).

    Returns ``{"rows": [...], "meta": {...}, "notes": [...], "spearman": {name: rho}}``; each row has
    variant, codons (wt>mut per mutation, ``|`` between tied choices), nt_changes, n_choices, dna
    (e.g. ``c.61G>C``), delta_sum, delta_mean, fitness, blosum62 and the baseline columns.
    """
    if ties not in ("first", "mean"):
        raise DataError(f"--ties must be 'first' or 'mean' (got {ties!r})")
    recs = list(read_sequences(cds))
    if record is not None:
        recs = [r for r in recs if r.name == record]
        if not recs:
            raise DataError(f"{cds}: no record named {record!r}")
    wt_ids = recs[0].ids
    wt = decode(wt_ids)
    if len(wt) % 3:
        raise DataError(f"{cds}: record {recs[0].name!r} is {len(wt)} nt, not a whole number of codons")
    protein = translate(wt)
    rows, meta = read_mutants(variants, variant_column, fitness_column, baseline_columns)
    mismatch = []
    for r in rows:
        for m in r["mutations"]:
            if m.pos < 1 or m.pos > len(protein):
                mismatch.append(f"line {r['line']}: {r['variant']}: residue {m.pos} outside 1..{len(protein)}")
            elif protein[m.pos - 1] != m.wt:
                mismatch.append(f"line {r['line']}: {r['variant']}: the CDS encodes {protein[m.pos - 1]} at {m.pos}")
    if mismatch:
        raise DataError(f"{variants}: " + listing(mismatch, "mutants whose wild-type residue does not match the CDS"))

    limit = window_bases(model)
    wl = min(len(wt), limit)

    def window_of(positions: list[int]) -> int:
        lo, hi = min(positions), max(positions) + 3  # codon span (0-based nt)
        if hi - lo > wl:
            raise DataError(f"mutated codons span {hi - lo} nt, more than the model's window of {wl}")
        centre = (lo + hi) // 2
        return min(max(centre - wl // 2, 0), len(wt) - wl)

    # build every candidate mutant sequence; identical sequences are scored once
    seqs: dict[tuple[int, str], np.ndarray] = {}
    plans = []
    for r in rows:
        per_mut = []
        for m in r["mutations"]:
            i = 3 * (m.pos - 1)
            codons, nt = closest_codons(wt[i : i + 3], m.mut)
            per_mut.append((i, codons, nt))
        start = window_of([i for i, _, _ in per_mut])
        combos = list(itertools.product(*[c for _, c, _ in per_mut]))
        if ties == "first":
            combos = combos[:1]
        keys = []
        for combo in combos:
            s = list(wt)
            for (i, _, _), codon in zip(per_mut, combo):
                s[i : i + 3] = codon
            key = (start, "".join(s[start : start + wl]))
            if key not in seqs:
                seqs[key] = encode_bytes(key[1].encode())[0]
            keys.append(key)
        ref_key = (start, wt[start : start + wl])
        if ref_key not in seqs:
            seqs[ref_key] = wt_ids[start : start + wl]
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
            wc = wt[i : i + 3]
            codon_txt.append(f"{wc}>{'|'.join(codons)}")
            first = codons[0]
            dna += [f"c.{i + k + 1}{wc[k]}>{first[k]}" for k in range(3) if wc[k] != first[k]]
        row = {
            "variant": r["variant"],
            "codons": ";".join(codon_txt),
            "nt_changes": sum(nt for _, _, nt in per_mut),
            "n_choices": len(mkeys) if ties == "mean" else int(np.prod([len(c) for _, c, _ in per_mut])),
            "dna": ";".join(dna) if dna else "synonymous",
            "delta_sum": delta,
            "delta_mean": delta / wl,
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
    notes = [
        f"CDS {recs[0].name} ({len(wt)} nt, {len(protein)} residues); window {wl} nt"
        + (" (whole CDS)" if wl == len(wt) else " centred on the mutated codons"),
        "codon choice: fewest nucleotide changes from the wild-type codon; ties: "
        + ("first codon in A<C<G<T order" if ties == "first" else "mean delta over all tied codons"),
        "delta = LL(mutant CDS window) - LL(wild-type window), natural log; delta_mean = delta_sum / window",
    ]
    return {"rows": out_rows, "meta": meta, "notes": notes, "spearman": rho, "n_windows": len(keys), "window": wl}
