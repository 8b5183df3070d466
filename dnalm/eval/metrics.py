"""Metrics, plots and safe output files shared by the evaluation commands.

- ``auroc`` / ``auroc_ci``: area under the ROC curve (scikit-learn) with a bootstrap interval, because the
  shipped label sets are small (200 BRCA1 variants, 132 essential genes) and a point estimate alone
  over-states what a model reaches.
- ``classification_metrics``: accuracy, Matthews correlation and AUROC from class probabilities.
- ``spearman``: rank correlation (scipy), NaN-safe.
- ``AtomicWriter`` / ``write_tsv``: every output table is written to a temporary file in the target
  directory and renamed into place at the end, so an interrupted run never leaves a truncated file that
  looks complete.
- ``save_roc_plot``: ROC curves as a PNG (matplotlib, Agg backend), also written atomically.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from dnalm.outputs import AtomicWriter, atomic_write_bytes


class MetricError(ValueError):
    """A metric that cannot be computed from the given labels (e.g. only one class present)."""


# ------------------------------------------------------------------------------------------ metrics


def _binary(labels: Sequence, where: str = "labels") -> np.ndarray:
    y = np.asarray(labels)
    if y.dtype == bool:
        y = y.astype(np.int64)
    values = set(np.unique(y).tolist())
    if not values <= {0, 1}:
        raise MetricError(f"{where}: expected binary labels 0/1, got values {sorted(values)[:10]}")
    if len(values) < 2:
        only = values.pop() if values else "missing"
        raise MetricError(f"{where}: AUROC needs both classes; all {len(y)} labels are {only}")
    return y.astype(np.int64)


def auroc(labels: Sequence, scores: Sequence) -> float:
    """AUROC of ``scores`` for binary ``labels`` (1 = positive; higher score = more positive)."""
    from sklearn.metrics import roc_auc_score

    y = _binary(labels)
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != y.shape:
        raise MetricError(f"labels ({y.shape}) and scores ({s.shape}) differ in shape")
    if not np.all(np.isfinite(s)):
        raise MetricError("scores contain NaN or infinite values")
    return float(roc_auc_score(y, s))


def auroc_ci(
    labels: Sequence, scores: Sequence, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUROC (resampling items, stratified by class)."""
    y = _binary(labels)
    s = np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    stats = np.empty(n_boot)
    for b in range(n_boot):
        p = s[rng.choice(pos, pos.size)]
        n = s[rng.choice(neg, neg.size)]
        # Mann-Whitney form of the AUROC: P(score_pos > score_neg) + 0.5 P(tie)
        stats[b] = _mw_auc(p, n)
    lo, hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def _mw_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    allv = np.concatenate([pos, neg])
    from scipy.stats import rankdata

    ranks = rankdata(allv)
    r_pos = ranks[: pos.size].sum()
    return float((r_pos - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def spearman(x: Sequence, y: Sequence) -> float:
    """Spearman rank correlation over pairs where both values are finite (NaN if fewer than 3)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.all(a[ok] == a[ok][0]) or np.all(b[ok] == b[ok][0]):
        return float("nan")
    return float(spearmanr(a[ok], b[ok]).statistic)


def classification_metrics(y_true: Sequence[int], prob: np.ndarray) -> dict[str, float]:
    """Accuracy, MCC and AUROC from class probabilities ``prob`` (N, C).

    Binary AUROC uses the probability of class 1; with more classes it is the one-vs-rest macro average.
    """
    from sklearn.metrics import accuracy_score, matthews_corrcoef, roc_auc_score

    y = np.asarray(y_true, dtype=np.int64)
    prob = np.asarray(prob, dtype=np.float64)
    pred = prob.argmax(axis=1)
    out = {"n": int(y.size), "accuracy": float(accuracy_score(y, pred)), "mcc": float(matthews_corrcoef(y, pred))}
    present = np.unique(y)
    if present.size < 2:
        out["auroc"] = float("nan")
    elif prob.shape[1] == 2:
        out["auroc"] = float(roc_auc_score(y, prob[:, 1]))
    else:
        out["auroc"] = float(roc_auc_score(y, prob, multi_class="ovr", labels=list(range(prob.shape[1]))))
    return out


def fmt(x: float, digits: int = 4) -> str:
    """A number for a table cell ('nan' stays readable)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{x:.{digits}g}" if abs(x) >= 1e4 or (x != 0 and abs(x) < 1e-3) else f"{x:.{digits}f}"


# ------------------------------------------------------------------------------------------ files


def write_tsv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence], comments: Sequence[str] = ()) -> Path:
    """Write a TSV (optional ``# comment`` lines first) atomically; cells are str()-ed, floats via repr."""
    with AtomicWriter(path) as fh:
        for c in comments:
            fh.write(f"# {c}\n")
        fh.write("\t".join(header) + "\n")
        for row in rows:
            fh.write("\t".join(_cell(v) for v in row) + "\n")
    return Path(path)


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        return "nan" if math.isnan(v) else repr(float(v))
    return str(v)


def save_roc_plot(
    path: str | Path, curves: dict[str, tuple[Sequence, Sequence]], title: str = "ROC"
) -> Path:
    """Plot one ROC curve per ``name -> (binary labels, scores)`` into a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    for name, (labels, scores) in curves.items():
        y = _binary(labels, name)
        fpr, tpr, _ = roc_curve(y, np.asarray(scores, dtype=np.float64))
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auroc(y, scores):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def progress(
    iterable: Iterable | None = None, total: int | None = None, desc: str = "", enabled: bool = True
) -> Iterator:
    """A tqdm progress bar on stderr (silent when ``enabled`` is False)."""
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, unit="it", dynamic_ncols=True, leave=False)
