"""Optional ``torch.compile`` (inductor) of model blocks, off by default.

Set ``DNALM_COMPILE=1`` in the environment to compile each HyenaDNA block's forward (and so its backward)
the first time it runs at a new shape; unset it, or set ``DNALM_COMPILE=0``, for plain eager PyTorch, the
default. Eager is always the fallback: if compilation fails (no C++ compiler, an unsupported op), dynamo's
``suppress_errors`` runs that code eagerly. Compiling costs minutes of CPU time per new input length on a
small machine and gained about 7% at 4k tokens here (BENCHMARKS.md, Blocks), so it pays only for long
training runs at a fixed length.
"""

from __future__ import annotations

import os
from typing import Callable

ENV = "DNALM_COMPILE"


def compile_enabled() -> bool:
    """True when ``DNALM_COMPILE`` is set to 1 / true / yes / on."""
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def maybe_compile(fn: Callable) -> Callable:
    """``torch.compile(fn)`` when :func:`compile_enabled`, else ``fn`` unchanged."""
    if not compile_enabled():
        return fn
    import torch
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True  # fall back to eager instead of failing
    return torch.compile(fn)
