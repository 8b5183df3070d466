"""Zero-shot gene essentiality (Evo's protocol): insert premature stop codons early in each protein-coding
gene and score the change in log-likelihood of a window around it. A model that has learned which genes
a genome cannot lose should find the broken version of an essential gene less likely.

Protocol (the choices are stated here once and written into the output header):

- Genes: CDS features of the GFF grouped by ``locus_tag`` (else by ``Parent``/``ID``); CDS flagged
  ``pseudo=true`` are skipped. The gene spans its CDS parts, on the CDS strand.
- Everything is done in the gene's own orientation (minus-strand genes are read from the reverse
  complement), so the model always reads the gene 5' -> 3'.
- Mutation: ``cassette`` (default ``TAATAATAATAGTGA``, 15 bp = five stop codons TAA TAA TAA TAG TGA, the
  "15-bp stop insertion" of the issue) is inserted in frame ``insert_offset`` bases (default 12, i.e.
  after the 4th codon) downstream of the first base of the start codon.
- Window: ``W`` bases (default 8,192, or the model's context if shorter). A gene shorter than the window
  is centred in it; a longer one gets ``W/8`` bases of upstream context and as much gene as fits. Windows
  are shifted inwards at the ends of the record (the genome is treated as linear).
- Same length for both: the mutant window is the reference window with the cassette inserted and the
  same number of bases dropped at its right end. ``delta_sum`` = LL(mutant) - LL(reference), natural log,
  summed over the window; ``delta_mean`` = ``delta_sum / W``.
- With labels, AUROC of essential (1) against non-essential (0) uses ``-delta_sum``. A trivial baseline
  is reported beside it: gene length (longer genes lose more likelihood and essential genes differ in
  length, so the model must beat it to show more than length).

Coordinates in the output are 1-based inclusive genome positions, as in the GFF and the label file.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dnalm.data.annotation import read_annotations
from dnalm.data.errors import DataError, listing
from dnalm.data.sequences import read_sequences
from dnalm.eval.metrics import MetricError, auroc, auroc_ci, save_roc_plot
from dnalm.eval.metrics import progress as bar
from dnalm.eval.scoring import window_logliks
from dnalm.eval.variants import resolve_window
from dnalm.tokenizer import decode, encode_bytes, reverse_complement_ids

DEFAULT_CASSETTE = "TAATAATAATAGTGA"
STOPS = {"TAA", "TAG", "TGA"}


@dataclass
class Gene:
    """A protein-coding gene: 0-based half-open span of its CDS on ``seqid``, strand +1/-1."""

    locus_tag: str
    name: str
    seqid: str
    start: int
    end: int
    strand: int

    def __len__(self) -> int:
        return self.end - self.start


def genes_from_gff(path: str | Path, zero_based_starts: bool = False) -> list[Gene]:
    """Protein-coding genes (from CDS features) of a GFF3/GTF file, in file order."""
    feats = read_annotations(path, zero_based_starts=zero_based_starts)
    by_key: dict[str, Gene] = {}
    for f in feats:
        if f.type != "CDS":
            continue
        attrs = f.attributes or {}
        if str(attrs.get("pseudo", "")).lower() == "true":
            continue
        key = attrs.get("locus_tag") or f.parent or f.id or f"{f.seqid}:{f.start}-{f.end}"
        name = attrs.get("gene") or attrs.get("gene_name") or f.name or key
        g = by_key.get(key)
        if g is None:
            by_key[key] = Gene(key, name, f.seqid, f.start, f.end, f.strand)
        elif g.seqid == f.seqid:  # a multi-line CDS: extend the span
            g.start, g.end = min(g.start, f.start), max(g.end, f.end)
    genes = [g for g in by_key.values() if g.strand in (1, -1)]
    if not genes:
        raise DataError(f"{path}: no CDS features with a strand; essentiality needs protein-coding genes")
    return genes


def read_labels(path: str | Path, columns: Sequence[str] | None = None) -> tuple[dict[str, dict[str, int]], list[str]]:
    """A TSV with ``locus_tag`` (or ``gene``) and 0/1 label columns -> {key: {column: 0/1}}, columns.

    ``columns`` None means every column whose name starts with ``essential``. Empty or non-0/1 values are
    an error naming the rows.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: label file not found")
    with open(path, newline="") as fh:
        lines = [line for line in fh if line.strip() and not line.startswith("#")]
    if not lines:
        raise DataError(f"{path}: the label file is empty")
    delim = "\t" if "\t" in lines[0] else ","
    reader = csv.DictReader(lines, delimiter=delim)
    header = reader.fieldnames or []
    key_col = next((c for c in ("locus_tag", "gene", "name", "id") if c in header), None)
    if key_col is None:
        raise DataError(f"{path}: needs a locus_tag (or gene) column; columns: {', '.join(header)}")
    cols = list(columns) if columns else [c for c in header if c.lower().startswith("essential")]
    if not cols:
        raise DataError(f"{path}: no label columns (none start with 'essential'); name them with --label-column")
    missing = [c for c in cols if c not in header]
    if missing:
        raise DataError(f"{path}: no column(s) {missing}; columns: {', '.join(header)}")
    out: dict[str, dict[str, int]] = {}
    bad = []
    for i, row in enumerate(reader, 2):
        labels = {}
        for c in cols:
            v = (row.get(c) or "").strip()
            if v not in ("0", "1"):
                bad.append(f"line {i} {c}={v!r}" if v else f"line {i} {c} is empty")
                continue
            labels[c] = int(v)
        out[row[key_col]] = labels
    if bad:
        raise DataError(f"{path}: " + listing(bad, "labels that are not 0/1"))
    return out, cols


