"""The package's shape: its layers import downward only (the import-linter contracts in pyproject.toml), no
import circles, and no module outside dnalm/models/ branches on a model family's name."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import importlinter  # noqa: F401  (the test extra installs it; the contract must run, not be skipped)

from dnalm.models import SPECS

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "dnalm"


def test_import_contracts_hold():
    """`lint-imports` checks pyproject.toml's contracts: the layers (cli > applications and scaling > train >
    data > checkpoint formats > models > base) and no import circles inside any package."""
    run = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"],
        cwd=REPO, capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "2 kept, 0 broken" in run.stdout


def test_contract_catches_a_wrong_arrow(tmp_path):
    """The layers contract is not vacuous: a models module importing the trainer breaks it."""
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(PACKAGE, copy / "dnalm", ignore=shutil.ignore_patterns("__pycache__", "resources"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    spec = copy / "dnalm" / "models" / "spec.py"
    spec.write_text(spec.read_text() + "\nfrom dnalm.train import trainer  # noqa: E402\n")
    run = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"],
        cwd=copy, capture_output=True, text=True, env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert run.returncode != 0
    assert "dnalm.models.spec -> dnalm.train.trainer" in run.stdout


def _family_comparisons(path: Path) -> list[str]:
    """Comparisons in ``path`` that involve a registered family name or a config's ``family`` attribute."""
    names = set(SPECS)
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        parts = [node.left, *node.comparators]
        consts = [c for p in parts for c in ast.walk(p) if isinstance(c, ast.Constant)]
        attrs = [a for p in parts for a in ast.walk(p) if isinstance(a, ast.Attribute) and a.attr == "family"]
        strings = [c for c in ast.walk(node) if isinstance(c, ast.Constant) and c.value == "family"]
        if any(c.value in names for c in consts) or attrs or strings:
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_family_names_compared_outside_models():
    """Families are looked up in the registry (dnalm.models.SPECS); nothing outside dnalm/models/ compares a
    family's name, so a new family needs no edit there."""
    files = [p for p in PACKAGE.rglob("*.py") if "models" not in p.relative_to(PACKAGE).parts]
    assert len(files) > 30
    found = [hit for p in files for hit in _family_comparisons(p)]
    assert not found, "\n".join(found)


def test_family_comparison_check_is_not_vacuous(tmp_path):
    bad = tmp_path / "dnalm" / "bad.py"
    bad.parent.mkdir()
    bad.write_text('def f(cfg):\n    return 1 if cfg.family == "hyena" else 2\n')
    global REPO
    old, REPO = REPO, tmp_path
    try:
        assert len(_family_comparisons(bad)) == 1
    finally:
        REPO = old
