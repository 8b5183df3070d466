"""Read a sequence file of either kind: FASTA (``dnalm.data.fasta``) or GenBank (``dnalm.data.genbank``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from dnalm.data.fasta import SeqRecord, read_fasta, sniff_format
from dnalm.data.genbank import read_genbank


def read_sequences(path: str | Path) -> Iterator[SeqRecord]:
    """Yield the records of a FASTA or GenBank file (format from the extension, or sniffed; .gz ok)."""
    if sniff_format(path) == "genbank":
        return read_genbank(path)
    return read_fasta(path)
