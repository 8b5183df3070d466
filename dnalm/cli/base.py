"""What every ``dnalm`` subcommand module uses: one subcommand = one function.

Each subcommand is a function decorated with ``@command(...)`` that lists its arguments next to it.
User mistakes raise :class:`UserError` (or a known ValueError subclass) and become one clear message on
stderr with exit code 2; an interrupt exits with 130. Nothing here holds model or training logic.

Output arguments are declared with ``output="file"`` or ``output="dir"``; ``main`` checks each given one
(:func:`dnalm.outputs.check_output`) before the command starts, so a path that cannot be written fails in
a second, not after the model ran. Counts and rates use :func:`positive_int` / :func:`positive_float`;
sequences longer than the model are handled by the shared :data:`LONG_INPUTS` options.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Callable

from dnalm.checkpoint import CheckpointError
from dnalm.config import ConfigError
from dnalm.data.errors import DataError
from dnalm.memory import NotEnoughMemoryError
from dnalm.outputs import OutputError
from dnalm.runtime import PRECISIONS
from dnalm.tokenizer import InvalidSequenceError


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


@dataclass
class _Arg:
    flags: tuple[str, ...]
    kwargs: dict[str, Any]
    output: str | None = None  # "file" or "dir": a path the command writes, checked before it runs


def arg(*flags: str, output: str | None = None, **kwargs: Any) -> _Arg:
    return _Arg(flags, kwargs, output)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0 (got {text})")
    return value


# sequences longer than the model's context (embed, finetune, predict): an error unless one of these says
LONG_INPUTS = (
    arg("--crop", choices=["center", "left", "right"], default=None,
        help="keep one context-sized window of each longer sequence: its middle, its first or its last bases"),
    arg("--windows", action="store_true",
        help="tile each longer sequence into context-sized windows and pool over them"),
)


# precision and CPU threads (dnalm/runtime.py), for the commands that run a model
RUNTIME_ARGS = (
    arg("--precision", choices=PRECISIONS, default="auto",
        help="autocast dtype; auto: bf16 on a GPU that has it, on a CPU only where a short benchmark of the "
        "model's matmuls finds bf16 faster (cached per machine), else fp32. Weights stored in bf16 (Evo 1 / Evo 2 "
        "as released) stay bf16 in memory: fp32 computes each block in float32 (one block's float32 copy at a "
        "time), bf16 in bf16, auto in bf16 only on CPUs with native bf16 (AVX512-BF16/AMX)"),
    arg("--threads", type=positive_int, default=None,
        help="CPU threads (default: OMP_NUM_THREADS if set, else the usable cores not busy with other work)"),
)


COMMANDS: list[tuple[str, Callable[[argparse.Namespace], int | None], str, str, list[_Arg]]] = []


def command(name: str, help: str, *args: _Arg, description: str | None = None):
    """Register the decorated function as subcommand ``name``."""

    def wrap(fn: Callable[[argparse.Namespace], int | None]):
        COMMANDS.append((name, fn, help, description or fn.__doc__ or help, list(args)))
        return fn

    return wrap


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's mistake: one line on stderr, exit code 2."""
    return (UserError, ConfigError, CheckpointError, InvalidSequenceError, DataError, OutputError, NotEnoughMemoryError)
