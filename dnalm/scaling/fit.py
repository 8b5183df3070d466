"""Scaling-law fits: the parametric law L(N, D) = E + A/N^alpha + B/D^beta and the IsoFLOP parabolas.

Both methods are those of Hoffmann et al. 2022 ("Training compute-optimal large language models"):

- **Parametric fit (their approach 3).** Minimise the Huber loss (delta = 1e-3) of the residuals in log
  space, ``LSE(a - alpha*ln N, b - beta*ln D, e) - ln L`` with A = e^a, B = e^b, E = e^e, by L-BFGS from
  several starting points. Starting points come from a grid over (alpha, beta) where, for each pair, the
  linear coefficients (E, A, B) are solved by non-negative least squares, plus a coarse grid like theirs;
  the best optimum wins. Intervals come from a bootstrap over the points.
- **IsoFLOP profiles (their approach 2).** Points that share a compute budget C are one profile; a
  parabola of loss against ln N gives the loss-minimising N_opt(C); a line through ln N_opt against ln C
  gives N* ~ C^a, and D* = C / (k N*) ~ C^b. Profiles whose minimum is not bracketed by the sizes tried
  are reported and left out of the exponent fit.
- **Compute-optimal allocation** under C = k*N*D (k = training FLOPs per parameter per token, 6 by the
  usual rule; from the results when they record FLOPs):
  ``N* = G (C/k)^(beta/(alpha+beta))``, ``D* = (C/k)^(alpha/(alpha+beta)) / G`` with
  ``G = (alpha*A / (beta*B))^(1/(alpha+beta))``.

Results files are CSV tables with one row per trained point (``dnalm sweep`` writes them): columns
``params``, ``tokens``, ``val_loss`` and, when present, ``family``, ``flops``, ``budget_flops``, ``status``.
"""

from __future__ import annotations

import io
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy.optimize import minimize, nnls
from scipy.special import logsumexp
from tqdm import tqdm

from dnalm.data.tables import read_table
from dnalm.outputs import atomic_write_bytes, atomic_write_text, output_group

__all__ = [
    "LawFit",
    "fit_law",
    "bootstrap_law",
    "IsoFlopFit",
    "fit_isoflop",
    "optimal_allocation",
    "read_results",
    "fit_results",
]

HUBER_DELTA = 1e-3


# ------------------------------------------------------------------------------------------ parametric


