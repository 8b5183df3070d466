"""The command line's torch-free memory preflight (dnalm/cli/preflight.py): a model whose weights alone do not
fit is refused before ``import torch``, with the full check's one line and exit code 2; everything else goes
on to the full command line. Its table is generated from the live code and must equal it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dnalm.cli.preflight import live_table, preflight, table_source
from dnalm.cli.preflight_table import COMMANDS, FLAGS, PRESET_PARAMS
from dnalm.memory import NotEnoughMemoryError
from dnalm.scaling.memory import check_weights_fit

REPO = Path(__file__).resolve().parent.parent
FA = str(Path(__file__).parent / "data" / "phage_phix174.fa")


def test_table_equals_the_live_code():
    """Preset parameter counts (as the full check counts them) and every subcommand's arguments; if this fails,
    regenerate with `python -m dnalm.cli.preflight --write`."""
    presets, commands, flags = live_table()
    assert PRESET_PARAMS == presets and COMMANDS == commands and FLAGS == flags
    assert (REPO / "dnalm" / "cli" / "preflight_table.py").read_text() == table_source()


@pytest.mark.parametrize("argv", [
    ["score", "evo2-40b", "--fasta", FA, "--max-memory", "24"],
    ["score", "--batch-size", "2", "evo2-40b", "--fasta", FA, "--max-memory=24"],
    ["generate", "evo2-20b", "--prompt", "ACGT"],
    ["embed", "evo2-40b-8k", "--fasta", FA, "--quiet"],
])  # fmt: skip
def test_refuses_with_the_full_checks_message(argv, capsys, monkeypatch):
    monkeypatch.setenv("DNALM_MAX_MEMORY", "24")
    assert preflight(argv) == 2
    got = capsys.readouterr().err
    model = next(a for a in argv[1:] if a in PRESET_PARAMS)
    with pytest.raises(NotEnoughMemoryError) as e:
        check_weights_fit(model, f"dnalm {argv[0]}", 24 * 2**30 if any("--max-memory" in a for a in argv) else None)
    assert got == f"dnalm {argv[0]}: error: {' '.join(str(e.value).split())}\n"


@pytest.mark.parametrize("argv", [
    ["score", "evo2-1b-8k", "--fasta", FA],  # fits
    ["score", "evo2-40b", "--help"],
    ["score", "--max-mem", "1", "evo2-40b"],  # an abbreviation: argparse decides
    ["nosuchcommand", "evo2-40b"],
    ["--version"],
    [],
    ["score", "no/such/dir", "--fasta", FA],
])  # fmt: skip
def test_passes_everything_else_through(argv, monkeypatch):
    monkeypatch.setenv("DNALM_MAX_MEMORY", "24")
    assert preflight(argv) is None


def test_refusal_happens_before_torch_is_imported():
    code = ("import sys; from dnalm.cli import main; "
            f"rc = main(['score', 'evo2-40b', '--fasta', {FA!r}]); "
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "DNALM_MAX_MEMORY": "24"})
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "weights 153.2 GiB" in lines[0] and "(DNALM_MAX_MEMORY)" in lines[0], lines


@pytest.mark.parametrize("preset, expected", [(None, "1"), ("0", "0")])
def test_huge_pages_asked_for_before_torch_is_imported(preset, expected):
    """PyTorch reads THP_MEM_ALLOC_ENABLE once, at its first allocation: the command line must set it (unless
    the user did) before anything imports torch."""
    code = ("import os, sys, types\n"
            "d = sys.modules['dnalm.cli.dispatch'] = types.ModuleType('dnalm.cli.dispatch')  # a stand-in\n"
            "def probe(argv=None):\n"
            "    print(os.environ.get('THP_MEM_ALLOC_ENABLE'), 'torch' in sys.modules)\n"
            "    return 0\n"
            "d.main = probe\n"
            "from dnalm.cli import main\n"
            "sys.exit(main(['--version']))")
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"} | ({} if preset is None else {"THP_MEM_ALLOC_ENABLE": preset})
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [expected, "False"]
