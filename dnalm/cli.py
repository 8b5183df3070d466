"""The ``dnalm`` command line: one subcommand = one function.

Each subcommand is a function decorated with ``@command(...)`` that lists its arguments next to it.
User mistakes raise :class:`UserError` (or a known ValueError subclass) and become one clear message on
stderr with exit code 2; an interrupt exits with 130. Nothing here holds model or training logic.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, Callable


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


@dataclass
class _Arg:
    flags: tuple[str, ...]
    kwargs: dict[str, Any]


def arg(*flags: str, **kwargs: Any) -> _Arg:
    return _Arg(flags, kwargs)


_COMMANDS: list[tuple[str, Callable[[argparse.Namespace], int | None], str, str, list[_Arg]]] = []


def command(name: str, help: str, *args: _Arg, description: str | None = None):
    """Register the decorated function as subcommand ``name``."""

    def wrap(fn: Callable[[argparse.Namespace], int | None]):
        _COMMANDS.append((name, fn, help, description or fn.__doc__ or help, list(args)))
        return fn

    return wrap


# ------------------------------------------------------------------------------------------ commands
# (subcommands are defined below, each a single function)


# ------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dnalm",
        description="Build DNA language models from scratch and put them to work.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from dnalm import __version__

    parser.add_argument("--version", action="version", version=f"dnalm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, fn, help_, description, args in _COMMANDS:
        p = sub.add_parser(
            name, help=help_, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
        for a in args:
            p.add_argument(*a.flags, **a.kwargs)
        p.set_defaults(_fn=fn)
    return parser


def _user_error_types() -> tuple[type[BaseException], ...]:
    from dnalm.checkpoint import CheckpointError
    from dnalm.config import ConfigError
    from dnalm.tokenizer import InvalidSequenceError

    types: list[type[BaseException]] = [UserError, ConfigError, CheckpointError, InvalidSequenceError]
    try:
        from dnalm.data.errors import DataError

        types.append(DataError)
    except ImportError:
        pass
    return tuple(types)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_fn", None):
        parser.print_help()
        return 2
    try:
        return int(args._fn(args) or 0)
    except KeyboardInterrupt:
        print("dnalm: interrupted", file=sys.stderr)
        return 130
    except _user_error_types() as e:
        print(f"dnalm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"dnalm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