@dataclass
class LawFit:
    """A fitted L(N, D) = E + A / N^alpha + B / D^beta."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float = float("nan")  # Huber loss at the optimum
    n_points: int = 0

    def predict(self, N: Any, D: Any) -> np.ndarray:
        N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
        return self.E + self.A / N**self.alpha + self.B / D**self.beta

    @property
    def a(self) -> float:
        """Exponent of N*(C) ~ C^a."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """Exponent of D*(C) ~ C^b."""
        return self.alpha / (self.alpha + self.beta)

    def optimal(self, C: Any, k: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
        """Compute-optimal (N*, D*) for compute C under C = k N D."""
        return optimal_allocation(self.as_dict(), C, k)

    def as_dict(self) -> dict[str, float]:
        return {"E": self.E, "A": self.A, "B": self.B, "alpha": self.alpha, "beta": self.beta}


def optimal_allocation(law: dict[str, float], C: Any, k: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """Minimise A/N^alpha + B/D^beta subject to k*N*D = C: returns (N*, D*) (closed form)."""
    al, be, A, B = law["alpha"], law["beta"], law["A"], law["B"]
    if al <= 0 or be <= 0:
        raise ValueError(f"a compute-optimal allocation needs alpha, beta > 0 (got {al:.3g}, {be:.3g})")
    C = np.asarray(C, dtype=float)
    G = (al * A / (be * B)) ** (1 / (al + be))
    N = G * (C / k) ** (be / (al + be))
    return N, (C / k) / N


def _objective(theta: np.ndarray, lnN: np.ndarray, lnD: np.ndarray, lnL: np.ndarray, delta: float):
    """Huber loss of log-space residuals and its gradient; theta = (a, b, e, alpha, beta)."""
    a, b, e, al, be = theta
    terms = np.stack([a - al * lnN, b - be * lnD, np.full_like(lnN, e)])  # (3, n)
    lse = logsumexp(terms, axis=0)  # (n,)
    r = lse - lnL
    absr = np.abs(r)
    quad = absr <= delta
    loss = np.where(quad, 0.5 * r * r, delta * (absr - 0.5 * delta)).sum()
    dr = np.where(quad, r, delta * np.sign(r))  # d huber / d r
    w = np.exp(terms - lse)  # (3, n) softmax weights = d lse / d term
    grad = np.array(
        [
            (dr * w[0]).sum(),
            (dr * w[1]).sum(),
            (dr * w[2]).sum(),
            -(dr * w[0] * lnN).sum(),
            -(dr * w[1] * lnD).sum(),
        ]
    )
    return loss, grad


_BOUNDS = [(None, None), (None, None), (None, None), (0.0, 4.0), (0.0, 4.0)]


def _varpro_starts(N: np.ndarray, D: np.ndarray, L: np.ndarray, top: int = 5) -> list[np.ndarray]:
    """Starting points: for each (alpha, beta) on a grid, solve (E, A, B) >= 0 by least squares."""
    grid = np.linspace(0.05, 1.5, 30)
    scored = []
    for al, be in itertools.product(grid, grid):
        X = np.stack([np.ones_like(N), N**-al, D**-be], axis=1)  # (n, 3)
        colscale = np.abs(X).max(axis=0)
        coef, _ = nnls(X / colscale, L)  # non-negative (E, A, B); columns rescaled for conditioning
        coef = coef / colscale
        pred = X @ coef
        if np.any(pred <= 0):
            continue
        err = float(np.abs(np.log(pred) - np.log(L)).sum())
        scored.append((err, al, be, coef))
    scored.sort(key=lambda t: t[0])
    starts = []
    for err, al, be, (E, A, B) in scored[:top]:
        starts.append(np.array([math.log(max(A, 1e-12)), math.log(max(B, 1e-12)), math.log(max(E, 1e-12)), al, be]))
    return starts


def _coarse_starts() -> list[np.ndarray]:
    """A few corners of Hoffmann et al.'s initialisation grid (the least-squares starts do most of the work)."""
    return [
        np.array([a, b, 0.0, al, be])
        for a, b, al, be in itertools.product((0.0, 10.0), (0.0, 10.0), (0.3, 1.0), (0.3, 1.0))
        if (a == b) == (al == be)
    ]


