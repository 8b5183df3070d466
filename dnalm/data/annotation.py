"""GFF3 and GTF annotation reading.

Conventions (owned here, stated once):

- Coordinates become 0-based half-open at the reader: a GFF/GTF line ``start=190 end=255`` (1-based,
  inclusive) is ``Feature(start=189, end=255)``. Some files (e.g. the phiX174 GFF from orfipy) write
  0-based starts; read them with ``zero_based_starts=True`` so that ``start`` is taken as is.
- Strand is +1, -1 or 0 (``.`` or ``?``); any other strand value is an error naming the line.
  ``parts`` lists the pieces of a multi-part feature (GFF3 lines
  sharing one ID, e.g. a CDS split by a frameshift or an intron; in GTF, the CDS / start_codon /
  stop_codon lines of one transcript), sorted by start; ``start``/``end`` span all parts.
- Circular records: a feature that crosses the origin is written, as GFF3 says, with ``end`` past the
  record length (end = length + the end on the far side). Such features are only accepted on records
  known to be circular (``Is_circular=true`` on a region line, a circular GenBank record, or listed in
  ``circular``); :func:`feature_ids` reads them by wrapping around.
- A feature with end < start, or (when record lengths are given) one that lies outside its record, is an
  error naming the file, line and feature.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import numpy as np

from dnalm.data.errors import DataError
from dnalm.data.fasta import _gzip_error_types, open_binary, strip_compression_suffix
from dnalm.tokenizer import reverse_complement_ids

GFF3_SUFFIXES = (".gff", ".gff3")
GTF_SUFFIXES = (".gtf", ".gff2")
# GTF feature types that form one multi-part feature per transcript (they are split only by introns).
GTF_MERGED_TYPES = {"CDS", "start_codon", "stop_codon", "UTR", "5UTR", "3UTR", "five_prime_utr", "three_prime_utr"}
_STRANDS = {"+": 1, "-": -1, ".": 0, "?": 0}
_GTF_ATTR = re.compile(r'\s*([^\s;]+)\s+(?:"([^"]*)"|([^;\s]+))\s*;?')


@dataclass
class Feature:
    """One annotated feature in 0-based half-open coordinates (see the module docstring)."""

    seqid: str
    type: str
    start: int  # 0-based, inclusive (span of all parts)
    end: int  # 0-based, exclusive; may exceed the record length only on circular records
    strand: int  # +1, -1 or 0
    id: str | None = None
    name: str | None = None
    parent: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    parts: list[tuple[int, int]] = field(default_factory=list)  # sorted (start, end) pieces
    source: str = ""  # the file it came from
    line: int = 0  # first line in that file (0 when not from a line-based file)

    def __len__(self) -> int:
        return sum(e - s for s, e in self.parts)


def feature_ids(feature: Feature, ids: np.ndarray) -> np.ndarray:
    """Token ids of a feature in its own orientation: parts joined, reverse-complemented on strand -1.

    Parts past the end of a circular record wrap around to its start.
    """
    n = len(ids)
    pieces = [ids[s:e] if e <= n else np.take(ids, np.arange(s, e), mode="wrap") for s, e in feature.parts]
    seq = np.concatenate(pieces) if pieces else ids[:0]
    return reverse_complement_ids(seq) if feature.strand == -1 else seq.copy()


def gene_features(features: Iterable[Feature]) -> list[Feature]:
    """The genes of an annotation: its ``gene`` features, or, for records without any, its CDS features.

    (Some annotations, such as the phiX174 ORF file, list CDS only.)
    """
    features = list(features)
    with_genes = {f.seqid for f in features if f.type == "gene"}
    return [f for f in features if f.type == "gene" or (f.type == "CDS" and f.seqid not in with_genes)]


def annotation_format(path: str | Path) -> str:
    """'gff3' or 'gtf', from the extension (under any .gz) or else the first feature line."""
    name = strip_compression_suffix(path)
    if name.endswith(GFF3_SUFFIXES):
        return "gff3"
    if name.endswith(GTF_SUFFIXES):
        return "gtf"
    with open_binary(path) as fh:
        for raw in fh:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if line.startswith("##gff-version 3"):
                return "gff3"
            if not line or line.startswith("#"):
                continue
            cols = line.split("\t")
            if len(cols) == 9:
                return "gtf" if _GTF_ATTR.match(cols[8]) and "=" not in cols[8].split(";")[0] else "gff3"
            break
    raise DataError(f"{path}: cannot tell whether this is GFF3 or GTF; name it .gff3 or .gtf")


def _parse_gff3_attributes(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for piece in text.strip().split(";"):
        if not piece.strip():
            continue
        key, _, value = piece.partition("=")
        out[unquote(key.strip())] = unquote(value.strip())
    return out


def _parse_gtf_attributes(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in _GTF_ATTR.finditer(text):
        key, value = m.group(1), m.group(2) if m.group(2) is not None else m.group(3)
        out[key] = f"{out[key]},{value}" if key in out else value  # repeated keys (db_xref) are joined
    return out


def read_annotations(
    path: str | Path,
    zero_based_starts: bool = False,
    lengths: dict[str, int] | None = None,
    circular: Collection[str] = (),
) -> list[Feature]:
    """Read a GFF3 or GTF file (plain or gzip) into Features with 0-based half-open coordinates.

    Args:
        path: the annotation file; GFF3 vs GTF from the extension or the content.
        zero_based_starts: the file's start column is already 0-based (e.g. the phiX174 ORF GFF).
        lengths: record name -> length; when given, features on these records are checked to lie inside
            them. Features on records not in ``lengths`` are returned unchecked (the caller decides).
        circular: names of circular records, on which features may cross the origin.

    Raises DataError (naming file, line and feature) for malformed lines, end < start, negative starts,
    and features outside their record.
    """
    path = Path(path)
    fmt = annotation_format(path)
    circular_ids = set(circular)
    merged: dict[tuple[str, str, str], Feature] = {}
    features: list[Feature] = []
    lineno = 0
    try:
        with open_binary(path) as fh:
            for lineno, raw in enumerate(fh, 1):
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                if line.startswith("##FASTA"):
                    break  # GFF3 may end with the sequences; features stop here
                if not line.strip() or line.startswith("#"):
                    continue
                cols = line.split("\t")
                if len(cols) != 9:
                    raise DataError(
                        f"{path}: line {lineno}: expected 9 tab-separated columns, found {len(cols)}"
                    )
                seqid, source, ftype, s_start, s_end, _score, s_strand, _phase, s_attrs = cols
                try:
                    start, end = int(s_start), int(s_end)
                except ValueError:
                    raise DataError(
                        f"{path}: line {lineno}: start/end must be integers (got {s_start!r}, {s_end!r})"
                    ) from None
                attrs = _parse_gtf_attributes(s_attrs) if fmt == "gtf" else _parse_gff3_attributes(s_attrs)
                label = attrs.get("ID") or attrs.get("gene_id") or ftype
                if s_strand not in _STRANDS:
                    raise DataError(
                        f"{path}: line {lineno}: feature {label!r} on {seqid!r} has strand {s_strand!r}; "
                        "the strand column (7) must be +, -, . or ?"
                    )
                if end < start:
                    raise DataError(
                        f"{path}: line {lineno}: feature {label!r} on {seqid!r} has end {end} < start {start}"
                    )
                first = 0 if zero_based_starts else 1
                if start < first:
                    hint = ""
                    if start == 0:
                        hint = "; if the file's starts are 0-based, use --zero-based-gff (zero_based_starts=True)"
                    raise DataError(
                        f"{path}: line {lineno}: feature {label!r} on {seqid!r} starts at {start}, before "
                        f"the first base ({first}){hint}"
                    )
                if not zero_based_starts:
                    start -= 1  # 1-based inclusive -> 0-based half-open
                if end == start:
                    raise DataError(f"{path}: line {lineno}: feature {label!r} on {seqid!r} is empty")
                if ftype == "region" and attrs.get("Is_circular", "").lower() == "true":
                    circular_ids.add(seqid)
                if fmt == "gtf":
                    fid = {"gene": attrs.get("gene_id"), "transcript": attrs.get("transcript_id")}.get(ftype)
                    parent = attrs.get("transcript_id") if ftype != "transcript" else attrs.get("gene_id")
                    parent = None if ftype == "gene" else parent or attrs.get("gene_id")
                    name = attrs.get("gene_name") or attrs.get("gene") or attrs.get("gene_id")
                    key = (seqid, ftype, parent or "") if ftype in GTF_MERGED_TYPES and parent else None
                else:
                    fid, parent = attrs.get("ID"), attrs.get("Parent")
                    name = attrs.get("Name") or attrs.get("gene") or attrs.get("locus_tag")
                    key = (seqid, ftype, fid) if fid else None
                if key is not None and key in merged:
                    f = merged[key]
                    f.parts.append((start, end))
                    f.start, f.end = min(f.start, start), max(f.end, end)
                    continue
                f = Feature(
                    seqid=seqid,
                    type=ftype,
                    start=start,
                    end=end,
                    strand=_STRANDS[s_strand],
                    id=fid,
                    name=name,
                    parent=parent,
                    attributes=attrs,
                    parts=[(start, end)],
                    source=str(path),
                    line=lineno,
                )
                if key is not None:
                    merged[key] = f
                features.append(f)
    except _gzip_error_types() as e:
        raise DataError(f"{path}: truncated or corrupt gzip data after line {lineno} ({e})") from None
    for f in features:
        f.parts.sort()
    if lengths is not None:
        check_features(features, lengths, circular_ids, path)
    return features


def check_features(
    features: Iterable[Feature], lengths: dict[str, int], circular: Collection[str], path: str | Path
) -> None:
    """Raise DataError for the first feature that lies outside its record (records not in lengths skipped)."""
    for f in features:
        n = lengths.get(f.seqid)
        if n is None:
            continue
        limit = 2 * n if f.seqid in circular else n
        if f.end > limit or f.start >= n:
            where = f"line {f.line}" if f.line else "feature"
            hint = (
                f"; if {f.seqid} is circular and the feature crosses the origin, mark the record circular "
                f"(--circular {f.seqid})"
                if f.seqid not in circular and f.start < n
                else ""
            )
            label = f.id or f.name or f.type
            raise DataError(
                f"{path}: {where}: feature {label!r} ({f.start + 1}-{f.end}, 1-based) lies outside record "
                f"{f.seqid!r} of length {n}{hint}"
            )
