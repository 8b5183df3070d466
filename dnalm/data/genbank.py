"""GenBank reading (via biopython): sequences plus their annotated features.

Records are named by their versioned accession (``NC_001604.1``), which is what GFF files use as seqid.
GenBank stores sequence in lower case by convention, not as soft-masking, so the case mask of a GenBank
record is all False. Features follow the conventions of :mod:`dnalm.data.annotation` (0-based half-open,
parts sorted, origin-crossing features of circular records written with ``end`` past the record length).
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from dnalm.data.annotation import Feature
from dnalm.data.errors import DataError
from dnalm.data.fasta import SeqRecord, _gzip_error_types, encode_record, open_binary


def _feature(bio_feature, seqid: str, n: int, circular: bool, path: Path) -> Feature | None:
    loc = bio_feature.location
    if loc is None:
        return None
    parts = sorted((int(p.start), int(p.end)) for p in loc.parts)
    if circular and len(parts) > 1 and parts[0][0] == 0 and any(e == n for _, e in parts):
        # Crosses the origin: the low pieces come after the high ones, so move them past the end.
        gaps = [parts[i + 1][0] - parts[i][1] for i in range(len(parts) - 1)]
        cut = int(np.argmax(gaps)) + 1
        parts = parts[cut:] + [(s + n, e + n) for s, e in parts[:cut]]
    q = {k: ",".join(str(x) for x in v) for k, v in bio_feature.qualifiers.items()}
    strand = loc.strand if loc.strand in (1, -1) else 0
    return Feature(
        seqid=seqid,
        type=bio_feature.type,
        start=parts[0][0],
        end=max(e for _, e in parts),
        strand=strand,
        id=q.get("locus_tag") or q.get("protein_id"),
        name=q.get("gene") or q.get("locus_tag"),
        parent=None,
        attributes=q,
        parts=parts,
        source=str(path),
    )


def read_genbank(path: str | Path) -> Iterator[SeqRecord]:
    """Yield the records of a GenBank file (plain or gzip), each with ``features`` filled in.

    Raises DataError for an empty or unparsable file, a record without sequence, duplicate names and
    characters that are not nucleotides or IUPAC codes.
    """
    from Bio import SeqIO
    from Bio.Seq import UndefinedSequenceError

    path = Path(path)
    seen: set[str] = set()
    count = 0
    with open_binary(path) as fh:
        text = io.TextIOWrapper(fh, encoding="utf-8", errors="replace")
        it = SeqIO.parse(text, "genbank")
        while True:
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    rec = next(it)
            except StopIteration:
                break
            except _gzip_error_types() as e:
                raise DataError(f"{path}: truncated or corrupt gzip data after record {count} ({e})") from None
            except ValueError as e:
                where = f"after record {count}" if count else "in the first record"
                raise DataError(f"{path}: not valid GenBank {where}: {e}") from None
            count += 1
            name = rec.id if rec.id and rec.id != "<unknown id>" else rec.name
            for w in caught:  # biopython only warns when the sequence is shorter than the LOCUS line says
                m = re.search(r"Expected sequence length (\d+), found (\d+)", str(w.message))
                if m:
                    raise DataError(
                        f"{path}: record {name!r} has {int(m[2]):,} bases but its LOCUS line says {int(m[1]):,}: "
                        "the file is truncated or damaged"
                    )
            try:
                seq = bytes(rec.seq)
            except UndefinedSequenceError:
                raise DataError(f"{path}: record {name!r} has no sequence (ORIGIN section missing)") from None
            if not seq:
                raise DataError(f"{path}: record {name!r} is empty: it has no sequence")
            if name in seen:
                raise DataError(f"{path}: duplicate record name {name!r} (record {count})")
            seen.add(name)
            ids, _ = encode_record(seq, name, path)
            circular = str(rec.annotations.get("topology", "")).lower() == "circular"
            n = len(ids)
            feats = [_feature(f, name, n, circular, path) for f in rec.features]
            yield SeqRecord(
                name=name,
                description=rec.description,
                ids=ids,
                lower=np.zeros(n, dtype=bool),
                source=str(path),
                circular=circular,
                features=[f for f in feats if f is not None],
            )
    if count == 0:
        raise DataError(f"{path}: no GenBank records found (expected a 'LOCUS' line)")