def fit_law(
    N: Sequence[float],
    D: Sequence[float],
    L: Sequence[float],
    delta: float = HUBER_DELTA,
    starts: list[np.ndarray] | None = None,
) -> LawFit:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta to points (N_i, D_i, L_i); see the module docstring.

    Needs at least 5 points with at least 2 distinct N and 2 distinct D (5 unknowns).
    """
    N, D, L = (np.asarray(x, dtype=float) for x in (N, D, L))
    if not (N.shape == D.shape == L.shape) or N.ndim != 1:
        raise ValueError("N, D and L must be 1-D sequences of the same length")
    if len(N) < 5 or len(np.unique(N)) < 2 or len(np.unique(D)) < 2:
        raise ValueError(
            f"a parametric fit needs >= 5 points with >= 2 model sizes and >= 2 token counts "
            f"(got {len(N)} points, {len(np.unique(N))} sizes, {len(np.unique(D))} token counts)"
        )
    if np.any(N <= 0) or np.any(D <= 0) or np.any(L <= 0) or not np.all(np.isfinite(L)):
        raise ValueError("N, D and L must be positive and finite")
    lnN, lnD, lnL = np.log(N), np.log(D), np.log(L)
    if starts is None:
        starts = _varpro_starts(N, D, L) + _coarse_starts()
    best = None
    for x0 in starts:
        res = minimize(
            _objective, x0, args=(lnN, lnD, lnL, delta), jac=True, method="L-BFGS-B", bounds=_BOUNDS,
            options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-12},
        )
        if np.all(np.isfinite(res.x)) and (best is None or res.fun < best.fun):
            best = res
    a, b, e, al, be = best.x
    return LawFit(math.exp(e), math.exp(a), math.exp(b), float(al), float(be), float(best.fun), len(N))


def bootstrap_law(
    N: Sequence[float],
    D: Sequence[float],
    L: Sequence[float],
    n_boot: int = 200,
    seed: int = 0,
    fit: LawFit | None = None,
    progress: bool = False,
) -> list[LawFit]:
    """Refit on ``n_boot`` resamples (with replacement) of the points; resamples that cannot be fitted
    (too few distinct sizes or token counts) are skipped. Starts from the full fit and the grid's best."""
    N, D, L = (np.asarray(x, dtype=float) for x in (N, D, L))
    fit = fit or fit_law(N, D, L)
    x_full = np.array([math.log(fit.A), math.log(fit.B), math.log(fit.E), fit.alpha, fit.beta])
    rng = np.random.default_rng(seed)
    fits = []
    it = range(n_boot)
    if progress:
        it = tqdm(it, desc="bootstrap", leave=False)
    for _ in it:
        idx = rng.integers(0, len(N), len(N))
        n, d, l = N[idx], D[idx], L[idx]
        if len(np.unique(n)) < 2 or len(np.unique(d)) < 2:
            continue
        try:
            fits.append(fit_law(n, d, l, starts=[x_full] + _varpro_starts(n, d, l, top=2)))
        except ValueError:
            continue
    return fits


def _interval(values: Sequence[float], level: float = 0.95) -> list[float]:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if v.size == 0:
        return [float("nan"), float("nan")]
    q = (1 - level) / 2
    return [float(np.quantile(v, q)), float(np.quantile(v, 1 - q))]


# ------------------------------------------------------------------------------------------ IsoFLOP


@dataclass
class IsoFlopProfile:
    """One compute budget: a parabola of loss in ln N and its minimum."""

    C: float
    N: list[float]
    L: list[float]
    coef: list[float]  # loss = c2 x^2 + c1 x + c0, x = ln N
    N_opt: float
    L_opt: float
    bracketed: bool  # the minimum lies inside the sizes tried (and the parabola opens upwards)


@dataclass
class IsoFlopFit:
    """N_opt(C) ~ C^a and D_opt(C) ~ C^b from IsoFLOP profiles."""

    profiles: list[IsoFlopProfile]
    a: float = float("nan")
    a0: float = float("nan")  # ln N_opt = a ln C + a0
    b: float = float("nan")
    b0: float = float("nan")
    k: float = 6.0
    a_ci: list[float] = field(default_factory=lambda: [float("nan")] * 2)
    b_ci: list[float] = field(default_factory=lambda: [float("nan")] * 2)

    def optimal(self, C: Any) -> tuple[np.ndarray, np.ndarray]:
        C = np.asarray(C, dtype=float)
        N = np.exp(self.a0) * C**self.a
        return N, C / (self.k * N)


def _profile(C: float, N: np.ndarray, L: np.ndarray) -> IsoFlopProfile | None:
    if len(np.unique(N)) < 3:
        return None
    x = np.log(N)
    c2, c1, c0 = np.polyfit(x, L, 2)
    xs = -c1 / (2 * c2) if c2 > 0 else float("nan")
    if c2 > 0 and x.min() <= xs <= x.max():
        return IsoFlopProfile(
            float(C), N.tolist(), L.tolist(), [float(c2), float(c1), float(c0)], float(math.exp(xs)),
            float(c2 * xs * xs + c1 * xs + c0), True,
        )
    # the parabola's vertex lies outside the sizes tried (or it opens downwards): report the best size
    # tried, flagged, and leave the profile out of the exponent fit
    best = int(np.argmin(L))
    coef = [float(c2), float(c1), float(c0)]
    return IsoFlopProfile(float(C), N.tolist(), L.tolist(), coef, float(N[best]), float(L[best]), False)


