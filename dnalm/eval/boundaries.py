"""Where a dnaHNet model puts its chunk boundaries on annotated sequence (docs/architectures.md §5, "learned
boundaries": codon periodicity at stage 0, promoters / intergenic regions at deeper stages).

Conventions (owned here):

- A *boundary of stage s at nucleotide i* means a stage-s chunk starts at base i in the direction the
  model reads. Deeper stages' chunks start at shallower boundaries (``dnalm.models.hnet``).
- The model reads each record in windows of ``window`` bases behind a [BOS] token (as in training).
  Windows overlap by ``context`` bases; the overlap only warms the model up and is not counted, so each
  base is counted once per reading direction. With ``reverse`` on, the reverse complement is read too,
  and its decisions are mapped back to forward coordinates (base i of the record is base L-1-i there).
- Codon positions: inside CDS, the model's reading must be the coding strand (forward reading for
  + strand CDS, reverse-complement reading for - strand CDS). Codon position 1/2/3 counts from the
  CDS's first base along the coding strand, across all its parts. Pseudo genes, CDS whose length is no
  multiple of 3, and bases claimed by two CDS of different frames are left out.
- Region types (per base, strand-agnostic, both readings pooled): ``CDS`` (inside any CDS part),
  ``noncoding_gene`` (inside a gene without CDS there, e.g. tRNA / rRNA), ``upstream`` (within
  ``upstream`` bases 5' of a gene start on the gene's strand, outside every gene), ``intergenic``
  (everything else outside genes).
- Gene profile: boundary rate against the offset from the start of CDS read on their coding strand,
  from ``-profile_before`` to ``profile_after - 1`` (offset 0 = first base of the start codon).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from dnalm.data.annotation import read_annotations
from dnalm.data.errors import DataError
from dnalm.data.sequences import read_sequences
from dnalm.models.hnet import nucleotide_boundaries
from dnalm.outputs import atomic_write_bytes, atomic_write_text, output_group
from dnalm.tokenizer import BOS, reverse_complement_ids

REGIONS = ("CDS", "upstream", "intergenic", "noncoding_gene")
_GENE_TYPES = {"gene", "pseudogene"}


# ------------------------------------------------------------------------------------ running the model


@torch.no_grad()
def predict_boundaries(
    model: Any,
    ids: np.ndarray,
    window: int = 1024,
    context: int = 256,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Boundaries of every stage for one sequence read forward: bool (n_stages, L).

    ``ids`` (L,) token ids (uint8). Each window is [BOS] + up to ``window`` bases; consecutive windows
    overlap by ``context`` bases, which are run but not counted (the first window has no overlap).
    ``progress(n)`` is called with the number of bases finished after each batch.
    """
    if window <= context:
        raise ValueError(f"window ({window}) must be larger than context ({context})")
    L = len(ids)
    n_stages = model.config.n_stages
    out = np.zeros((n_stages, L), dtype=bool)
    # (first base counted, window start, window end): the first window counts all of its bases, each
    # later one starts ``context`` bases before the first base it counts
    spans, start = [], 0
    while start < L:
        a = max(0, start - context)
        b = min(L, a + window)
        spans.append((start, a, b))
        start = b
    device = model.device
    by_len: dict[int, list[tuple[int, int, int]]] = {}
    for span in spans:
        by_len.setdefault(span[2] - span[1], []).append(span)
    was_training = model.training
    model.eval()
    try:
        for n, group in by_len.items():
            for i in range(0, len(group), batch_size):
                batch = group[i : i + batch_size]
                tok = np.full((len(batch), n + 1), BOS, dtype=np.int64)
                for row, (_, a, b) in enumerate(batch):
                    tok[row, 1:] = ids[a:b]
                x = model.embed(torch.from_numpy(tok).to(device))  # (b, n+1, D)
                routes = model.backbone.boundaries(x)
                marks = [m[:, 1:].cpu().numpy() for m in nucleotide_boundaries(routes, n + 1)]  # drop [BOS]
                for row, (s, a, b) in enumerate(batch):
                    for st in range(n_stages):
                        out[st, s:b] = marks[st][row, s - a : b - a]
                if progress is not None:
                    progress(sum(b - s for s, _, b in batch))
    finally:
        model.train(was_training)
    return out


