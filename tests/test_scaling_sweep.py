"""dnalm sweep: a tiny grid on the phage lambda genome (tests/data), FLOP/token bookkeeping, and resuming."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from dnalm.cli import main
from dnalm.config import ConfigError
from dnalm.scaling.flops import flops_per_token
from dnalm.scaling.sweep import load_grid, plan_points, run_sweep

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from dnalm.data.store import prepare

    out = tmp_path_factory.mktemp("store") / "lambda"
    prepare([DATA / "phage_lambda.fa"], out, val_fraction=0.1, test_fraction=0.05, progress=False)
    return out


def _grid(tmp_path, store, **over) -> Path:
    grid = {
        "out_dir": str(tmp_path / "sweep"),
        "data": {"store": str(store), "seq_len": 64},
        "train": {"batch_size": 4, "lr": 3e-3, "eval_tokens": 1024, "threads": 1},
        "budgets": [2.0e9, 4.0e9],
        "min_steps": 5,
        "families": {
            "hyena": {"sizes": {"a": {"n_layer": 1, "d_model": 16, "filter_order": 16},
                                "b": {"n_layer": 1, "d_model": 32, "filter_order": 16}}},
            "transformer": {"train": {"lr": 2e-3}, "sizes": {"a": {"n_layer": 1, "d_model": 32, "n_head": 2}}},
        },
    }  # fmt: skip
    grid.update(over)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_points_are_flop_matched(tmp_path, store):
    points = plan_points(load_grid(_grid(tmp_path, store)))
    assert len(points) == 6
    for p in points:
        fpt = flops_per_token(p.config.model, 64, batch_size=4).training
        assert p.flops_per_token == fpt
        assert p.tokens == p.config.train.steps * 4 * 64
        assert p.tokens * fpt == pytest.approx(p.budget, rel=0.1)  # rounding to whole steps
        assert p.config.train.eval_every == p.config.train.steps
    lrs = {p.family: p.config.train.lr for p in points}
    assert lrs == {"hyena": 3e-3, "transformer": 2e-3}  # family override


def test_sweep_runs_resumes_and_refuses_changed_grid(tmp_path, store, monkeypatch, capsys):
    grid = _grid(tmp_path, store, budgets=[2.0e9])
    assert main(["sweep", "--grid", str(grid)]) == 0
    results = tmp_path / "sweep" / "results.csv"
    rows = list(csv.DictReader(results.open()))
    assert [(r["family"], r["size"], r["status"]) for r in rows] == [
        ("hyena", "a", "done"), ("hyena", "b", "done"), ("transformer", "a", "done"),
    ]  # fmt: skip
    for r in rows:
        assert float(r["flops"]) == pytest.approx(float(r["flops_per_token"]) * int(r["tokens"]))
        assert 0.5 < float(r["val_loss"]) < 2.0  # nats per base, below log(16) of a random model
    # a finished point is never rerun
    import dnalm.train.trainer as trainer

    def boom(*a, **k):
        raise AssertionError("a finished point was trained again")

    monkeypatch.setattr(trainer, "train", boom)
    run_sweep(grid, progress=False)
    # a changed grid under the same names is an error, not a silent reuse
    changed = _grid(tmp_path, store, budgets=[2.0e9], train={"batch_size": 4, "lr": 1e-3, "eval_tokens": 1024})
    with pytest.raises(ConfigError, match="different configuration"):
        run_sweep(changed, progress=False)


def test_grid_errors(tmp_path, store):
    with pytest.raises(ConfigError, match="exactly one"):
        load_grid(_grid(tmp_path, store, tokens=[1e5]))
    with pytest.raises(ConfigError, match="unknown key"):
        load_grid(_grid(tmp_path, store, epochs=3))
    with pytest.raises(ConfigError, match="steps"):
        plan_points(load_grid(_grid(tmp_path, store, budgets=[1e6])))
    assert main(["sweep", "--grid", str(tmp_path / "nope.yaml")]) == 2


def test_shipped_ecoli_grid_plans():
    """configs/sweep_ecoli.yaml: every family with at least 3 sizes x 3 budgets, FLOP-matched points."""
    grid = load_grid(Path(__file__).parent.parent / "configs" / "sweep_ecoli.yaml")
    points = plan_points(grid, out_dir="unused", store="unused")
    fams = {p.family for p in points}
    assert {"hyena", "transformer"} <= fams
    for fam in fams:
        mine = [p for p in points if p.family == fam]
        assert len({p.size for p in mine}) >= 3 and len({p.budget for p in mine}) >= 3
    for p in points:
        assert p.tokens * p.flops_per_token == pytest.approx(p.budget, rel=0.05)
        assert p.config.train.steps >= grid.get("min_steps", 10)
