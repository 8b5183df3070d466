"""Scaling sweeps: train a grid of model sizes x compute budgets (x families) and tabulate the results.

A grid file (YAML, plain data) names the families and their sizes, the shared data/train settings, and
either compute budgets or token budgets::

    out_dir: runs/sweep_ecoli
    data: {seq_len: 256}                    # DataConfig fields; no store = prepare E. coli once
    train: {batch_size: 8, lr: 2.0e-3}      # TrainConfig fields shared by every point
    budgets: [3.0e11, 1.0e12, 3.0e12]       # training FLOPs per point (or tokens: [...])
    families:
      hyena:
        train: {lr: 3.0e-3}                 # optional per-family overrides
        sizes:
          h1: {n_layer: 2, d_model: 32}     # model config fields (family added)

With ``budgets`` every point trains for the same training FLOPs: tokens = budget / (training FLOPs per
token), counted by :func:`dnalm.scaling.flops.flops_per_token` at the grid's sequence length and batch
(so Hyena and Transformer points are FLOP-matched by their real per-layer cost, not by 6N).
Steps = tokens / (batch_size x seq_len), rounded; the learning-rate schedule of each point spans its own
steps. Every point evaluates once, at its end, on the same validation bases.

Results go to ``OUT/results.csv``, one row per point, rewritten atomically after each point. A point
whose row says ``done`` is never rerun (its config hash must match: a changed grid with the same names is
an error, not a silent reuse); an interrupted point resumes from its last checkpoint.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dnalm.checkpoint import atomic_write_text
from dnalm.config import (
    ConfigError,
    DataConfig,
    RunConfig,
    TrainConfig,
    from_dict,
    read_yaml_mapping,
    upgrade_legacy_keys,
)
from dnalm.models import get_spec, model_config_from_dict
from dnalm.scaling.flops import count_params, flops_per_token
from dnalm.train.config import run_config_hash
from dnalm.train.trainer import TrainingError, prepare_data, train

__all__ = ["SweepPoint", "load_grid", "plan_points", "run_sweep", "RESULT_COLUMNS", "read_rows"]

RESULT_COLUMNS = [
    "family", "size", "budget_flops", "params", "tokens", "flops", "flops_6nd", "flops_per_token",
    "val_loss", "val_bits_per_base", "steps", "seq_len", "batch_size", "lr", "wall_s", "tokens_per_s",
    "status", "config_hash", "run_dir",
]  # fmt: skip

_GRID_KEYS = {"out_dir", "data", "train", "budgets", "tokens", "families", "min_steps"}


@dataclass
class SweepPoint:
    """One run of the grid."""

    family: str
    size: str
    budget: float  # training FLOPs (or tokens, for a token grid) that names the point
    config: RunConfig
    params: int
    flops_per_token: float  # training FLOPs per token (3x forward)
    tokens: int  # steps * batch_size * seq_len

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.family, self.size, f"{self.budget:.4g}")

    @property
    def name(self) -> str:
        return f"{self.family}-{self.size}-{self.budget:.3g}".replace("+", "")

    @property
    def config_hash(self) -> str:
        """Hash of the model, data and train sections (not the output directory)."""
        return run_config_hash(self.config)


def load_grid(path: str | Path) -> dict[str, Any]:
    """Read and check a grid file; returns the plain dict (errors name the file and the key)."""
    path = Path(path)
    grid = read_yaml_mapping(path, "grid file")
    unknown = sorted(set(grid) - _GRID_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_GRID_KEYS))}")
    if ("budgets" in grid) == ("tokens" in grid):
        raise ConfigError(f"{path}: give exactly one of 'budgets' (training FLOPs) or 'tokens' per point")
    values = grid.get("budgets", grid.get("tokens"))
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{path}: 'budgets'/'tokens' must be a non-empty list of numbers")
    try:
        grid["_values"] = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: 'budgets'/'tokens' must be numbers (got {values!r})") from None
    if any(v <= 0 for v in grid["_values"]):
        raise ConfigError(f"{path}: budgets/tokens must be > 0")
    fams = grid.get("families")
    if not isinstance(fams, dict) or not fams:
        raise ConfigError(f"{path}: 'families' must map family names to {{sizes: {{name: model fields}}}}")
    for fam, spec in fams.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("sizes"), dict) or not spec["sizes"]:
            raise ConfigError(f"{path}: families.{fam} needs a 'sizes' mapping of name -> model fields")
        extra = sorted(set(spec) - {"sizes", "train"})
        if extra:
            raise ConfigError(f"{path}: families.{fam}: unknown key(s) {', '.join(extra)} (allowed: sizes, train)")
    grid["_path"] = str(path)
    return grid


def plan_points(grid: dict[str, Any], out_dir: str | Path | None = None, store: str | None = None) -> list[SweepPoint]:
    """Expand a grid into points (configs, parameters, tokens); nothing is trained."""
    out = Path(out_dir or grid.get("out_dir") or "runs/sweep")
    by_flops = "budgets" in grid
    min_steps = int(grid.get("min_steps", 10))
    points = []
    for fam, spec in grid["families"].items():
        for size, fields in spec["sizes"].items():
            where = f"{grid['_path']}: families.{fam}.sizes.{size}"
            if not isinstance(fields, dict):
                raise ConfigError(f"{where} must be a mapping of model config fields")
            data = from_dict(DataConfig, dict(grid.get("data") or {}), "data")
            data.store = store if store is not None else data.store
            model_fields = {"family": fam, **fields}
            model_fields.setdefault(get_spec(fam).length_field, data.seq_len + 2)
            try:
                model = model_config_from_dict(model_fields, where)
            except ConfigError as e:
                raise ConfigError(str(e)) from None
            train_fields = {**(grid.get("train") or {}), **(spec.get("train") or {})}
            upgrade_legacy_keys({"train": train_fields}, announce=not points)  # train.bf16 -> train.precision
            base_train = from_dict(TrainConfig, {**train_fields, "steps": 1}, "train")
            bs, L = base_train.batch_size, data.seq_len
            fpt = flops_per_token(model, L, batch_size=bs).training
            for value in grid["_values"]:
                tokens = value / fpt if by_flops else value
                steps = max(1, round(tokens / (bs * L)))
                if steps < min_steps:
                    raise ConfigError(
                        f"{where} at budget {value:.3g}: only {steps} steps of {bs}x{L} tokens; raise the budget, "
                        f"shrink the model or lower min_steps ({min_steps})"
                    )
                train = from_dict(
                    TrainConfig,
                    {
                        **train_fields,
                        "steps": steps,
                        "eval_every": steps,  # evaluate once, at the end
                        "ckpt_every": max(1, min(steps, train_fields.get("ckpt_every", max(25, steps // 4)))),
                        "log_every": max(1, min(steps, train_fields.get("log_every", 10))),
                        "warmup_steps": train_fields.get("warmup_steps", max(1, steps // 50)),
                    },
                    "train",
                )
                point = SweepPoint(fam, size, value, None, count_params(model), fpt, steps * bs * L)  # type: ignore[arg-type]
                point.config = RunConfig(model=model, data=data, train=train, out_dir=str(out / "runs" / point.name))
                points.append(point)
    # cheapest budget first, across all families: a sweep cut short still gives FLOP-matched comparisons
    order = {v: i for i, v in enumerate(grid["_values"])}
    return sorted(points, key=lambda p: order[p.budget])  # stable: families and sizes keep grid order


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    atomic_write_text(path, buf.getvalue())


def format_points(points: list[SweepPoint]) -> str:
    """A table of the planned points (for --dry-run and the log)."""
    lines = [f"{'point':<34} {'params':>10} {'FLOPs/token':>12} {'tokens':>12} {'steps':>7} {'train FLOPs':>12}"]
    total = 0.0
    for p in points:
        flops = p.flops_per_token * p.tokens
        total += flops
        lines.append(
            f"{p.name:<34} {p.params:>10,} {p.flops_per_token:>12.4g} {p.tokens:>12,} {p.config.train.steps:>7} {flops:>12.4g}"
        )
    lines.append(f"{len(points)} points, {total:.4g} training FLOPs in all")
    return "\n".join(lines)


def run_sweep(
    grid_path: str | Path,
    out_dir: str | Path | None = None,
    dry_run: bool = False,
    progress: bool = True,
) -> Path:
    """Train every point of the grid that is not finished yet; returns the results CSV path."""
    grid = load_grid(grid_path)
    out = Path(out_dir or grid.get("out_dir") or "runs/sweep")
    store = (grid.get("data") or {}).get("store")
    if store is None:
        store = str(out / "store")
    points = plan_points(grid, out, store)
    results = out / "results.csv"
    if dry_run:
        print(format_points(points))
        return results
    out.mkdir(parents=True, exist_ok=True)
    if (grid.get("data") or {}).get("store") is None:
        # prepare the grid's inputs (default: the embedded E. coli genome) once into OUT/store; every
        # point reads that store. prepare is a no-op when the store is already up to date.
        data = from_dict(DataConfig, dict(grid.get("data") or {}), "data")
        prepare_data(RunConfig(model=points[0].config.model, data=data, out_dir=str(out)), progress=progress)
    rows = {(r["family"], r["size"], f"{float(r['budget_flops']):.4g}"): r for r in read_rows(results)}
    todo = []
    for p in points:
        row = rows.get(p.key)
        if row and row.get("status") == "done":
            if row.get("config_hash") != p.config_hash:
                raise ConfigError(
                    f"{results}: point {p.name} was finished with a different configuration (the grid changed "
                    f"under the same names, or dnalm's FLOP count that sets its steps did). Use a new out_dir, "
                    f"or delete that row and its run directory to retrain it."
                )
            continue
        todo.append(p)
    if progress:
        tqdm.write(f"sweep {grid_path}: {len(points)} points, {len(points) - len(todo)} done, {len(todo)} to run")
    bar = tqdm(todo, desc="sweep", unit="point", disable=not progress, position=0)
    for p in bar:
        bar.set_postfix_str(p.name)
        t0 = time.time()
        row: dict[str, Any] = {
            "family": p.family, "size": p.size, "budget_flops": p.budget, "params": p.params,
            "flops_per_token": p.flops_per_token, "steps": p.config.train.steps, "seq_len": p.config.data.seq_len,
            "batch_size": p.config.train.batch_size, "lr": p.config.train.lr, "config_hash": p.config_hash,
            "run_dir": p.config.out_dir,
        }  # fmt: skip
        try:
            res = train(p.config, resume=True, progress=False)
        except TrainingError as e:
            row.update(status="failed", val_loss="", tokens=p.tokens)
            tqdm.write(f"{p.name}: failed ({e})")
        else:
            wall = time.time() - t0
            # the trainer counts valid (non-padding) tokens; the windows are full, so this is steps*B*L
            row.update(
                status="done" if not res.stopped_early else "stopped",
                tokens=res.tokens,
                flops=p.flops_per_token * res.tokens,
                flops_6nd=6.0 * p.params * res.tokens,
                val_loss=res.val_loss,
                val_bits_per_base=res.val_bits_per_base,
                wall_s=round(wall, 1),
                tokens_per_s=round(res.tokens / max(wall, 1e-9), 1),
            )
            tqdm.write(
                f"{p.name}: N={p.params:,} D={res.tokens:,} val loss {res.val_loss:.4f} "
                f"({res.val_bits_per_base:.4f} bits/base) in {wall:.0f}s"
            )
        rows[p.key] = row
        ordered = [rows[q.key] for q in points if q.key in rows]
        ordered += [r for k, r in rows.items() if k not in {q.key for q in points}]  # keep foreign rows
        _write_rows(results, ordered)
    return results

