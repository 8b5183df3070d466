"""Scaling-law fits recover known constants from synthetic points drawn from a known law with noise."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from dnalm.cli import main
from dnalm.scaling.fit import (
    bootstrap_law,
    fit_isoflop,
    fit_law,
    fit_results,
    format_summary,
    optimal_allocation,
    read_results,
)

# Hoffmann et al. 2022 (Chinchilla), their fitted law
TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def _law(N, D, c=TRUE):
    return c["E"] + c["A"] / np.asarray(N) ** c["alpha"] + c["B"] / np.asarray(D) ** c["beta"]


def _grid_points(noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    N = np.repeat(np.geomspace(1e7, 1e9, 6), 6)
    D = np.tile(np.geomspace(1e8, 1e11, 6), 6)
    return N, D, _law(N, D) * np.exp(rng.normal(0, noise, N.size))


def test_parametric_fit_recovers_known_law():
    N, D, L = _grid_points(noise=0.005)
    fit = fit_law(N, D, L)
    assert fit.alpha == pytest.approx(TRUE["alpha"], abs=0.03)
    assert fit.beta == pytest.approx(TRUE["beta"], abs=0.03)
    assert fit.E == pytest.approx(TRUE["E"], rel=0.05)
    # exact points: exact constants
    exact = fit_law(N, D, _law(N, D))
    for k, v in TRUE.items():
        assert getattr(exact, k) == pytest.approx(v, rel=0.02), k


def test_fit_is_robust_to_an_outlier():
    N, D, L = _grid_points(noise=0.002, seed=1)
    L = L.copy()
    L[7] *= 1.5  # one diverged run
    fit = fit_law(N, D, L)
    assert fit.alpha == pytest.approx(TRUE["alpha"], abs=0.03)
    assert fit.beta == pytest.approx(TRUE["beta"], abs=0.03)


def test_bootstrap_intervals_cover_the_truth():
    N, D, L = _grid_points(noise=0.005, seed=2)
    fit = fit_law(N, D, L)
    boots = bootstrap_law(N, D, L, n_boot=25, seed=0, fit=fit)
    assert len(boots) >= 20
    alphas = [b.alpha for b in boots]
    assert min(alphas) <= TRUE["alpha"] + 0.02 and max(alphas) >= TRUE["alpha"] - 0.02
    assert np.std(alphas) > 0  # resampling changes the fit


def test_isoflop_recovers_allocation_exponent():
    rng = np.random.default_rng(3)
    N, D, C = [], [], []
    for c in (1e18, 1e19, 1e20, 1e21):
        for n in np.geomspace(1e7, 1e10, 9):
            N.append(n)
            D.append(c / (6 * n))
            C.append(c)
    L = _law(N, D) * np.exp(rng.normal(0, 0.002, len(N)))
    iso = fit_isoflop(N, D, L, C=C, budget=C, n_boot=30)
    a_true = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
    assert all(p.bracketed for p in iso.profiles)
    assert iso.a == pytest.approx(a_true, abs=0.05)
    assert iso.a + iso.b == pytest.approx(1.0, abs=1e-9)  # D* = C / (6 N*)
    assert iso.a_ci[0] < iso.a < iso.a_ci[1]


def test_unbracketed_profile_is_flagged():
    N = [1e6, 2e6, 4e6]
    D = [1e12 / n for n in N]
    L = [3.0, 2.9, 2.8]  # still falling: the optimum is beyond the largest model
    iso = fit_isoflop(N, D, L, n_boot=0)
    assert not iso.profiles[0].bracketed
    assert np.isnan(iso.a)


def test_optimal_allocation_closed_form():
    for C in (1e19, 1e23):
        n, d = optimal_allocation(TRUE, C)
        grid = np.geomspace(n / 30, n * 30, 40001)
        assert grid[np.argmin(_law(grid, C / (6 * grid)))] == pytest.approx(n, rel=1e-3)
        assert 6 * n * d == pytest.approx(C)


def _write_results(path, fams):
    rng = np.random.default_rng(4)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["family", "size", "budget_flops", "params", "tokens", "flops", "val_loss", "status"])
        for fam, shift in fams:
            for c in (1e17, 1e18, 1e19):
                for i, n in enumerate(np.geomspace(3e6, 1e9, 7)):
                    d = c / (6 * n)
                    loss = (_law(n, d) + shift) * np.exp(rng.normal(0, 0.002))
                    w.writerow([fam, f"s{i}", c, n, d, c, loss, "done"])
        w.writerow(["transformer", "s9", 1e19, 1e7, 1e10, 6e17, "", "failed"])  # skipped


def test_fit_results_writes_constants_and_plots(tmp_path, capsys):
    path = tmp_path / "results.csv"
    _write_results(path, [("hyena", 0.0), ("transformer", 0.05)])
    summary = fit_results(path, tmp_path / "fit", n_boot=10)
    data = json.loads((tmp_path / "fit" / "fit.json").read_text())
    assert set(data["families"]) == {"hyena", "transformer"}
    for fam in ("hyena", "transformer"):
        e = data["families"][fam]
        assert e["n_points"] == 21
        assert e["flops_per_param_token"] == pytest.approx(6.0)
        assert e["isoflop"]["a"] == pytest.approx(0.45, abs=0.08)
        assert len(e["parametric"]["optimal"]) == 3
        assert e["parametric"]["identified"] is True  # 21 well-spread points pin the exponents down
    hy, tr = data["families"]["hyena"]["best_at_budget"], data["families"]["transformer"]["best_at_budget"]
    assert all(hy[c]["loss"] < tr[c]["loss"] for c in hy)  # the shifted family is worse at every budget
    for p in summary["plots"]:
        assert (tmp_path / "fit" / p.split("/")[-1]).stat().st_size > 1000
    text = format_summary(summary)
    assert "FLOP-matched comparison" in text and "alpha" in text
    # the CLI and a fitted law feeding the planner
    assert main(["scaling", "fit", str(path), "--out", str(tmp_path / "cli"), "--bootstrap", "5", "--no-plot"]) == 0
    assert "IsoFLOP" in capsys.readouterr().out
    law = str(tmp_path / "cli" / "fit.json")
    assert main(["plan", "--law", law, "--family", "hyena", "--flops", "1e21", "--gpus", "8xH100"]) == 0
    assert "N* =" in capsys.readouterr().out


def test_read_results_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("params,loss\n1,2\n")
    with pytest.raises(ValueError, match="tokens"):
        read_results(bad)
    with pytest.raises(FileNotFoundError):
        read_results(tmp_path / "missing.csv")
    assert main(["scaling", "fit", str(bad)]) == 2
