"""Input files and delimited text tables: the one reader behind every table dnalm reads.

Variant tables and VCFs (``score-variants --variants``), mutant tables (``dms --variants``), label files
(``essentiality --labels``) and sequence CSVs (``embed``/``predict --csv``, ``finetune --train/--dev/--test``)
all go through :func:`read_lines` and :func:`read_table`. Conventions (owned here, stated once):

- **Positions in messages are 1-based**: ``line L`` is the physical line of the file (comments, blank
  lines and the header count), ``column C`` the character in that line. FASTA messages follow the same
  rule (``position P (1-based)`` within a record; see :mod:`dnalm.data.fasta`).
- **Sources**: a path, ``-`` for standard input, or a pipe such as bash's ``<(zcat x.gz)`` (``/dev/fd/N``).
  A file is read once, whole. A missing file, a directory and an empty file each get their own message.
- **Line ends**: LF, CRLF or CR (old Mac spreadsheets).
- **Compression**: gzip or bgzip, detected from the first bytes (not the extension). A truncated or corrupt
  stream is an error naming the last complete line.
- **Encodings accepted**: UTF-8 (an optional byte-order mark is dropped) and UTF-16 with a byte-order mark.
  Comment lines (starting with ``#``) may hold any bytes: they are never interpreted. A byte that is not
  UTF-8 anywhere else (Latin-1 / Windows-1252 text, for example) is an error naming its line and column;
  a NUL byte means a binary file and is an error too. (FASTA headers and GFF/GTF attributes, read by their
  own readers, are free text: a byte that is not UTF-8 there is replaced, never fatal.)
- **Tables**: lines starting with ``#`` are comments and blank lines are skipped. The header is the first
  other line, except that a ``#name<delim>name...`` line (``#`` directly followed by a name) right before
  it, with as many fields as that line, is taken as the header (``#CHROM``/``#chrom`` style). The delimiter
  is the first of tab, ``;`` and ``,`` found in the header (a header without one is a single column).
  Fields may be double-quoted as in CSV; surrounding spaces are stripped. A row with a different number of
  fields than the header, duplicate column names and a table without data rows are errors.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import os
import stat
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from dnalm.data.errors import DataError, listing  # noqa: F401 (listing: re-exported for the table readers)

STDIN = "-"
_GZIP_MAGIC = b"\x1f\x8b"


def gzip_error_types() -> tuple[type[BaseException], ...]:
    """What a truncated or corrupt gzip stream raises while it is read."""
    return (EOFError, gzip.BadGzipFile, zlib.error)


def display_name(path: str | Path) -> str:
    return "<stdin>" if str(path) == STDIN else str(path)


def is_regular_file(path: str | Path) -> bool:
    """A plain file on disk (not standard input, a pipe or a device)."""
    return str(path) != STDIN and Path(path).is_file()


def check_input_file(path: str | Path, what: str = "input file", allow_stream: bool = False) -> Path:
    """DataError unless ``path`` is a readable, non-empty file (or, with ``allow_stream``, a pipe or ``-``).

    The messages tell a missing file, a directory and an empty file apart."""
    if str(path) == STDIN:
        if allow_stream:
            return Path(path)
        raise DataError(f"{what}: '-' (standard input) is not accepted here; give a file path")
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise DataError(f"{p}: {what} not found (no such file)") from None
    except NotADirectoryError:
        raise DataError(f"{p}: {what} not found (a parent of it is a file, not a directory)") from None
    except PermissionError:
        raise DataError(f"{p}: cannot read the {what} (permission denied)") from None
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"{p}: is a directory; expected the {what} (a file)")
    if stat.S_ISREG(st.st_mode):
        if st.st_size == 0:
            raise DataError(f"{p}: empty file; expected the {what}")
    elif not (allow_stream and (stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISSOCK(st.st_mode))):
        raise DataError(f"{p}: not a regular file; expected the {what}")
    if not os.access(p, os.R_OK):
        raise DataError(f"{p}: cannot read the {what} (permission denied)")
    return p


def read_bytes(path: str | Path, what: str = "input file") -> bytes:
    """The whole content of a file, ``-`` or a pipe, gunzipped when it starts with the gzip magic."""
    check_input_file(path, what, allow_stream=True)
    name = display_name(path)
    try:
        if str(path) == STDIN:
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as fh:
                data = fh.read()
    except OSError as e:
        raise DataError(f"{name}: cannot read the {what} ({e.strerror or e})") from None
    if not data:
        raise DataError(f"{name}: the {what} is empty")
    if data[:2] == _GZIP_MAGIC:
        out = []
        try:
            with gzip.GzipFile(fileobj=_BytesReader(data)) as gz:
                while chunk := gz.read1(1 << 20):
                    out.append(chunk)
        except gzip_error_types() as e:
            got = b"".join(out)
            lines = got.count(b"\n")
            raise DataError(
                f"{name}: truncated or corrupt gzip data after line {lines} of the {what} ({e}); "
                "the file is incomplete, download or compress it again"
            ) from None
        data = b"".join(out)
        if not data:
            raise DataError(f"{name}: the {what} is empty (an empty gzip stream)")
    return data


class _BytesReader:
    """A minimal binary file object over bytes (``io.BytesIO`` without the copy)."""

    def __init__(self, data: bytes):
        self._view, self._pos = memoryview(data), 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._view) if n is None or n < 0 else min(len(self._view), self._pos + n)
        out = bytes(self._view[self._pos : end])
        self._pos = end
        return out

    def readable(self) -> bool:
        return True


def decode_lines(data: bytes, name: str, what: str = "input file") -> list[str]:
    """Bytes -> lines (line i+1 of the file is element i), applying the encoding rules above."""
    if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError as e:
            raise DataError(f"{name}: the {what} starts with a UTF-16 byte-order mark but is not UTF-16 ({e.reason})") from None
        return _split(text.lstrip("\ufeff"))
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise DataError(f"{name}: line {line}: a NUL byte: this is a binary file, not a text {what}")
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return _split(data.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    lines = []
    for i, raw in enumerate(data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"), 1):
        if raw.startswith(b"#"):  # a comment: never interpreted, any bytes allowed
            lines.append(raw.decode("utf-8", errors="replace"))
            continue
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            col = len(raw[: e.start].decode("utf-8", errors="replace")) + 1
            raise DataError(
                f"{name}: line {i}, column {col}: byte 0x{raw[e.start]:02x} is not UTF-8 text; dnalm reads "
                f"tables as UTF-8 (or UTF-16 with a byte-order mark): save the {what} as UTF-8"
            ) from None
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _split(text: str) -> list[str]:
    # LF, CRLF and old-Mac CR line ends; not splitlines(): \x0c or \u2028 must not start new lines
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def read_lines(path: str | Path, what: str = "input file") -> list[str]:
    """The decoded lines of a text file (plain or gzip, a path, ``-`` or a pipe); line i+1 is element i."""
    return decode_lines(read_bytes(path, what), display_name(path), what)


# ------------------------------------------------------------------------------------------ tables


@dataclass
class Table:
    """A delimited table: ``header`` names, ``rows`` of stripped string fields, ``lines`` the 1-based file
    line of each row."""

    name: str  # the file, as shown in messages
    what: str
    header: list[str]
    rows: list[list[str]]
    lines: list[int]
    header_line: int
    delimiter: str | None
    _lower: list[str] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._lower = [h.lower() for h in self.header]

    def __len__(self) -> int:
        return len(self.rows)

    def columns_text(self) -> str:
        return ", ".join(self.header) or "none"

    def column(
        self, explicit: str | None, candidates: Sequence[str], what: str, required: bool = True, option: str = ""
    ) -> int | None:
        """Index of the column named ``explicit`` (exact, else case-insensitive), else of the first of
        ``candidates`` present (case-insensitive); DataError naming the columns when none is found."""
        if explicit is not None:
            if explicit in self.header:
                return self.header.index(explicit)
            if explicit.lower() in self._lower:
                return self._lower.index(explicit.lower())
            flag = f"{option} " if option else ""
            raise DataError(f"{self.name}: no column {flag}{explicit!r} for the {what} (columns: {self.columns_text()})")
        for c in candidates:
            key = c.lower().lstrip("#")
            if key in self._lower:
                return self._lower.index(key)
        if required:
            raise DataError(
                f"{self.name}: no {what} column (looked for {', '.join(candidates)}; columns: {self.columns_text()})"
                + (f"; name it with {option}" if option else "")
            )
        return None

    def values(self, j: int) -> list[str]:
        return [r[j] for r in self.rows]

    def as_dicts(self) -> list[dict[str, str]]:
        return [dict(zip(self.header, r)) for r in self.rows]


def _delimiter(line: str, delimiters: Sequence[str]) -> str | None:
    return next((d for d in delimiters if d in line), None)


def _fields(line: str, delim: str | None) -> list[str]:
    if delim is None:
        return [line.strip()]
    return [f.strip() for f in next(csv.reader([line], delimiter=delim))]


def parse_table(
    lines: list[str], name: str, what: str = "table", delimiters: Sequence[str] = ("\t", ";", ",")
) -> Table:
    """Split decoded lines into a :class:`Table` (see the module docstring for the rules)."""
    first = next((i for i, ln in enumerate(lines) if ln.strip() and not ln.startswith("#")), None)
    if first is None:
        raise DataError(f"{name}: no header line: the {what} holds only comments or blank lines")
    head_idx, head = first, lines[first]
    prev = next((i for i in range(first - 1, -1, -1) if lines[i].strip()), None)
    if prev is not None:
        cand = lines[prev]
        if cand.startswith("#") and cand[1:2] not in ("", "#", " ", "\t"):
            d = _delimiter(cand[1:], delimiters)
            if d is not None and len(_fields(cand[1:], d)) == len(_fields(head, d)) > 1:
                head_idx, head = prev, cand[1:]
    delim = _delimiter(head, delimiters)
    try:
        header = _fields(head, delim)
    except csv.Error as e:
        raise DataError(f"{name}: line {head_idx + 1}: cannot split the header ({e})") from None
    seen: dict[str, int] = {}
    for j, h in enumerate(header):
        if h in seen:
            raise DataError(
                f"{name}: line {head_idx + 1}: column {h!r} appears twice (fields {seen[h] + 1} and {j + 1}) in the header"
            )
        seen[h] = j
    body = [(i + 1, ln) for i, ln in enumerate(lines) if i > head_idx and ln.strip() and not ln.startswith("#")]
    rows, nums, bad = [], [], []
    for lineno, ln in body:
        try:
            cols = _fields(ln, delim)
        except csv.Error as e:
            bad.append(f"line {lineno}: {e}")
            continue
        if len(cols) != len(header):
            bad.append(f"line {lineno}: {len(cols)} fields, the header (line {head_idx + 1}) has {len(header)}")
            continue
        rows.append(cols)
        nums.append(lineno)
    if bad:
        raise DataError(f"{name}: " + listing(bad, "malformed rows"))
    if not rows:
        raise DataError(f"{name}: no data rows: the {what} has a header (line {head_idx + 1}) and nothing under it")
    return Table(name, what, header, rows, nums, head_idx + 1, delim)


def read_table(path: str | Path, what: str = "table", delimiters: Sequence[str] = ("\t", ";", ",")) -> Table:
    """Read a delimited text table (see the module docstring); DataError naming the file and line."""
    return parse_table(read_lines(path, what), display_name(path), what, delimiters)
