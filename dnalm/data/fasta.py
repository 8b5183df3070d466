"""FASTA reading (and the format dispatch for every sequence file).

Conventions (owned here, stated once):

- A FASTA file holds one or more records, each a ``>name description`` header line followed by sequence
  lines of any width. Line endings may be LF or CRLF; spaces and tabs inside sequence lines are ignored.
  The file may be plain text, gzip or bgzip (detected from the first bytes, not the extension).
- The record name is the header's first whitespace-separated word; the rest is the description.
- Sequences become token ids of :mod:`dnalm.tokenizer` (A=7 C=8 G=9 T=10 N=11). Lower case (soft-masked
  repeats) is upper-cased and kept as a separate boolean mask (True = lower case). IUPAC ambiguity codes
  become N. Any other character is an error naming the file, record, 1-based position and line.
- Positions inside a record are 0-based in code; messages for people say "position P (1-based)".
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from dnalm.data.errors import DataError
from dnalm.data.tables import check_input_file, gzip_error_types
from dnalm.tokenizer import BYTE_IS_LOWER, BYTE_TO_ID

FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".ffn", ".fas", ".seq")
GENBANK_SUFFIXES = (".gb", ".gbk", ".gbff", ".genbank")
GZIP_SUFFIXES = (".gz", ".bgz", ".bgzf")
_GZIP_MAGIC = b"\x1f\x8b"
_IGNORED_BYTES = b" \t\r\n\x0b\x0c"  # removed from sequence lines before encoding


@dataclass
class SeqRecord:
    """One sequence: token ids (uint8, see dnalm.tokenizer) plus its lower-case (repeat) mask."""

    name: str
    description: str
    ids: np.ndarray  # (L,) uint8 token ids
    lower: np.ndarray  # (L,) bool, True = lower case in the file
    source: str  # the file it came from
    circular: bool = False  # GenBank topology; FASTA cannot say, so False
    features: list = field(default_factory=list)  # annotation Features carried by the file (GenBank)

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def open_binary(path: str | Path) -> IO[bytes]:
    """Open a plain, gzip or bgzip file for binary reading (compression detected from the magic bytes).

    Raises DataError for a missing or empty file.
    """
    path = check_input_file(path, "sequence or annotation file")
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == _GZIP_MAGIC:
        # bgzip is a series of gzip members; the gzip module reads them all in sequence.
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


_gzip_error_types = gzip_error_types


def strip_compression_suffix(path: str | Path) -> str:
    name = Path(path).name.lower()
    for suffix in GZIP_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def sniff_format(path: str | Path) -> str:
    """'fasta' or 'genbank', from the extension (under any .gz) or else the first non-blank line."""
    name = strip_compression_suffix(path)
    if name.endswith(FASTA_SUFFIXES):
        return "fasta"
    if name.endswith(GENBANK_SUFFIXES):
        return "genbank"
    with open_binary(path) as fh:
        try:
            for line in fh:
                s = line.strip()
                if not s:
                    continue
                if s.startswith(b">"):
                    return "fasta"
                if s.startswith(b"LOCUS"):
                    return "genbank"
                break
        except _gzip_error_types() as e:
            raise DataError(f"{path}: truncated or corrupt gzip data ({e})") from None
    raise DataError(
        f"{path}: cannot tell the format; use a FASTA ({', '.join(FASTA_SUFFIXES)}) or GenBank "
        f"({', '.join(GENBANK_SUFFIXES)}) extension, optionally followed by .gz"
    )


def encode_record(
    raw: bytes, name: str, path: str | Path, line_of: Callable[[int], int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Encode a record's cleaned sequence bytes; a bad character raises DataError with its position.

    ``line_of(position)`` (optional) gives the file line of a 0-based record position for the message.
    """
    # bytes.translate runs at memory speed; it applies the tokenizer's tables (255 = not a nucleotide).
    id_bytes = raw.translate(_TO_ID)
    pos = id_bytes.find(b"\xff")
    if pos >= 0:
        where = f", line {line_of(pos)}" if line_of is not None else ""
        ch = chr(raw[pos])
        raise DataError(
            f"{path}: record {name!r}, position {pos + 1} (1-based{where}): invalid character {ch!r}; "
            "expected A, C, G, T, N or an IUPAC ambiguity code"
        )
    ids = np.frombuffer(id_bytes, dtype=np.uint8).copy()  # (L,) uint8, writable
    lower = np.frombuffer(raw.translate(_IS_LOWER), dtype=np.bool_).copy()  # (L,) bool
    return ids, lower


_TO_ID = BYTE_TO_ID.tobytes()
_IS_LOWER = BYTE_IS_LOWER.astype(np.uint8).tobytes()


_OTHER_IGNORED = [bytes([b]) for b in _IGNORED_BYTES if b != ord("\n")]
_KEEP = np.ones(256, dtype=bool)
_KEEP[list(_IGNORED_BYTES)] = False


