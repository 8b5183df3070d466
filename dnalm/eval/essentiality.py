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
  summed over the window (N bases are not scored); ``delta_mean`` = ``delta_sum`` / the reference window's
  non-N bases (``W`` when it has no N).
- With labels, AUROC of essential (1) against non-essential (0) uses ``-delta_sum``. A trivial baseline
  is reported beside it: gene length (longer genes lose more likelihood and essential genes differ in
  length, so the model must beat it to show more than length).

Coordinates in the output are 1-based inclusive genome positions, as in the GFF and the label file.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dnalm.data.annotation import read_annotations
from dnalm.data.errors import DataError, listing
from dnalm.data.sequences import read_sequences
from dnalm.data.tables import read_table
from dnalm.eval.metrics import MetricError, auroc, auroc_ci, save_roc_plot
from dnalm.eval.metrics import progress as bar
from dnalm.eval.scoring import count_scored, window_logliks
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


def genes_from_gff(
    path: str | Path, zero_based_starts: bool = False, lengths: dict[str, int] | None = None,
    circular: Sequence[str] = (),
) -> list[Gene]:
    """Protein-coding genes (from CDS features) of a GFF3/GTF file, in file order. With ``lengths`` (record
    name -> length) a CDS that lies outside its record is an error, as in ``dnalm prepare``, unless the
    record is in ``circular`` and the CDS crosses its origin."""
    feats = read_annotations(path, zero_based_starts=zero_based_starts, lengths=lengths, circular=circular)
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
    """A TSV/CSV with ``locus_tag`` (or ``gene``/``name``/``id``) and 0/1 label columns -> {key: {column: 0/1}},
    columns (read by :func:`dnalm.data.tables.read_table`).

    ``columns`` None means every column whose name starts with ``essential``. Empty or non-0/1 values, and a
    key listed twice with different labels, are errors naming the lines.
    """
    table = read_table(path, "label file", delimiters=("\t", ","))
    ik = table.column(None, ("locus_tag", "gene", "name", "id"), "locus_tag (or gene)")
    if columns:
        idx = [table.column(c, (), "label", option="--label-column") for c in columns]
    else:
        idx = [j for j, h in enumerate(table.header) if h.lower().startswith("essential")]
        if not idx:
            raise DataError(
                f"{table.name}: no label columns (none start with 'essential'; columns: {table.columns_text()}); "
                "name them with --label-column"
            )
    cols = [table.header[j] for j in idx]
    out: dict[str, dict[str, int]] = {}
    first_line: dict[str, int] = {}
    bad, twice = [], []
    for lineno, row in zip(table.lines, table.rows):
        labels = {}
        for j in idx:
            v = row[j]
            if v not in ("0", "1"):
                bad.append(f"line {lineno} {table.header[j]}={v!r}" if v else f"line {lineno} {table.header[j]} is empty")
                continue
            labels[table.header[j]] = int(v)
        key = row[ik]
        if key in out and out[key] != labels:
            twice.append(f"line {lineno}: {key!r} (first on line {first_line[key]})")
        out.setdefault(key, labels)
        first_line.setdefault(key, lineno)
    if bad:
        raise DataError(f"{table.name}: " + listing(bad, "labels that are not 0/1"))
    if twice:
        raise DataError(f"{table.name}: " + listing(twice, "genes listed again with other labels"))
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
    need_both_classes: bool = False,
    circular: Sequence[str] = (),
) -> dict[str, Any]:
    """Score every protein-coding gene (only the labelled ones when ``labels`` is given).

    ``circular``: record-name glob patterns of circular records; a CDS that crosses the origin of one is
    skipped (and counted in the notes), while a CDS past the end of a linear record is an error.
    ``need_both_classes``: raise DataError before scoring when a label column holds one class only among
    the genes to score (an AUROC would be undefined); ``dnalm essentiality`` sets it.

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
    circ = [n for n in genome if any(fnmatchcase(n, p) for p in circular)]
    genes = genes_from_gff(gff, zero_based_gff, {k: len(v) for k, v in genome.items()}, circ)
    across = [g for g in genes if g.seqid in genome and g.end > len(genome[g.seqid])]
    genes = [g for g in genes if g not in across]  # windows are linear: a gene across the origin has none
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
        for key in list(lab):  # a copy: labels keyed by gene name get a locus_tag entry below
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
    if labels is not None and need_both_classes:  # an AUROC needs both classes: say so before any scoring
        if not genes:
            raise DataError(f"{labels}: none of the {len(lab)} labelled genes is a CDS of {gff} (keys: locus_tag or gene name)")
        for c in cols:
            y = {lab[g.locus_tag][c] for g in genes}
            if len(y) < 2:
                raise DataError(
                    f"{labels}: label column {c!r} is {y.pop()} for all {len(genes)} scored genes; an AUROC needs "
                    "both classes (choose other columns with --label-column, or more genes)"
                )

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
                    "window_start": ws, "window_end": we, "delta_sum": delta,
                    "delta_mean": delta / max(count_scored(wins[2 * i]), 1),
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
        "delta = LL(mutant window) - LL(reference window), natural log; delta_mean = delta_sum / scored (non-N) bases of the reference window",
    ]
    if n_bad_start:
        notes.append(f"{n_bad_start} genes do not start with a usual start codon (annotation or coordinate problem?)")
    if skipped:
        notes.append(f"{len(skipped)} labelled genes skipped (not a CDS in the GFF, or shorter than the insert offset)")
    if across:
        notes.append(f"{len(across)} genes cross the origin of a circular record and are skipped (windows are linear): "
                     + ", ".join(g.locus_tag for g in across[:5]))
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