def _plan(gene: Gene, n: int, w: int, insert_offset: int) -> dict[str, int]:
    """Window and insertion point in the gene's orientation (coordinates on the oriented record)."""
    a = gene.start if gene.strand == 1 else n - gene.end  # first base of the start codon
    glen = len(gene)
    wl = min(w, n)
    upstream = max((wl - glen) // 2, wl // 8)
    start = min(max(a - upstream, 0), n - wl)
    q = a + insert_offset
    return {"a": a, "q": q, "start": start, "len": wl}


def score_essentiality(
    model: Any,
    fasta: str | Path,
    gff: str | Path,
    labels: str | Path | None = None,
    *,
    label_columns: Sequence[str] | None = None,
    window: int | None = None,
    cassette: str = DEFAULT_CASSETTE,
    insert_offset: int = 12,
    zero_based_gff: bool = False,
    max_genes: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Score every protein-coding gene (only the labelled ones when ``labels`` is given).

    Returns ``{"rows": [...], "label_columns": [...], "notes": [...], "window": W, "skipped": [...]}``.
    Each row has locus_tag, gene, seqid, start/end (1-based inclusive), strand, length, insert_after
    (1-based genome position of the base after which the cassette goes, in gene orientation),
    window_start/window_end (1-based genome), delta_sum, delta_mean and the labels.
    """
    ids_c, _ = encode_bytes(cassette.encode(), "cassette")
    if len(ids_c) == 0:
        raise DataError("--cassette is empty")
    if insert_offset < 3 or insert_offset % 3:
        raise DataError(f"--insert-offset must be a positive multiple of 3 past the start codon (got {insert_offset})")
    w, wnote = resolve_window(model, window)
    genome = {r.name: r.ids for r in read_sequences(fasta)}
    genes = genes_from_gff(gff, zero_based_gff)
    unknown = sorted({g.seqid for g in genes} - set(genome))
    if unknown:
        raise DataError(
            f"{gff}: sequence id(s) {unknown[:5]} are not records of {fasta} (records: {sorted(genome)[:5]})"
        )
    lab: dict[str, dict[str, int]] = {}
    cols: list[str] = []
    skipped: list[str] = []
    if labels is not None:
        lab, cols = read_labels(labels, label_columns)
        by_name = {g.name: g for g in genes}
        keep, seen = [], set()
        for g in genes:
            if g.locus_tag in lab and g.locus_tag not in seen:
                keep.append(g)
                seen.add(g.locus_tag)
        for key in lab:
            if key not in seen:
                if key in by_name and by_name[key].locus_tag not in seen:  # labels keyed by gene name
                    g = by_name[key]
                    lab[g.locus_tag] = lab[key]
                    keep.append(g)
                    seen.add(g.locus_tag)
                else:
                    skipped.append(key)
        genes = keep
    if max_genes is not None:
        genes = genes[:max_genes]
    short = [g.locus_tag for g in genes if len(g) < insert_offset + 3]
    genes = [g for g in genes if len(g) >= insert_offset + 3]
    skipped += short

    oriented: dict[tuple[str, int], np.ndarray] = {}

    def record(seqid: str, strand: int) -> np.ndarray:
        if (seqid, strand) not in oriented:
            ids = genome[seqid]
            oriented[(seqid, strand)] = ids if strand == 1 else reverse_complement_ids(ids)
        return oriented[(seqid, strand)]

    rows: list[dict[str, Any]] = []
    n_bad_start = 0
    pbar = bar(total=len(genes), desc="genes", enabled=progress)
    try:
        step = 32  # genes per chunk: bounds memory, lets the bar move
        for c0 in range(0, len(genes), step):
            chunk = genes[c0 : c0 + step]
            wins, plans = [], []
            for g in chunk:
                seq = record(g.seqid, g.strand)
                n = len(seq)
                p = _plan(g, n, w, insert_offset)
                s, wl, q = p["start"], p["len"], p["q"]
                ref = seq[s : s + wl]
                mut = np.concatenate([seq[s:q], ids_c, seq[q : s + wl]])[:wl]
                wins += [ref, mut]
                plans.append(p)
                if decode(seq[p["a"] : p["a"] + 3]) not in ("ATG", "GTG", "TTG", "CTG", "ATT", "ATC", "ATA"):
                    n_bad_start += 1
            sums = window_logliks(model, wins, batch_size=batch_size)
            for i, (g, p) in enumerate(zip(chunk, plans)):
                n = len(genome[g.seqid])
                delta = float(sums[2 * i + 1] - sums[2 * i])
                # oriented -> genome coordinates (1-based inclusive)
                if g.strand == 1:
                    ws, we, ins = p["start"] + 1, p["start"] + p["len"], p["q"]
                else:
                    ws, we, ins = n - (p["start"] + p["len"]) + 1, n - p["start"], n - p["q"] + 1
                row = {
                    "locus_tag": g.locus_tag, "gene": g.name, "seqid": g.seqid, "start": g.start + 1, "end": g.end,
                    "strand": "+" if g.strand == 1 else "-", "length": len(g), "insert_after": ins,
                    "window_start": ws, "window_end": we, "delta_sum": delta, "delta_mean": delta / p["len"],
                }
                for c in cols:
                    row[c] = lab[g.locus_tag][c]
                rows.append(row)
            pbar.update(len(chunk))
    finally:
        pbar.close()
    notes = [
        wnote,
        f"mutation: insert {cassette} ({len(ids_c)} bp) {insert_offset} bp after the first base of the start codon, "
        "in the gene's orientation; mutant window cut back to the reference length at its right end",
        "delta = LL(mutant window) - LL(reference window), natural log; delta_mean = delta_sum / window length",
    ]
    if n_bad_start:
        notes.append(f"{n_bad_start} genes do not start with a usual start codon (annotation or coordinate problem?)")
    if skipped:
        notes.append(f"{len(skipped)} labelled genes skipped (not a CDS in the GFF, or shorter than the insert offset)")
    return {"rows": rows, "label_columns": cols, "notes": notes, "window": w, "skipped": skipped}


def essentiality_report(result: dict[str, Any], plot: str | Path | None = None) -> list[dict[str, Any]]:
    """AUROC (with a bootstrap 95% interval) of -delta_sum and of gene length for each label column."""
    rows = result["rows"]
    out, curves = [], {}
    for c in result["label_columns"]:
        y = np.array([r[c] for r in rows])
        score = -np.array([r["delta_sum"] for r in rows])
        length = np.array([r["length"] for r in rows], dtype=float)
        try:
            a = auroc(y, score)
            lo, hi = auroc_ci(y, score)
            a_len = auroc(y, length)
        except MetricError as e:
            raise DataError(f"label column {c!r}: {e}") from None
        out.append({"label": c, "n": len(y), "n_pos": int(y.sum()), "auroc": a, "ci95": (lo, hi),
                    "auroc_gene_length": a_len})
        curves[f"{c}: -delta"] = (y, score)
        curves[f"{c}: gene length"] = (y, length)
    if plot is not None and curves:
        save_roc_plot(plot, curves, title="gene essentiality (stop insertion)")
    return out