# ------------------------------------------------------------------------------------ annotation masks


def _good_cds(f: Any) -> bool:
    a = {k.lower(): str(v).lower() for k, v in f.attributes.items()}
    return f.type == "CDS" and f.strand in (1, -1) and a.get("pseudo") != "true" and a.get("partial") != "true" and len(f) % 3 == 0


def codon_positions(features: list, length: int, strand: int) -> np.ndarray:
    """int8 (length,): 0/1/2 = codon position 1/2/3 of CDS on ``strand`` (+1/-1), -1 elsewhere.

    Bases of CDS that wrap past the record end (circular records) are skipped; bases given two
    different positions by overlapping CDS are set to -1.
    """
    pos = np.full(length, -1, dtype=np.int8)
    conflict = np.zeros(length, dtype=bool)
    for f in features:
        if not _good_cds(f) or f.strand != strand:
            continue
        coords = np.concatenate([np.arange(s, e) for s, e in sorted(f.parts)]) if f.parts else np.arange(f.start, f.end)
        if strand == -1:
            coords = coords[::-1]  # the coding strand reads from the highest coordinate down
        phase = (np.arange(len(coords)) % 3).astype(np.int8)
        keep = coords < length
        coords, phase = coords[keep], phase[keep]
        seen = pos[coords]
        conflict[coords[(seen >= 0) & (seen != phase)]] = True
        pos[coords] = phase
    pos[conflict] = -1
    return pos


def region_labels(features: list, length: int, upstream: int = 100) -> np.ndarray:
    """int8 (length,) index into ``REGIONS`` for every base (see the module docstring)."""
    lab = np.full(length, REGIONS.index("intergenic"), dtype=np.int8)
    in_gene = np.zeros(length, dtype=bool)
    genes = [f for f in features if f.type in _GENE_TYPES or f.type == "CDS"]
    for f in genes:
        in_gene[max(0, f.start) : min(length, f.end)] = True
    up = np.zeros(length, dtype=bool)
    for f in genes:
        if f.strand == 1:
            up[max(0, f.start - upstream) : max(0, min(length, f.start))] = True
        elif f.strand == -1:
            up[min(length, f.end) : min(length, f.end + upstream)] = True
    lab[up & ~in_gene] = REGIONS.index("upstream")
    lab[in_gene] = REGIONS.index("noncoding_gene")
    for f in features:
        if f.type == "CDS":
            for s, e in f.parts or [(f.start, f.end)]:
                lab[max(0, s) : min(length, e)] = REGIONS.index("CDS")
    return lab


def cds_starts(features: list, length: int, strand: int) -> list[int]:
    """First base of the start codon of each usable CDS on ``strand``, in forward coordinates."""
    out = []
    for f in features:
        if _good_cds(f) and f.strand == strand and f.end <= length:
            out.append(f.start if strand == 1 else f.end - 1)
    return out


# ------------------------------------------------------------------------------------ the analysis


@dataclass
class Counts:
    positions: int = 0
    boundaries: int = 0

    def add(self, mask: np.ndarray, marks: np.ndarray) -> None:
        self.positions += int(mask.sum())
        self.boundaries += int((marks & mask).sum())

    @property
    def rate(self) -> float:
        return self.boundaries / self.positions if self.positions else float("nan")