def _group_budgets(C: np.ndarray, budget: np.ndarray | None) -> list[np.ndarray]:
    """Indices of points sharing a compute budget: the ``budget_flops`` column, else C within 10%."""
    if budget is not None and np.all(np.isfinite(budget)):
        return [np.flatnonzero(budget == v) for v in np.unique(budget)]
    order = np.argsort(C)
    groups, cur = [], [order[0]]
    for i in order[1:]:
        if C[i] <= C[cur[0]] * 1.1:
            cur.append(i)
        else:
            groups.append(np.array(cur))
            cur = [i]
    groups.append(np.array(cur))
    return groups


def fit_isoflop(
    N: Sequence[float],
    D: Sequence[float],
    L: Sequence[float],
    C: Sequence[float] | None = None,
    budget: Sequence[float] | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> IsoFlopFit:
    """IsoFLOP analysis (see the module docstring). ``C`` defaults to 6*N*D; ``budget`` groups points."""
    N, D, L = (np.asarray(x, dtype=float) for x in (N, D, L))
    C = 6.0 * N * D if C is None else np.asarray(C, dtype=float)
    bud = None if budget is None else np.asarray(budget, dtype=float)
    k = float(np.median(C / (N * D)))
    groups = _group_budgets(C, bud)

    def run(groups_idx: list[np.ndarray]) -> tuple[list[IsoFlopProfile], float, float, float, float]:
        profs = []
        for g in groups_idx:
            p = _profile(float(np.median(C[g] if bud is None else bud[g])), N[g], L[g])
            if p is not None:
                profs.append(p)
        ok = [p for p in profs if p.bracketed]
        if len(ok) < 2:
            return profs, *(float("nan"),) * 4
        lc = np.log([p.C for p in ok])
        ln_n = np.log([p.N_opt for p in ok])
        a, a0 = np.polyfit(lc, ln_n, 1)
        ln_d = lc - math.log(k) - ln_n
        b, b0 = np.polyfit(lc, ln_d, 1)
        return profs, float(a), float(a0), float(b), float(b0)

    profiles, a, a0, b, b0 = run(groups)
    out = IsoFlopFit(profiles, a, a0, b, b0, k)
    if np.isfinite(a) and n_boot > 0:
        rng = np.random.default_rng(seed)
        boots_a, boots_b = [], []
        for _ in range(n_boot):
            resampled = [rng.choice(g, size=len(g), replace=True) for g in groups]
            _, ba, _, bb, _ = run(resampled)
            boots_a.append(ba)
            boots_b.append(bb)
        out.a_ci, out.b_ci = _interval(boots_a), _interval(boots_b)
    return out


# ------------------------------------------------------------------------------------------ results files


def read_results(path: str | Path, loss_column: str = "val_loss") -> list[dict[str, Any]]:
    """Rows of a results CSV that are finished (``status`` done, if that column exists) with a finite loss."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such results file")
    table = read_table(path, "results CSV", delimiters=(",", "\t"))  # encodings, gzip, line numbers
    missing = {"params", "tokens", loss_column} - set(table.header)
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {', '.join(sorted(missing))}; a results CSV needs params, tokens and "
            f"{loss_column} (dnalm sweep writes them)"
        )
    rows = []
    for i, row in zip(table.lines, table.as_dicts()):
        if row.get("status", "done") not in ("done", "", None):
            continue
        try:
            rec = {
                "family": row.get("family") or "all",
                "params": float(row["params"]),
                "tokens": float(row["tokens"]),
                "loss": float(row[loss_column]),
                "flops": float(row["flops"]) if row.get("flops") else float("nan"),
                "budget": float(row["budget_flops"]) if row.get("budget_flops") else float("nan"),
                "size": row.get("size", ""),
            }
        except ValueError as e:
            raise ValueError(f"{path}, line {i}: {e}") from None
        if math.isfinite(rec["loss"]) and rec["params"] > 0 and rec["tokens"] > 0:
            rows.append(rec)
    if not rows:
        raise ValueError(f"{path}: no finished rows with a finite {loss_column}")
    return rows


def _law_summary(fit: LawFit, boots: list[LawFit], budgets: list[float], k: float) -> dict[str, Any]:
    out: dict[str, Any] = fit.as_dict() | {"a": fit.a, "b": fit.b, "objective": fit.objective, "n_points": fit.n_points}
    out["bootstrap"] = len(boots)
    if boots:
        out["ci95"] = {
            name: _interval([getattr(f, name) for f in boots]) for name in ("E", "A", "B", "alpha", "beta", "a", "b")
        }
        # exponents whose 95% interval spans more than 4x are not identified by these points
        spans = [hi / max(lo, 1e-12) for lo, hi in (out["ci95"]["alpha"], out["ci95"]["beta"])]
        out["identified"] = bool(all(np.isfinite(sp) and sp <= 4 for sp in spans))
    optimal = []
    for C in budgets:
        try:
            n, d = fit.optimal(C, k)
        except ValueError:
            break
        item = {"C": C, "N": float(n), "D": float(d), "tokens_per_param": float(d / n), "loss": float(fit.predict(n, d))}
        good = [f for f in boots if f.alpha > 0 and f.beta > 0]
        if good:
            with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
                ns, ds = zip(*(f.optimal(C, k) for f in good))
            item["N_ci95"] = _interval(ns)
            item["D_ci95"] = _interval(ds)
            with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
                item["tokens_per_param_ci95"] = _interval(np.asarray(ds) / np.asarray(ns))
        optimal.append(item)
    out["optimal"] = optimal
    return out


def fit_results(
    path: str | Path,
    out_dir: str | Path | None = None,
    n_boot: int = 200,
    seed: int = 0,
    loss_column: str = "val_loss",
    plot: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Fit every family in a results CSV; write ``fit.json`` and plots to ``out_dir``; return the summary."""
    rows = read_results(path, loss_column)
    out_dir = Path(out_dir) if out_dir is not None else Path(path).with_suffix("").parent / "scaling_fit"
    families: dict[str, list[dict]] = {}
    for r in rows:
        families.setdefault(r["family"], []).append(r)
    summary: dict[str, Any] = {"results": str(path), "loss_column": loss_column, "families": {}}
    fits: dict[str, tuple[LawFit | None, IsoFlopFit | None, float]] = {}
    for fam, rs in sorted(families.items()):
        N = np.array([r["params"] for r in rs])
        D = np.array([r["tokens"] for r in rs])
        L = np.array([r["loss"] for r in rs])
        C = np.array([r["flops"] for r in rs])
        if not np.all(np.isfinite(C)):
            C = 6.0 * N * D
        k = float(np.median(C / (N * D)))
        bud = np.array([r["budget"] for r in rs])
        bud = bud if np.all(np.isfinite(bud)) else None
        # the budget each point belongs to: the sweep's target, else its compute rounded to 2 digits
        key = bud if bud is not None else np.array([float(f"{c:.2g}") for c in C])
        budgets = sorted(set(key.tolist()))
        entry: dict[str, Any] = {"n_points": len(rs), "flops_per_param_token": k}
        law = None
        try:
            law = fit_law(N, D, L)
            boots = bootstrap_law(N, D, L, n_boot, seed, law, progress)
            entry["parametric"] = _law_summary(law, boots, budgets, k)
        except ValueError as e:
            entry["parametric_error"] = str(e)
        iso = None
        try:
            iso = fit_isoflop(N, D, L, C, bud, n_boot, seed)
            entry["isoflop"] = {
                "a": iso.a, "a_ci95": iso.a_ci, "b": iso.b, "b_ci95": iso.b_ci,
                "profiles": [p.__dict__ for p in iso.profiles],
            }
            if np.isfinite(iso.a):
                entry["isoflop"]["optimal"] = [
                    {"C": c, "N": float(iso.optimal(c)[0]), "D": float(iso.optimal(c)[1]),
                     "tokens_per_param": float(iso.optimal(c)[1] / iso.optimal(c)[0])}
                    for c in budgets
                ]
        except ValueError as e:
            entry["isoflop_error"] = str(e)
        # FLOP-matched: best loss at each budget
        entry["best_at_budget"] = {}
        for c in budgets:
            sel = [r for r, kk in zip(rs, key) if kk == c]
            if sel:
                best = min(sel, key=lambda r: r["loss"])
                entry["best_at_budget"][f"{c:.3g}"] = {"loss": best["loss"], "params": best["params"], "size": best["size"]}
        summary["families"][fam] = entry
        fits[fam] = (law, iso, k)
    with output_group():  # fit.json and the plots appear together, or none of them
        if plot:
            summary["plots"] = _plot(families, fits, out_dir)
        atomic_write_text(out_dir / "fit.json", json.dumps(summary, indent=2, default=float) + "\n")
    summary["out_dir"] = str(out_dir)
    return summary


# ------------------------------------------------------------------------------------------ plots


def _save_png(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(path, buf.getvalue())


def _plot(families: dict[str, list[dict]], fits: dict, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plt.subplots(figsize=(7, 5))
    for i, (fam, rs) in enumerate(sorted(families.items())):
        col = colors[i % len(colors)]
        C = np.array([r["flops"] if math.isfinite(r["flops"]) else 6 * r["params"] * r["tokens"] for r in rs])
        L = np.array([r["loss"] for r in rs])
        N = np.array([r["params"] for r in rs])
        for n in np.unique(N):  # one thin line per model size, along its budgets
            m = N == n
            o = np.argsort(C[m])
            ax.plot(C[m][o], L[m][o], "-", color=col, alpha=0.35, lw=1)
        ax.scatter(C, L, color=col, s=18 + 40 * (np.log(N) - np.log(N).min()) / max(np.ptp(np.log(N)), 1e-9),
                   label=f"{fam} (marker size ~ N)", zorder=3)
        # the frontier: the best loss at each compute budget (points within 10% of each other share one)
        groups = _group_budgets(C, None)
        fc = np.array([np.median(C[g]) for g in groups])
        fl = np.array([L[g].min() for g in groups])
        o = np.argsort(fc)
        ax.plot(fc[o], fl[o], "-", color=col, lw=2, label=f"{fam} frontier (best at each budget)")
        law, iso, k = fits[fam]
        if law is not None and law.alpha > 0 and law.beta > 0:
            cs = np.geomspace(C.min(), C.max(), 100)
            n_opt, d_opt = law.optimal(cs, k)
            # drawn only where the fitted optimum lies within 10x of the sizes tried (no wild extrapolation)
            inside = (n_opt >= N.min() / 10) & (n_opt <= N.max() * 10)
            if inside.any():
                ax.plot(cs[inside], law.predict(n_opt, d_opt)[inside], "--", color=col, lw=1.5,
                        label=f"{fam} fitted L*(C)")
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("held-out loss (nats per base)")
    ax.set_title("Loss vs compute, with the compute frontier per family")
    ax.legend(fontsize=7)
    fig.tight_layout()
    p = out_dir / "loss_vs_compute.png"
    _save_png(fig, p)
    plt.close(fig)
    paths.append(str(p))
    for fam, (law, iso, k) in sorted(fits.items()):
        if iso is None or not iso.profiles:
            continue
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for j, prof in enumerate(iso.profiles):
            col = colors[j % len(colors)]
            ax.scatter(prof.N, prof.L, color=col, s=20, label=f"C = {prof.C:.2g}")
            xs = np.linspace(np.log(min(prof.N)), np.log(max(prof.N)), 50)
            c2, c1, c0 = prof.coef
            ax.plot(np.exp(xs), c2 * xs**2 + c1 * xs + c0, "-", color=col, lw=1)
            ax.plot([prof.N_opt], [prof.L_opt], "*" if prof.bracketed else "x", color=col, ms=10)
        ax.set_xscale("log")
        ax.set_xlabel("parameters N")
        ax.set_ylabel("held-out loss (nats per base)")
        title = f"IsoFLOP profiles: {fam}"
        if np.isfinite(iso.a):
            title += f"  (N* ~ C^{iso.a:.2f})"
        ax.set_title(title)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = out_dir / f"isoflop_{fam}.png"
        _save_png(fig, p)
        plt.close(fig)
        paths.append(str(p))
    return paths


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable report of ``fit_results``."""
    lines = []
    for fam, e in summary["families"].items():
        lines.append(f"== {fam}: {e['n_points']} points, k = {e['flops_per_param_token']:.2f} FLOPs per parameter-token")
        p = e.get("parametric")
        if p:
            ci = p.get("ci95", {})

            def show(name: str, fmt: str = ".3g") -> str:
                s = f"{name} = {p[name]:{fmt}}"
                if name in ci:
                    s += f" [{ci[name][0]:{fmt}}, {ci[name][1]:{fmt}}]"
                return s

            lines.append(f"  L(N, D) = E + A/N^alpha + B/D^beta   (95% bootstrap intervals, {p['bootstrap']} resamples)")
            lines.append("    " + ", ".join(show(n) for n in ("E", "A", "B")))
            lines.append("    " + ", ".join(show(n, ".3f") for n in ("alpha", "beta")))
            lines.append(f"    N* ~ C^{show('a', '.3f')[4:]},  D* ~ C^{show('b', '.3f')[4:]}")
            if p.get("identified") is False:
                lines.append(
                    "    (the exponents' bootstrap intervals span more than 4x: these points do not pin the law "
                    "down; read it as a description of the data, not an extrapolation)"
                )
            for o in p.get("optimal", []):
                s = f"    C = {o['C']:.3g}: N* = {o['N']:.3g}, D* = {o['D']:.3g}, tokens/param = {o['tokens_per_param']:.3g}"
                if "tokens_per_param_ci95" in o:
                    lo, hi = o["tokens_per_param_ci95"]
                    s += f" [{lo:.3g}, {hi:.3g}]"
                lines.append(s)
        else:
            lines.append(f"  parametric fit: {e.get('parametric_error', 'not run')}")
        iso = e.get("isoflop")
        if iso:
            br = sum(1 for pr in iso["profiles"] if pr["bracketed"])
            lines.append(f"  IsoFLOP: {len(iso['profiles'])} profiles, {br} with a bracketed minimum")
            for pr in iso["profiles"]:
                lines.append(
                    f"    C = {pr['C']:.3g}: N_opt = {pr['N_opt']:.3g}, loss {pr['L_opt']:.4f}"
                    + ("" if pr["bracketed"] else "  (minimum not bracketed: best size tried)")
                )
            if math.isfinite(iso["a"]):
                lines.append(
                    f"    N* ~ C^{iso['a']:.3f} [{iso['a_ci95'][0]:.3f}, {iso['a_ci95'][1]:.3f}], "
                    f"D* ~ C^{iso['b']:.3f} [{iso['b_ci95'][0]:.3f}, {iso['b_ci95'][1]:.3f}]"
                )
        else:
            lines.append(f"  IsoFLOP: {e.get('isoflop_error', 'not run')}")
    fams = list(summary["families"])
    if len(fams) > 1:
        lines.append("== FLOP-matched comparison (best held-out loss at each budget)")
        budgets = sorted({b for e in summary["families"].values() for b in e["best_at_budget"]}, key=float)
        lines.append("  " + f"{'budget':>10} " + " ".join(f"{f:>14}" for f in fams))
        for b in budgets:
            cells = []
            for f in fams:
                v = summary["families"][f]["best_at_budget"].get(b)
                cells.append(f"{v['loss']:14.4f}" if v else f"{'-':>14}")
            lines.append(f"  {b:>10} " + " ".join(cells))
    if summary.get("plots"):
        lines.append("plots: " + ", ".join(summary["plots"]))
    if summary.get("out_dir"):
        lines.append(f"fitted constants: {Path(summary['out_dir']) / 'fit.json'}")
    return "\n".join(lines)
