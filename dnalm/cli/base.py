"""What every ``dnalm`` subcommand module uses: one subcommand = one function.

Each subcommand is a function decorated with ``@command(...)`` that lists its arguments next to it.
User mistakes raise :class:`UserError` (or a known ValueError subclass) and become one clear message on
stderr with exit code 2; an interrupt exits with 130. Nothing here holds model or training logic.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable

from dnalm.checkpoint import CheckpointError
from dnalm.config import ConfigError
from dnalm.data.errors import DataError
from dnalm.tokenizer import InvalidSequenceError


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


@dataclass
class _Arg:
    flags: tuple[str, ...]
    kwargs: dict[str, Any]


def arg(*flags: str, **kwargs: Any) -> _Arg:
    return _Arg(flags, kwargs)


COMMANDS: list[tuple[str, Callable[[argparse.Namespace], int | None], str, str, list[_Arg]]] = []


def command(name: str, help: str, *args: _Arg, description: str | None = None):
    """Register the decorated function as subcommand ``name``."""

    def wrap(fn: Callable[[argparse.Namespace], int | None]):
        COMMANDS.append((name, fn, help, description or fn.__doc__ or help, list(args)))
        return fn

    return wrap


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's mistake: one line on stderr, exit code 2."""
    return (UserError, ConfigError, CheckpointError, InvalidSequenceError, DataError)
