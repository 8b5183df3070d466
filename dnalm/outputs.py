"""Output files and directories: checked before any work, written atomically, one clear error.

Every file or directory a dnalm command writes goes through this module:

- :func:`check_output` runs before any model work and fails fast, naming the requested path, when the
  output cannot be made: a directory where a file is wanted (or a file where a directory is wanted), a
  path under a regular file, or a parent directory this process cannot write (read-only).
- :func:`atomic_write_bytes`, :func:`atomic_write_text`, :class:`AtomicWriter` (a text file) and
  :func:`atomic_dir` (a directory) write into a temporary sibling ``.NAME.tmp-PID-*``, fsync it and rename
  it into place, so a reader sees the old output or the complete new one, never half of one.
- Inside :func:`output_group` the renames wait until the block ends without an error, so the files of one
  command (a TSV and its ROC plot, an ``.npy`` and its ``.json``) appear together or not at all.
- A failed write (full disk, read-only file system, permission) raises :class:`OutputError` naming the
  requested output, never the temporary name. The temporary file and any parent directory created for it
  are removed: nothing is left behind.
- A killed writer can leave ``.NAME.tmp-PID-*`` behind; the next write of NAME removes those whose process
  is gone (on this machine), and any ``.NAME.tmp-*`` without a PID (written by older dnalm versions).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator


class OutputError(ValueError):
    """An output that cannot be written; the message names the requested path and the reason."""


# ------------------------------------------------------------------------------------------ checks


def _existing_ancestor(path: Path) -> Path:
    p = path.parent
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output(path: str | Path, kind: str = "file", what: str = "output") -> Path:
    """Fail early (OutputError naming ``path``) when ``path`` cannot be written as a ``kind`` ('file' or
    'dir'). Creates nothing."""
    path = Path(path)
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir' (got {kind!r})")
    if kind == "file" and path.is_dir():
        raise OutputError(f"{path}: is a directory; the {what} is a file, so give a file path")
    if kind == "dir" and path.exists() and not path.is_dir():
        raise OutputError(f"{path}: exists and is a file; the {what} is a directory, so give a directory path")
    anc = path.parent if path.parent.exists() else _existing_ancestor(path)
    if not anc.is_dir():
        raise OutputError(f"{path}: cannot create the {what}: {anc} is a file, not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write the {what}: {anc} is not writable (read-only or permission denied)")
    return path


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def _is_write_error(e: BaseException, tmp: Path) -> bool:
    """An error raised while writing into ``tmp`` (not, say, while reading an input inside the block)."""
    if isinstance(e, OSError):
        names = [getattr(e, "filename", None), getattr(e, "filename2", None)]
        return all(n is None for n in names) or any(n is not None and str(n).startswith(str(tmp)) for n in names)
    return type(e).__name__ == "SafetensorError"  # safetensors reports I/O errors with its own type


# ------------------------------------------------------------------------------------------ temporaries

# ".NAME.tmp-PID-xxxx" (this module) or ".NAME.tmp-xxxx" (older dnalm versions: no PID, always stale)
_TMP = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?:(?P<pid>\d+)-)?")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def clean_stale(path: Path) -> list[Path]:
    """Remove ``.NAME.tmp-PID-*`` / ``.NAME.old-PID-*`` siblings of ``path`` left by dead processes."""
    removed = []
    parent = path.parent
    if not parent.is_dir():
        return removed
    with contextlib.suppress(OSError):
        for p in parent.iterdir():
            m = _TMP.match(p.name)
            if m and m["name"] == path.name and (m["pid"] is None or not _alive(int(m["pid"]))):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        p.unlink()
                removed.append(p)
    return removed


def is_temporary(path: str | Path) -> bool:
    """True for the name of an atomic writer's temporary (``.NAME.tmp-*``); never open one as an output."""
    return bool(re.match(r"^\..+\.(tmp|old)-", Path(path).name))


def _make_parents(path: Path) -> list[Path]:
    """mkdir -p the parent of ``path``; returns the directories created (deepest last)."""
    missing = []
    p = path.parent
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            pass
        except OSError as e:
            _remove_dirs([m for m in missing if m.exists()])
            raise OutputError(f"{path}: cannot create directory {d}: {_reason(e)}") from None
    return list(reversed(missing))


def _remove_dirs(dirs: list[Path]) -> None:
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            d.rmdir()  # only if still empty


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(tmp: Path) -> None:
    files = [tmp] if tmp.is_file() else [f for f in tmp.rglob("*") if f.is_file()]
    for f in files:
        with open(f, "rb+") as fh:
            os.fsync(fh.fileno())