def _finish(
    path: Path, name: str, desc: str, header_line: int, chunks: list[bytes], seen: set[str]
) -> SeqRecord:
    text = b"".join(chunks)  # the record's sequence lines, line breaks included
    raw = text.replace(b"\n", b"")  # fast path; translate(delete=...) is several times slower
    if any(b in raw for b in _OTHER_IGNORED):
        raw = raw.translate(None, _IGNORED_BYTES)
    if not raw:
        raise DataError(f"{path}: record {name!r} (header on line {header_line}) is empty: it has no sequence")
    if name in seen:
        raise DataError(f"{path}: duplicate record name {name!r} (second header on line {header_line})")
    seen.add(name)

    def line_of(pos: int) -> int:  # only on the error path: map a base position back to its line
        at = int(np.flatnonzero(_KEEP[np.frombuffer(text, dtype=np.uint8)])[pos])
        return header_line + 1 + text.count(b"\n", 0, at)

    try:
        ids, lower = encode_record(raw, name, path)
    except DataError:
        encode_record(raw, name, path, line_of)
        raise
    return SeqRecord(name=name, description=desc, ids=ids, lower=lower, source=str(path))


_BLOCK = 1 << 22  # bytes read at a time


def _scan(fh: IO[bytes]) -> Iterator[tuple[str, bytes, int]]:
    """Split a FASTA byte stream into ``('header', text, line)`` and ``('seq', bytes, first line)`` events.

    Reads big blocks and finds headers (a '>' at the start of a line) with bytes.find, so the cost per
    line is C, not Python; sequence chunks keep their line breaks (removed when a record is finished).
    """
    buf = b""
    line = 1  # file line of buf[0]
    at_line_start = True  # buf[0] starts a line
    eof = False
    # read1: one underlying read at a time, so a truncated gzip fails after the data before the damage
    # has been seen (the error can then name the record and line).
    read = getattr(fh, "read1", fh.read)
    while not eof:
        block = read(_BLOCK)
        eof = not block
        buf = buf + block if buf else block
        n, pos = len(buf), 0
        while pos < n:
            if at_line_start and buf[pos : pos + 1] == b">":
                h = pos
            else:
                h = buf.find(b"\n>", pos)
                h = h + 1 if h >= 0 else -1
            if h < 0:  # no header in the rest of the buffer: all sequence
                chunk = buf[pos:]
                yield "seq", chunk, line
                line += chunk.count(b"\n")
                at_line_start = chunk.endswith(b"\n")
                pos = n
                break
            if h > pos:
                chunk = buf[pos:h]
                yield "seq", chunk, line
                line += chunk.count(b"\n")
                pos = h
            e = buf.find(b"\n", h)
            if e < 0 and not eof:
                at_line_start = True
                break  # the header line continues in the next block
            end = n if e < 0 else e
            yield "header", buf[h + 1 : end], line
            line += 1
            pos, at_line_start = end + 1, True
        buf = buf[pos:]


def read_fasta(path: str | Path) -> Iterator[SeqRecord]:
    """Yield the records of a FASTA file (plain, gzip or bgzip) one at a time.

    Raises DataError naming the file, record and position for: an empty file, text before the first
    header, an empty header or record, a duplicate name, a character that is not a nucleotide or IUPAC
    code, and a truncated or corrupt gzip stream.
    """
    path = Path(path)
    seen: set[str] = set()
    name: str | None = None
    desc = ""
    header_line = lineno = 0
    chunks: list[bytes] = []
    with open_binary(path) as fh:
        try:
            for kind, data, lineno in _scan(fh):
                if kind == "header":
                    if name is not None:
                        yield _finish(path, name, desc, header_line, chunks, seen)
                    header = data.decode("utf-8", errors="replace").strip()
                    if not header:
                        raise DataError(f"{path}: line {lineno}: empty FASTA header (a record needs a name)")
                    name, _, desc = header.replace("\t", " ").partition(" ")
                    desc = desc.strip()
                    header_line, chunks = lineno, []
                elif name is None:
                    stripped = data.lstrip()
                    if stripped:
                        first = lineno + data[: len(data) - len(stripped)].count(b"\n")
                        raise DataError(
                            f"{path}: line {first}: sequence before the first FASTA header; "
                            "a FASTA file starts with a '>name' line"
                        )
                else:
                    chunks.append(data)
        except _gzip_error_types() as e:
            at = f" in record {name!r}" if name is not None else ""
            raise DataError(f"{path}: truncated or corrupt gzip data{at} after line {lineno} ({e})") from None
    if name is None:
        raise DataError(f"{path}: no FASTA header ('>name' line) found; the file holds no records")
    yield _finish(path, name, desc, header_line, chunks, seen)
