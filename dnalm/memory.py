"""How much memory this process may still use, and the one-line refusal when a job needs more.

Every command that builds a model estimates what it will need (``dnalm.scaling.memory``) and calls
:func:`require` before anything large is allocated: a 40B model on a 24 GiB machine stops in about a second
with one line naming the need and the limit, instead of swapping or being killed by the kernel.

The limit is what the kernel reports as available (``MemAvailable`` in /proc/meminfo), capped by the
process's cgroup limit (v2 ``memory.max`` minus ``memory.current``, or v1 ``memory.limit_in_bytes`` minus
``memory.usage_in_bytes``), plus what this process already holds of the estimate (the Python + PyTorch
runtime, :data:`RUNTIME_BYTES`). ``DNALM_MAX_MEMORY`` (GiB) or a command's ``--max-memory`` replaces it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["RUNTIME_BYTES", "NotEnoughMemoryError", "MemoryNeed", "available_memory", "memory_limit", "require", "gib"]

RUNTIME_BYTES = 600 * 2**20  # the Python + PyTorch process itself (counted in every estimate)


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
    return avail + RUNTIME_BYTES, f"available: {source}"


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