def _install(tmp: Path, path: Path) -> None:
    """Rename the finished temporary into place (a directory replaces the old one in two renames)."""
    old = None
    if tmp.is_dir() and path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}-{tmp.name[-8:]}")
        os.replace(path, old)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _discard(tmp: Path) -> None:
    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            tmp.unlink()


# ------------------------------------------------------------------------------------------ groups


class _Group:
    def __init__(self) -> None:
        self.staged: list[tuple[Path, Path, list[Path]]] = []  # (tmp, final path, directories created)


_GROUP: contextvars.ContextVar[_Group | None] = contextvars.ContextVar("dnalm_output_group", default=None)


@contextlib.contextmanager
def output_group() -> Iterator[None]:
    """Every atomic write inside the block is renamed into place only when the block ends without an
    error; on an error every staged temporary (and directory created for it) is removed."""
    if _GROUP.get() is not None:  # nested: the outer group decides
        yield
        return
    group = _Group()
    token = _GROUP.set(group)
    try:
        yield
    except BaseException:
        for tmp, _, made in group.staged:
            _discard(tmp)
            _remove_dirs(made)
        raise
    finally:
        _GROUP.reset(token)
    done = 0
    try:
        for tmp, path, _ in group.staged:
            _install(tmp, path)
            done += 1
    except OSError as e:
        for tmp, _, made in group.staged[done:]:
            _discard(tmp)
            _remove_dirs(made)
        raise OutputError(f"{group.staged[done][1]}: cannot write: {_reason(e)}") from None


def _finish(tmp: Path, path: Path, made: list[Path]) -> None:
    """Install ``tmp`` now, or stage it when an output group is open."""
    group = _GROUP.get()
    if group is not None:
        group.staged.append((tmp, path, made))
        return
    _install(tmp, path)


# ------------------------------------------------------------------------------------------ writers


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``path`` in one rename (see the module
    docstring). Write errors inside the block become OutputError naming ``path``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: exists and is a file; the output is a directory")
    made = _make_parents(path)
    clean_stale(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
    except OSError as e:
        _remove_dirs(made)
        raise OutputError(f"{path}: cannot write: {_reason(e)}") from None
    try:
        yield tmp
        _fsync_tree(tmp)
        _finish(tmp, path, made)
    except BaseException as e:
        _discard(tmp)
        _remove_dirs(made)
        if isinstance(e, Exception) and _is_write_error(e, tmp):
            raise OutputError(f"{path}: cannot write: {_reason(e)}") from None
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write a file via a temporary sibling, fsync and a rename: readers see the old file or the new one."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; the output is a file, so give a file path")
    made = _make_parents(path)
    clean_stale(path)
    tmp: Path | None = None
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
        tmp = Path(name)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _finish(tmp, path, made)
    except BaseException as e:
        if tmp is not None:
            _discard(tmp)
        _remove_dirs(made)
        if isinstance(e, OSError):
            raise OutputError(f"{path}: cannot write: {_reason(e)}") from None
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a UTF-8 text file atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode())


class AtomicWriter:
    """A text file that appears under its final name only when fully written.

    Use as a context manager: text goes to ``.NAME.tmp-*`` beside the target; on a clean exit the file is
    flushed, fsynced and renamed (or staged, inside :func:`output_group`); on an exception (including
    KeyboardInterrupt) it is deleted. Write errors become OutputError naming the target.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fh: IO[str] | None = None
        self._tmp: Path | None = None
        self._made: list[Path] = []

    def __enter__(self) -> IO[str]:
        if self.path.is_dir():
            raise OutputError(f"{self.path}: is a directory; the output is a file, so give a file path")
        self._made = _make_parents(self.path)
        clean_stale(self.path)
        try:
            fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.tmp-{os.getpid()}-", dir=self.path.parent)
        except OSError as e:
            _remove_dirs(self._made)
            raise OutputError(f"{self.path}: cannot write: {_reason(e)}") from None
        self._tmp = Path(name)
        self._fh = os.fdopen(fd, "w", encoding="utf-8")
        return self._fh

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self._fh is not None and self._tmp is not None
        error: BaseException | None = exc
        try:
            if exc_type is None:
                self._fh.flush()
                os.fsync(self._fh.fileno())
            self._fh.close()
            if exc_type is None:
                _finish(self._tmp, self.path, self._made)
                return False
        except OSError as e:
            error = e
            with contextlib.suppress(OSError):
                self._fh.close()
        _discard(self._tmp)
        _remove_dirs(self._made)
        if isinstance(error, OSError) and (exc_type is None or _is_write_error(error, self._tmp)):
            raise OutputError(f"{self.path}: cannot write: {_reason(error)}") from None
        return False
