"""The ``dnalm`` command line: one subcommand = one function (see dnalm/cli/base.py).

The subcommands live in modules by area, each function next to the arguments it declares.
"""

from __future__ import annotations

import argparse
import sys

# each module registers its subcommands; this order is the order of `dnalm --help`
from dnalm.cli import apps, models, run, scaling  # noqa: F401, I001
from dnalm.cli.base import COMMANDS, user_error_types
from dnalm.version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dnalm",
        description="Build DNA language models from scratch and put them to work.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dnalm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, fn, help_, description, args in COMMANDS:
        p = sub.add_parser(
            name, help=help_, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
        for a in args:
            p.add_argument(*a.flags, **a.kwargs)
        p.set_defaults(_fn=fn)
    return parser


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
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0
    except user_error_types() as e:
        print(f"dnalm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"dnalm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