@dataclass
class BoundaryReport:
    """Counts per stage: codon positions (1..3), region types, overall, and the gene-start profile."""

    n_stages: int
    profile_offsets: np.ndarray  # (P,)
    codon: list[list[Counts]] = field(default_factory=list)  # [stage][codon position 0..2]
    region: list[dict[str, Counts]] = field(default_factory=list)  # [stage][region]
    overall: list[Counts] = field(default_factory=list)  # [stage]
    profile_pos: np.ndarray | None = None  # (P,) bases counted per offset
    profile_hits: np.ndarray | None = None  # (n_stages, P)
    bases: int = 0  # bases of sequence analysed (per reading direction)
    readings: int = 0

    def rows(self) -> list[tuple[int, str, str, int, int, float]]:
        """(stage, table, category, positions, boundaries, rate) for the TSV."""
        rows = []
        for s in range(self.n_stages):
            rows.append((s, "overall", "all", self.overall[s].positions, self.overall[s].boundaries, self.overall[s].rate))
            for k, c in enumerate(self.codon[s]):
                rows.append((s, "codon_position", str(k + 1), c.positions, c.boundaries, c.rate))
            for name in REGIONS:
                c = self.region[s][name]
                rows.append((s, "region", name, c.positions, c.boundaries, c.rate))
        return rows

    def profile_rates(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.profile_hits / np.maximum(self.profile_pos, 1)[None, :]


def analyze_boundaries(
    model: Any,
    fasta: str | Path,
    gff: str | Path,
    window: int | None = None,
    context: int | None = None,
    upstream: int = 100,
    max_bases: int | None = None,
    reverse: bool = True,
    batch_size: int = 8,
    profile_before: int = 300,
    profile_after: int = 600,
    zero_based_starts: bool = False,
    progress: bool = True,
) -> BoundaryReport:
    """Run ``model`` over every record of ``fasta`` that ``gff`` annotates and count its boundaries.

    ``window`` defaults to the model's maximum length minus one (room for [BOS]), capped at 4096;
    ``context`` to a quarter of it. ``max_bases`` caps the bases analysed per record (from its start).
    Raises DataError when no FASTA record has annotation or the model is not a dnaHNet.
    """
    if not callable(getattr(model.backbone, "boundaries", None)):
        raise DataError(f"boundary analysis needs a dnaHNet model (family 'hnet'), got {model.config.family!r}")
    window = window or min(model.config.max_len - 1, 4096)
    if window + 1 > model.config.max_len:
        raise DataError(f"--window {window} plus [BOS] exceeds the model's maximum length {model.config.max_len}")
    context = window // 4 if context is None else context
    if not 0 <= context < window:
        raise DataError(f"--context must be in [0, window) (got {context} with window {window})")
    features = read_annotations(gff, zero_based_starts=zero_based_starts)
    by_seq: dict[str, list] = {}
    for f in features:
        by_seq.setdefault(f.seqid, []).append(f)
    records = [r for r in read_sequences(fasta) if r.name in by_seq]
    if not records:
        raise DataError(
            f"{gff}: no annotated record matches a sequence in {fasta} "
            f"(annotation names: {', '.join(sorted(by_seq)[:5])}); the GFF seqid must equal the FASTA record name"
        )

    S = model.config.n_stages
    offsets = np.arange(-profile_before, profile_after)
    rep = BoundaryReport(S, offsets)
    rep.codon = [[Counts() for _ in range(3)] for _ in range(S)]
    rep.region = [{name: Counts() for name in REGIONS} for _ in range(S)]
    rep.overall = [Counts() for _ in range(S)]
    rep.profile_pos = np.zeros(len(offsets), dtype=np.int64)
    rep.profile_hits = np.zeros((S, len(offsets)), dtype=np.int64)

    total = sum(min(len(r), max_bases or len(r)) for r in records) * (2 if reverse else 1)
    bar = None
    if progress:
        bar = tqdm(total=total, unit="nt", unit_scale=True, desc="boundaries", leave=False)
    try:
        for rec in records:
            L = min(len(rec), max_bases or len(rec))
            ids = rec.ids[:L]
            feats = by_seq[rec.name]
            labels = region_labels(feats, L, upstream)
            rep.bases += L
            strands = [1, -1] if reverse else [1]
            for strand in strands:
                rep.readings += 1
                seq = ids if strand == 1 else reverse_complement_ids(ids)
                marks = predict_boundaries(
                    model, seq, window, context, batch_size, progress=(bar.update if bar is not None else None)
                )
                if strand == -1:
                    marks = marks[:, ::-1]  # back to forward coordinates
                codon = codon_positions(feats, L, strand)
                starts = np.asarray(cds_starts(feats, L, strand), dtype=np.int64)
                # gene-start profile in reading direction: offset k is forward base start + strand * k
                prof = starts[:, None] + strand * offsets[None, :]  # (G, P)
                inside = (prof >= 0) & (prof < L)
                prof = np.clip(prof, 0, L - 1)
                rep.profile_pos += inside.sum(0)
                every = np.ones(L, dtype=bool)
                for s in range(S):
                    m = marks[s]
                    rep.overall[s].add(every, m)
                    for k in range(3):
                        rep.codon[s][k].add(codon == k, m)
                    for r, name in enumerate(REGIONS):
                        rep.region[s][name].add(labels == r, m)
                    rep.profile_hits[s] += (m[prof] & inside).sum(0)
    finally:
        if bar is not None:
            bar.close()
    return rep


# ------------------------------------------------------------------------------------ writing results


def _atomic_save_figure(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def write_report(rep: BoundaryReport, out_dir: str | Path) -> list[Path]:
    """Write ``boundaries.tsv``, ``gene_profile.tsv``, ``codon_positions.png`` and ``gene_profile.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    with output_group():  # the four files appear together, or none of them
        _write_report(rep, out, plt)
    return [out / n for n in ("boundaries.tsv", "gene_profile.tsv", "codon_positions.png", "gene_profile.png")]


def _write_report(rep: BoundaryReport, out: Path, plt: Any) -> None:
    lines = ["stage\ttable\tcategory\tpositions\tboundaries\trate"]
    lines += [f"{s}\t{t}\t{c}\t{n}\t{b}\t{r:.6f}" for s, t, c, n, b, r in rep.rows()]
    atomic_write_text(out / "boundaries.tsv", "\n".join(lines) + "\n")
    rates = rep.profile_rates()
    prof = ["stage\toffset\tpositions\tboundaries\trate"]
    for s in range(rep.n_stages):
        for j, off in enumerate(rep.profile_offsets):
            prof.append(f"{s}\t{off}\t{rep.profile_pos[j]}\t{rep.profile_hits[s, j]}\t{rates[s, j]:.6f}")
    atomic_write_text(out / "gene_profile.tsv", "\n".join(prof) + "\n")

    fig, axes = plt.subplots(1, rep.n_stages, figsize=(3.2 * rep.n_stages, 3), squeeze=False)
    for s in range(rep.n_stages):
        ax = axes[0, s]
        vals = [c.rate for c in rep.codon[s]]
        ax.bar(["1", "2", "3"], vals, color=["#4c72b0", "#55a868", "#c44e52"])
        ax.axhline(rep.overall[s].rate, color="gray", ls="--", lw=1, label="all bases")
        ax.set_title(f"stage {s}")
        ax.set_xlabel("codon position (coding strand)")
        if s == 0:
            ax.set_ylabel("boundary rate")
            ax.legend(fontsize=8)
    fig.tight_layout()
    _atomic_save_figure(fig, out / "codon_positions.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3))
    for s in range(rep.n_stages):
        ax.plot(rep.profile_offsets, rates[s], lw=0.8, label=f"stage {s}")
    ax.axvline(0, color="gray", lw=0.8, ls=":")
    ax.set_xlabel("offset from CDS start (nt, coding strand)")
    ax.set_ylabel("boundary rate")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _atomic_save_figure(fig, out / "gene_profile.png")
    plt.close(fig)


def format_summary(rep: BoundaryReport) -> str:
    """A short plain-text table for the terminal."""
    lines = [f"{rep.bases:,} bases analysed, {rep.readings} reading(s) (records x strands)"]
    head = "stage  all     codon1  codon2  codon3  " + "  ".join(f"{r:>14}" for r in REGIONS)
    lines.append(head)
    for s in range(rep.n_stages):
        cod = "  ".join(f"{c.rate:6.4f}" for c in rep.codon[s])
        reg = "  ".join(f"{rep.region[s][r].rate:14.4f}" for r in REGIONS)
        lines.append(f"{s:<5}  {rep.overall[s].rate:6.4f}  {cod}  {reg}")
    return "\n".join(lines)
