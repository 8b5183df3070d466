"""The ``dnalm`` command line's parser and dispatch: one subcommand = one function (see dnalm/cli/base.py).

The subcommands live in modules by area, each function next to the arguments it declares.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

import torch

# each module registers its subcommands; this order is the order of `dnalm --help`
from dnalm.cli import apps, models, run, scaling  # noqa: F401, I001
from dnalm.cli.base import COMMANDS, UserError, user_error_types
from dnalm.models import list_presets
from dnalm.outputs import check_output
from dnalm.runtime import PRECISION_COMPUTE, apply_threads, choose_threads, computing, matmul_shapes, resolve_precision
from dnalm.scaling.memory import check_weights_fit
from dnalm.version import __version__


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage is one ``--help`` away)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dnalm",
        description="Build DNA language models from scratch and put them to work.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dnalm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, fn, help_, description, args in COMMANDS:
        p = sub.add_parser(
            name, help=help_, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
        outputs = {}
        for a in args:
            action = p.add_argument(*a.flags, **a.kwargs)
            if a.output:
                outputs[action.dest] = (a.output, "/".join(a.flags))
        p.set_defaults(_fn=fn, _outputs=outputs)
    return parser


# commands that score or embed with a model's weights: a preset name there means random weights
_USES_WEIGHTS = {"eval", "generate", "score", "score-variants", "essentiality", "dms", "embed", "finetune", "boundaries"}


def _check_outputs(args: argparse.Namespace) -> None:
    for dest, (kind, flag) in getattr(args, "_outputs", {}).items():
        value = getattr(args, dest, None)
        if value is not None and str(value) != "-":
            check_output(value, kind, f"{flag} output")


def _warn_untrained(args: argparse.Namespace) -> None:
    model = getattr(args, "model", None)
    if args.command in _USES_WEIGHTS and model in list_presets() and not Path(model).exists():
        print(f"dnalm {args.command}: warning: {model} is a preset, built with random (untrained) weights; its "
              "scores mean nothing. Pass a run or checkpoint directory to use trained weights.", file=sys.stderr)


# commands that run a model outside training: --precision and --threads apply around the whole command
_INFERENCE = {"eval", "score", "score-variants", "essentiality", "dms", "embed"}


@contextlib.contextmanager
def _runtime(args: argparse.Namespace):
    """Threads and autocast for an inference command; yields the line that says what was chosen."""
    if args.command not in _INFERENCE or not hasattr(args, "precision"):
        yield None
        return
    threads = choose_threads(args.threads, "--threads")
    apply_threads(threads)
    device = torch.device(getattr(args, "device", None) or "cpu")
    shapes = None
    if args.precision == "auto" and device.type == "cpu":
        shapes = _model_shapes(args)
    try:
        precision = resolve_precision(args.precision, device, shapes, where="--precision")
    except ValueError as e:
        raise UserError(str(e)) from None
    # weights stored in bf16 (Evo as released): --precision fp32 computes each block in float32, bf16 in bf16,
    # auto in bf16 only where this CPU is fast in it (dnalm.runtime.half_compute)
    with precision.autocast(device.type), computing(PRECISION_COMPUTE.get(args.precision)):
        yield f"dnalm {args.command}: {precision.message()}; {threads.message()}"


def _model_shapes(args: argparse.Namespace) -> list[tuple[int, int, int]] | None:
    """The matmul shapes of the command's model, built on the meta device from its config (None if unknown)."""
    from dnalm.cli.run import model_config_of
    from dnalm.models.lm import meta_model

    try:
        config, _ = model_config_of(args.model)
        model = meta_model(config)
    except Exception:  # the command itself reports a bad model; the benchmark then uses generic shapes
        return None
    tokens = (getattr(args, "batch_size", None) or 8) * min(config.max_len, 1024)
    return matmul_shapes(model, tokens)


def _check_weights(args: argparse.Namespace) -> None:
    """A model whose weights alone exceed the memory available is refused first, in about a second (the
    config and the analytic parameter count; nothing is built). Each command then checks its whole need."""
    for dest in ("model", "classifier", "src"):
        value = getattr(args, dest, None)
        if isinstance(value, str):
            gib = getattr(args, "max_memory", None)  # dnalm score --max-memory GIB
            check_weights_fit(value, f"dnalm {args.command}", None if gib is None else int(gib * 2**30))
            return


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. User mistakes: one line on stderr, exit 2 (bad syntax included); an unexpected
    exception: one line, exit 1 (``DNALM_DEBUG=1`` shows the traceback)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_fn", None):
        parser.print_help()
        return 2
    try:
        _check_outputs(args)
        _check_weights(args)
        with _runtime(args) as chosen:
            code = int(args._fn(args) or 0)
        _warn_untrained(args)  # after the results, so that an error stays one line
        if chosen:
            print(chosen, file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("dnalm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0
    except user_error_types() as e:
        print(f"dnalm {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # an input or output the readers and writers did not name (permissions, devices)
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"dnalm {args.command}: error: {where}{e.strerror or _one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug, not a user mistake: still one line, exit 1
        if os.environ.get("DNALM_DEBUG"):
            raise
        print(f"dnalm {args.command}: internal error: {type(e).__name__}: {_one_line(e)} "
              "(please report it; DNALM_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
