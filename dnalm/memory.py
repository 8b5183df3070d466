"""How much memory this process may still use, and the one-line refusal when a job needs more.

Every command that builds a model estimates what it will need (``dnalm.scaling.memory``) and calls
:func:`require` before anything large is allocated: a 40B model on a 24 GiB machine stops in about a second
with one line naming the need and the limit, instead of swapping or being killed by the kernel.

The limit is what the kernel reports as available (``MemAvailable`` in /proc/meminfo), capped by the
process's cgroup limit (v2 ``memory.max`` minus ``memory.current``, or v1 ``memory.limit_in_bytes`` minus
``memory.usage_in_bytes``), plus what this process already holds of the estimate (its resident set: the
Python + PyTorch runtime, at least :data:`RUNTIME_BYTES`, and the weights of a model already loaded). ``DNALM_MAX_MEMORY`` (GiB) or a command's ``--max-memory`` replaces it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["RUNTIME_BYTES", "NotEnoughMemoryError", "MemoryNeed", "available_memory", "memory_limit", "require", "gib",
           "resident_bytes", "weight_file_bytes", "require_weights", "WEIGHT_SUFFIXES"]

RUNTIME_BYTES = 600 * 2**20  # the Python + PyTorch process itself (counted in every estimate)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")  # files a checkpoint's weights are read from
WEIGHTS_HINT = "the model's weights alone do not fit: use a machine with more memory or a smaller model"


class NotEnoughMemoryError(Exception):
    """A job would need more memory than this machine (or cgroup) offers; nothing large was allocated."""


@dataclass
class MemoryNeed:
    """An estimated peak resident memory (bytes) with the terms it adds up."""

    total: int
    parts: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        return gib(self.total)


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def available_memory() -> int | None:
    """Bytes this process can still use: MemAvailable, capped by a cgroup v2/v1 limit; None if unknown."""
    return _available()[0]


def _available() -> tuple[int | None, str]:
    avail, source = None, "MemAvailable"
    meminfo = _read("/proc/meminfo") or ""
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            avail = int(line.split()[1]) * 1024
            break
    if avail is None:
        try:
            avail, source = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free pages"
        except (ValueError, OSError, AttributeError):
            return None, "unknown"
    for limit_file, usage_file, name in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "cgroup memory.max"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes",
         "cgroup memory.limit_in_bytes"),
    ):
        limit, usage = _read(limit_file), _read(usage_file)
        if limit is None or usage is None or not usage.isdigit():
            continue
        if limit.isdigit() and int(limit) < 2**60 and int(limit) - int(usage) < avail:
            avail, source = int(limit) - int(usage), name
        break
    return avail, source


def memory_limit(max_memory: int | None = None) -> tuple[int | None, str]:
    """(bytes a job may use in all, where that number comes from). ``max_memory`` (bytes) wins, then the
    environment variable ``DNALM_MAX_MEMORY`` (GiB), then what the system reports plus the runtime already
    resident (the estimates count it). None when nothing is known (no check is made then)."""
    if max_memory is not None:
        return int(max_memory), "--max-memory"
    env = os.environ.get("DNALM_MAX_MEMORY")
    if env:
        try:
            return int(float(env) * 2**30), "DNALM_MAX_MEMORY"
        except ValueError:
            raise NotEnoughMemoryError(f"DNALM_MAX_MEMORY={env!r} is not a number of GiB") from None
    avail, source = _available()
    if avail is None:
        return None, source
    return avail + max(RUNTIME_BYTES, resident_bytes()), f"available: {source}"


def resident_bytes() -> int:
    """What this process holds now (its resident set, /proc/self/statm; 0 if unknown). An estimate counts the
    runtime and, once a model is loaded, its weights: both are resident already, so the limit adds them."""
    statm = _read("/proc/self/statm")
    try:
        return int(statm.split()[1]) * os.sysconf("SC_PAGE_SIZE") if statm else 0
    except (ValueError, IndexError, OSError):
        return 0


def require(need: MemoryNeed, what: str, max_memory: int | None = None, hint: str = "") -> MemoryNeed:
    """Raise :class:`NotEnoughMemoryError` (one line: the need, its two largest terms, the limit and its
    source, ``hint``) if ``need`` exceeds the limit (:func:`memory_limit`); return ``need`` otherwise."""
    limit, source = memory_limit(max_memory)
    if limit is None or need.total <= limit:
        return need
    terms = sorted(((v, k) for k, v in need.parts.items() if k != "runtime"), reverse=True)[:2]
    detail = ", ".join(f"{k} {gib(v)}" for v, k in terms)
    raise NotEnoughMemoryError(
        f"{what} needs about {need} ({detail}), but only {gib(limit)} is available ({source})"
        + (f"; {hint}" if hint else "")
    )


def weight_file_bytes(path: str | Path) -> int:
    """Bytes of the weight files of a checkpoint directory (``WEIGHT_SUFFIXES`` and ``*.pt.partN`` pieces; a run
    directory's ``model/``); 0 for anything else. Every loader holds at least these bytes in memory: the
    weights as stored (kept so, memory-mapped, by the formats that keep stored dtypes) or the file read while
    a float32 copy is built."""
    p = Path(path)
    try:
        if not p.is_dir():
            return 0
        files = [f for f in p.iterdir() if f.is_file() and (f.suffix in WEIGHT_SUFFIXES or ".pt.part" in f.name)]
        if not files:
            return weight_file_bytes(p / "model") if (p / "model").is_dir() else 0
        return sum(f.stat().st_size for f in files)
    except OSError:
        return 0


def require_weights(weights: dict[str, int], what: str, described: str, max_memory: int | None = None) -> MemoryNeed:
    """The first check of every command with a model: the runtime plus ``weights`` (terms in bytes) against the
    limit; ``described`` says what the weights are (e.g. "6.48B parameters, float32"). Shared by the full
    check (dnalm.scaling.memory) and the torch-free preflight (dnalm.cli.preflight): one message."""
    alone = MemoryNeed(RUNTIME_BYTES + sum(weights.values()), {"runtime": RUNTIME_BYTES, **weights})
    return require(alone, f"{what} ({described})", max_memory, WEIGHTS_HINT)
