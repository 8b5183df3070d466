"""The command line's first memory check, before ``import torch``: a model whose weights alone cannot fit is
refused in a fraction of a second, with the one line the full check prints and exit code 2.

``import torch`` alone takes 1.5-2 s of wall time on a small machine, so the check that runs after it
(``dnalm.scaling.memory.check_weights_fit``) cannot refuse ``dnalm score evo2-40b ...`` in under 2 s. This
module imports nothing but the standard library, :mod:`dnalm.memory` and the generated table
:mod:`dnalm.cli.preflight_table`, and knows a lower bound of every model argument's weights:

- a preset name: its parameter count (from the table), built in float32: exactly the full check's number;
- a directory: the bytes of its weight files (:func:`dnalm.memory.weight_file_bytes`), which every loader
  holds at least (the stored weights themselves, or the file while a float32 copy is built).

It refuses only when that lower bound does not fit, so it never refuses what the full check would accept;
everything else (other arguments, unreadable paths, ``--help``) passes through to the full command line,
whose checks are unchanged. The table (each preset's parameter count; each subcommand's positional arguments
and the options that take a value, to find the model argument without argparse) is generated from the live
code: ``python -m dnalm.cli.preflight --write`` rewrites it, and tests/test_cli_preflight.py checks that it
equals the live computation.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dnalm.memory import NotEnoughMemoryError, require_weights, weight_file_bytes

MODEL_DESTS = ("model", "classifier", "src")  # the arguments dnalm.cli.dispatch's weights check reads, in order


def _parse(argv: list[str], commands: dict, flags: dict) -> tuple[str, str, float | None] | None:
    """(command, model argument, --max-memory GiB or None) from the raw arguments, or None when they cannot
    be read with certainty without argparse (then the full command line decides)."""
    if not argv or argv[0].startswith("-") or argv[0] not in commands:
        return None
    command = argv[0]
    positionals, valued = commands[command]
    values: list[str] = []
    max_memory = None
    i = 1
    while i < len(argv):
        tok = argv[i]
        if tok == "--" or tok in ("-h", "--help"):
            return None
        if tok.startswith("-") and len(tok) > 1 and not _is_number(tok):
            flag, eq, value = tok.partition("=")
            if flag not in valued:
                if eq or flag not in flags.get(command, ()):
                    return None  # an abbreviation, a joined short option or a typo: argparse decides
                i += 1
                continue
            if not eq:
                if i + 1 >= len(argv):
                    return None
                value = argv[i + 1]
                i += 1
            if flag == "--max-memory":
                try:
                    max_memory = float(value)
                except ValueError:
                    return None
            i += 1
            continue
        values.append(tok)
        i += 1
    for dest in MODEL_DESTS:
        if dest in positionals:
            k = positionals.index(dest)
            return (command, values[k], max_memory) if k < len(values) else None
    return None


def _is_number(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


def preflight(argv: list[str]) -> int | None:
    """Refuse (one line on stderr, return 2) when the model argument's weights alone exceed the memory
    available; None to go on with the full command line."""
    try:
        from dnalm.cli.preflight_table import COMMANDS, FLAGS, PRESET_PARAMS

        found = _parse(argv, COMMANDS, FLAGS)
        if found is None:
            return None
        command, model, gib = found
        what = f"dnalm {command}"
        max_memory = None if gib is None else int(gib * 2**30)
        path = Path(model)
        if path.exists():
            stored = weight_file_bytes(path)
            if not stored:
                return None
            require_weights({"weight files": stored}, f"{what} with {model}", "weights as stored in its files",
                            max_memory)
        elif model in PRESET_PARAMS:
            n = PRESET_PARAMS[model]
            require_weights({"weights": n * 4}, f"{what} with {model}", f"{n / 1e9:.2f}B parameters, float32",
                            max_memory)
    except NotEnoughMemoryError as e:
        print(f"dnalm {argv[0]}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001 - the preflight only ever refuses; any doubt goes to the full checks
        return None
    return None


# ------------------------------------------------------------------------------------------ the table


def live_table() -> tuple[dict[str, int], dict[str, tuple[list[str], list[str]]], dict[str, list[str]]]:
    """(preset -> parameter count as the full check counts it, command -> (positional dests, options that
    take a value), command -> every option string), computed from the live code (imports torch)."""
    from dnalm.cli.dispatch import build_parser
    from dnalm.models import get_preset, list_presets
    from dnalm.scaling.flops import count_params

    presets = {name: int(count_params(get_preset(name))) for name in list_presets()}
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    commands: dict[str, tuple[list[str], list[str]]] = {}
    flags: dict[str, list[str]] = {}
    for name, p in sorted(sub.choices.items()):
        positionals = [a.dest for a in p._actions if not a.option_strings]
        valued = sorted(f for a in p._actions if a.option_strings and a.nargs != 0 for f in a.option_strings)
        commands[name] = (positionals, valued)
        flags[name] = sorted(f for a in p._actions for f in a.option_strings)
    return presets, commands, flags


def table_source() -> str:
    presets, commands, flags = live_table()
    lines = ['"""Generated by ``python -m dnalm.cli.preflight --write`` from the live code (tests/test_cli_preflight.py',
             'checks it): what the torch-free preflight needs to know. Do not edit by hand."""', "",
             "PRESET_PARAMS = {"]
    lines += [f"    {k!r}: {v}," for k, v in presets.items()] + ["}", "", "COMMANDS = {"]
    lines += [f"    {k!r}: ({p!r}, {v!r})," for k, (p, v) in commands.items()] + ["}", "", "FLAGS = {"]
    lines += [f"    {k!r}: {v!r}," for k, v in flags.items()] + ["}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m dnalm.cli.preflight --write   (regenerates dnalm/cli/preflight_table.py)")
    (Path(__file__).parent / "preflight_table.py").write_text(table_source())
