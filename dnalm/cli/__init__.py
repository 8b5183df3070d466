"""The ``dnalm`` command line: one subcommand = one function (see dnalm/cli/base.py).

The subcommands live in modules by area, each function next to the arguments it declares; the parser and
the dispatch are in :mod:`dnalm.cli.dispatch`. :func:`main` first runs :func:`dnalm.cli.preflight.preflight`,
which needs no PyTorch: a model whose weights alone cannot fit in memory is refused before ``import torch``
(about 1.5-2 s on a small machine) has even started.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def allocator_defaults() -> None:
    """Ask PyTorch to put large CPU tensors on transparent huge pages (``THP_MEM_ALLOC_ENABLE=1``) unless
    the variable is already set (``THP_MEM_ALLOC_ENABLE=0`` turns it off). PyTorch reads it once, at its
    first allocation, so this must run before ``import torch``. Why: at long windows a step allocates
    gigabytes of fresh tensors and the kernel faults them in 4 KiB at a time; with huge pages a 65,536-token
    HyenaDNA block trained 1.4x faster here, with no change at 1k-4k and no more memory
    (``benchmarks/bench_alloc.py``, BENCHMARKS.md "Blocks"). Without kernel support PyTorch warns once."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand (see :func:`dnalm.cli.dispatch.main`) after the torch-free memory preflight."""
    from dnalm.cli.preflight import preflight

    code = preflight(sys.argv[1:] if argv is None else list(argv))
    if code is not None:
        return code
    allocator_defaults()
    from dnalm.cli.dispatch import main as dispatch_main

    return dispatch_main(argv)


def __getattr__(name: str) -> Any:  # build_parser and the rest of the dispatch module, imported on first use
    import importlib
    from pathlib import Path

    if name.startswith("__") or (Path(__file__).parent / f"{name}.py").exists():
        raise AttributeError(name)  # a submodule: the import system loads it
    return getattr(importlib.import_module("dnalm.cli.dispatch"), name)
