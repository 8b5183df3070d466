"""Ablations: one switch of a run config varied, everything else held equal, over several seeds.

An ablation file (YAML, plain data)::

    out_dir: runs/ablate_repeat_weight
    base:                                   # a whole run config (model / data / train), without out_dir
      model: {family: hyena, n_layer: 2, d_model: 64, l_max: 1026}
      data: {inputs: [...], seq_len: 1024}
      train: {batch_size: 8, lr: 2.0e-3, eval_every: 100, threads: 1}
    switch: data.repeat_weight              # the one dotted key the arms set
    arms: {"1.0": 1.0, "0.1": 0.1}          # arm name -> value of the switch (the first arm is the reference)
    seeds: [0, 1, 2]                        # each seed sets train.seed (init) and train.data_seed (data order)
    tokens: 9.8e6                           # optional: train.steps = tokens / (batch_size x seq_len)
    target: 1.95                            # optional: bits/base every run is timed to reach
    essentiality: {labels: ..., window: 1024, label_column: essential_baba2006_keio}   # optional

Every (arm, seed) run gets the base config with the switch set to the arm's value and the seed set; the
command checks that the runs' configs differ in nothing else and that every arm's schedule plans the same
training tokens (equal token budgets), before training anything. The inputs are prepared once into
``OUT/store`` and every run reads that store, so every run sees the same data and the same validation bases.
Runs go seed by seed (all arms of seed 0, then of seed 1, ...), so an ablation cut short still holds
paired comparisons.

Outputs, all in ``OUT``:

- ``results.csv``: one row per validation point of every run: arm, seed, step, tokens, train_s (wall)
  and train_cpu_s (process CPU), both excluding validation, val_bits_per_base and, when the data has both
  cases, val_bits_per_base_upper / _lower (non-repeat / soft-masked repeat bases). The last row of a run has
  ``final = 1`` and the post-training metrics (essentiality AUROC and the gene-length baseline).
  Rewritten atomically after each run; a run whose final row is there (with the same config hash) is not
  rerun, an interrupted run resumes from its checkpoint (its times then count from the resume only).
- ``curves.png``: each metric against tokens, training wall time and training CPU time; mean over seeds
  with the min-max spread shaded.
- ``summary.md`` / ``summary.json``: per arm the final metrics (mean and seed sd), the tokens and time to
  reach the target, and per non-reference arm the paired difference to the reference arm with a seed
  bootstrap 95% interval.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml
from tqdm import tqdm

from dnalm.checkpoint import atomic_write_text
from dnalm.config import ConfigError, RunConfig, read_yaml_mapping, to_dict
from dnalm.train.config import run_config_from_dict, run_config_hash
from dnalm.train.trainer import METRICS_FILE, TrainingError, build_schedule, prepare_data, train

__all__ = ["AblationRun", "load_ablation", "plan_runs", "run_ablation", "summarize", "read_results"]

_KEYS = {"out_dir", "base", "switch", "arms", "seeds", "tokens", "target", "metric", "essentiality", "bootstrap"}
_ESS_KEYS = {"labels", "fasta", "gff", "window", "label_column", "max_genes", "batch_size"}
BASE_COLUMNS = [
    "arm", "seed", "step", "tokens", "train_s", "train_cpu_s", "val_loss", "val_bits_per_base",
    "val_bits_per_base_upper", "val_bits_per_base_lower", "final", "config_hash", "run_dir",
]  # fmt: skip


@dataclass
class AblationRun:
    """One (arm, seed) run."""

    arm: str
    seed: int
    config: RunConfig
    planned_tokens: int

    @property
    def name(self) -> str:
        return f"{_safe(self.arm)}-seed{self.seed}"

    @property
    def config_hash(self) -> str:
        return run_config_hash(self.config)


def load_ablation(path: str | Path) -> dict[str, Any]:
    """Read and check an ablation file; errors name the file and the key."""
    path = Path(path)
    ab = read_yaml_mapping(path, "ablation file")
    unknown = sorted(set(ab) - _KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_KEYS))}")
    for key in ("base", "switch", "arms", "seeds"):
        if key not in ab:
            raise ConfigError(f"{path}: missing '{key}'")
    if not isinstance(ab["base"], dict):
        raise ConfigError(f"{path}: 'base' must be a run config mapping (model / data / train)")
    if "out_dir" in ab["base"]:
        raise ConfigError(f"{path}: base.out_dir is set per run; give the ablation's out_dir at the top level")
    sw = ab["switch"]
    if not isinstance(sw, str) or "." not in sw or sw.split(".")[0] not in ("model", "data", "train"):
        raise ConfigError(f"{path}: 'switch' must be a dotted key in model/data/train, e.g. data.repeat_weight")
    if sw in ("train.seed", "train.data_seed", "train.steps"):
        raise ConfigError(f"{path}: switch {sw} is set by the ablation itself (seeds / tokens)")
    arms = ab["arms"]
    if isinstance(arms, list):
        arms = {_arm_name(v): v for v in arms}
    if not isinstance(arms, dict) or len(arms) < 2:
        raise ConfigError(f"{path}: 'arms' must map at least two arm names to values of {sw}")
    ab["arms"] = {str(k): v for k, v in arms.items()}
    seeds = ab["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{path}: 'seeds' must be a non-empty list of integers")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path}: 'seeds' has duplicates")
    for key in ("tokens", "target"):
        if key in ab and (isinstance(ab[key], bool) or not isinstance(ab[key], (int, float)) or ab[key] <= 0):
            raise ConfigError(f"{path}: '{key}' must be a positive number")
    ess = ab.get("essentiality")
    if ess is not None:
        if not isinstance(ess, dict) or "labels" not in ess:
            raise ConfigError(f"{path}: 'essentiality' must be a mapping with at least 'labels' (a label TSV)")
        extra = sorted(set(ess) - _ESS_KEYS)
        if extra:
            raise ConfigError(f"{path}: essentiality: unknown key(s) {', '.join(extra)}; allowed: {', '.join(sorted(_ESS_KEYS))}")
    ab["_path"] = str(path)
    return ab


def _arm_name(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _set(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = d
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"switch {dotted}: {p} is not a section")
    node[parts[-1]] = copy.deepcopy(value)


def _drop(d: dict, dotted: str) -> dict:
    d = copy.deepcopy(d)
    parts = dotted.split(".")
    node = d
    for p in parts[:-1]:
        node = node.get(p, {})
    node.pop(parts[-1], None)
    return d


def planned_tokens(config: RunConfig) -> int:
    """Training tokens the run's length schedule plans over train.steps (full windows)."""
    schedule = build_schedule(config)
    total, step = 0, 0
    for stage in schedule.stages:
        n = stage.num_steps()
        n = config.train.steps - step if n is None else min(n, config.train.steps - step)
        if n <= 0:
            break
        total += n * stage.tokens_per_step()
        step += n
    if step < config.train.steps:  # the last stage continues
        total += (config.train.steps - step) * schedule.stages[-1].tokens_per_step()
    return total


def plan_runs(ab: dict[str, Any], out_dir: str | Path | None = None, store: str | None = None) -> list[AblationRun]:
    """Expand the ablation into runs (seed-major) and check that the arms differ only in the switch."""
    out = Path(out_dir or ab.get("out_dir") or "runs/ablation")
    where = ab["_path"]
    runs = []
    for seed in ab["seeds"]:
        for arm, value in ab["arms"].items():
            d = copy.deepcopy(ab["base"])
            _set(d, ab["switch"], value)
            d.setdefault("train", {})
            d["train"]["seed"] = seed
            d["train"]["data_seed"] = seed
            if "tokens" in ab:
                bs = d["train"].get("batch_size", 16)
                seq_len = (d.get("data") or {}).get("seq_len", 1024)
                d["train"]["steps"] = max(1, round(float(ab["tokens"]) / (bs * seq_len)))
            if store is not None:
                d.setdefault("data", {})["store"] = store
            d["out_dir"] = str(out / "runs" / f"{_safe(arm)}-seed{seed}")  # = AblationRun.name
            try:
                cfg = run_config_from_dict(d)
            except ConfigError as e:
                raise ConfigError(f"{where}: arm {arm}, seed {seed}: {e}") from None
            runs.append(AblationRun(arm, seed, cfg, planned_tokens(cfg)))
    check_only_switch(runs, ab["switch"], where)
    return runs


def _safe(arm: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in arm)


def check_only_switch(runs: list[AblationRun], switch: str, where: str = "ablation") -> None:
    """Raise ConfigError unless the runs of one seed differ only in ``switch`` and plan equal tokens."""
    by_seed: dict[int, list[AblationRun]] = {}
    for r in runs:
        by_seed.setdefault(r.seed, []).append(r)
    for seed, group in by_seed.items():
        ref = _drop({k: v for k, v in to_dict(group[0].config).items() if k != "out_dir"}, switch)
        for r in group[1:]:
            other = _drop({k: v for k, v in to_dict(r.config).items() if k != "out_dir"}, switch)
            if other != ref:
                diff = sorted(_diff_keys(ref, other))
                raise ConfigError(f"{where}: arms {group[0].arm} and {r.arm} differ in more than {switch}: {', '.join(diff)}")
            if r.planned_tokens != group[0].planned_tokens:
                raise ConfigError(
                    f"{where}: arm {r.arm} plans {r.planned_tokens:,} training tokens, arm {group[0].arm} "
                    f"{group[0].planned_tokens:,}; an ablation compares arms at equal tokens (adjust the stages)"
                )


def _diff_keys(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for k in set(a) | set(b):
            out |= _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}


# ------------------------------------------------------------------------------------------ results


def read_results(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _write_results(path: Path, rows: list[dict[str, Any]]) -> None:
    cols = list(BASE_COLUMNS)
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    atomic_write_text(path, buf.getvalue())


def _run_rows(run: AblationRun) -> list[dict[str, Any]]:
    """The validation points of a finished run, from its metrics.jsonl."""
    path = Path(run.config.out_dir) / METRICS_FILE
    rows = []
    for line in path.read_text().splitlines():
        m = json.loads(line)
        if "val/loss" not in m:
            continue
        rows.append({
            "arm": run.arm, "seed": run.seed, "step": m["step"], "tokens": m["tokens"],
            "train_s": round(m.get("train_s", float("nan")), 2), "train_cpu_s": round(m.get("train_cpu_s", float("nan")), 2),
            "val_loss": m["val/loss"], "val_bits_per_base": m["val/bits_per_base"],
            "val_bits_per_base_upper": m.get("val/bits_per_base_upper", ""),
            "val_bits_per_base_lower": m.get("val/bits_per_base_lower", ""),
            "final": 0, "config_hash": run.config_hash, "run_dir": run.config.out_dir,
        })  # fmt: skip
    if not rows:
        raise TrainingError(f"{path}: the run logged no validation point")
    rows[-1]["final"] = 1
    return rows


def run_ablation(
    path: str | Path,
    out_dir: str | Path | None = None,
    dry_run: bool = False,
    progress: bool = True,
    max_seeds: int | None = None,
    tokens: float | None = None,
    essentiality: Callable[[Path, dict[str, Any]], dict[str, Any]] | None = None,
) -> Path:
    """Train every (arm, seed) run not finished yet, then write the plots and the summary; returns OUT.

    ``essentiality(model_dir, settings)`` scores a finished run's model when the file has an
    ``essentiality`` section and returns the ``ess_*`` columns (the CLI passes dnalm.eval's protocol;
    this layer does not import the applications). ``max_seeds`` trains only the file's first seeds; ``tokens`` replaces the file's token budget."""
    ab = load_ablation(path)
    if tokens is not None:  # the same ablation at another token budget (use another out_dir)
        if tokens <= 0:
            raise ConfigError(f"--tokens must be > 0 (got {tokens})")
        ab["tokens"] = tokens
    out = Path(out_dir or ab.get("out_dir") or "runs/ablation")
    base_store = (ab["base"].get("data") or {}).get("store")
    store = base_store if base_store is not None else str(out / "store")
    runs = plan_runs(ab, out, store)
    if max_seeds is not None:  # train only the first seeds now (a later call adds the rest)
        runs = [r for r in runs if r.seed in ab["seeds"][:max_seeds]]
    if dry_run:
        print(format_runs(ab, runs))
        return out
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "ablation.yaml", yaml.safe_dump({k: v for k, v in ab.items() if not k.startswith("_")}, sort_keys=False))
    if base_store is None:  # prepare the inputs once; every run reads OUT/store
        cfg = copy.copy(runs[0].config)
        cfg.data = copy.copy(cfg.data)
        cfg.data.store = None
        cfg.out_dir = str(out)
        prepare_data(cfg, progress=progress)
    results = out / "results.csv"
    rows = read_results(results)
    done = {(r["arm"], int(r["seed"])): r for r in rows if r.get("final") == "1"}
    todo = []
    for r in runs:
        row = done.get((r.arm, r.seed))
        if row is not None:
            if row.get("config_hash") != r.config_hash:
                raise ConfigError(
                    f"{results}: run {r.name} was finished with a different configuration; use a new out_dir, "
                    "or delete its rows and run directory to retrain it"
                )
            continue
        todo.append(r)
    if progress:
        tqdm.write(f"ablation {path}: {ab['switch']} over {len(ab['arms'])} arms x {len(ab['seeds'])} seeds, "
                   f"{len(runs) - len(todo)} runs done, {len(todo)} to run")
    bar = tqdm(todo, desc="ablation", unit="run", disable=not progress, position=0)
    for r in bar:
        bar.set_postfix_str(r.name)
        train(r.config, resume=True, progress=False)
        new = _run_rows(r)
        if ab.get("essentiality"):
            if essentiality is None:
                raise ConfigError(f"{path}: has an essentiality section but no scorer was given")
            new[-1].update(essentiality(Path(r.config.out_dir) / "model", ab["essentiality"]))
        rows = [x for x in rows if (x["arm"], int(x["seed"])) != (r.arm, r.seed)] + new
        _write_results(results, rows)
        last = new[-1]
        msg = f"{r.name}: {last['tokens']:,} tokens, val {last['val_bits_per_base']:.4f} bits/base"
        if last.get("ess_auroc") is not None:
            msg += f", essentiality AUROC {last['ess_auroc']:.3f}"
        tqdm.write(f"{msg}, {last['train_cpu_s']:.0f} s CPU")
    summary = summarize(read_results(results), ab)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "summary.md", format_summary(summary))
    plot_curves(read_results(results), out / "curves.png", title=f"{ab['switch']}: {', '.join(ab['arms'])}")
    return out


def format_runs(ab: dict[str, Any], runs: list[AblationRun]) -> str:
    lines = [f"switch {ab['switch']}; {len(runs)} runs", f"{'run':<30} {'steps':>7} {'tokens':>14}  value"]
    for r in runs:
        lines.append(f"{r.name:<30} {r.config.train.steps:>7} {r.planned_tokens:>14,}  {json.dumps(ab['arms'][r.arm])}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ summary


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def metrics_of(rows: list[dict[str, Any]]) -> list[str]:
    """The metric columns present (with a value) in the results."""
    cands = ["val_bits_per_base", "val_bits_per_base_upper", "val_bits_per_base_lower", "ess_auroc", "ess_gene_length_auroc"]
    have = [c for c in cands if any(_num(r.get(c)) is not None for r in rows)]
    if "val_bits_per_base_lower" not in have:  # one case only (no soft-masking): the split repeats the total
        have = [c for c in have if c != "val_bits_per_base_upper"]
    return have


def _curves(rows: list[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    out: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault((r["arm"], int(r["seed"])), []).append(r)
    for v in out.values():
        v.sort(key=lambda r: int(r["step"]))
    return out


def reach(curve: list[dict[str, Any]], metric: str, target: float) -> dict[str, float | None]:
    """Tokens, wall and CPU seconds at which ``metric`` first reaches ``target`` (lower is better), linearly
    interpolated between validation points; None when the run never reached it."""
    prev = None
    for r in curve:
        y = _num(r.get(metric))
        if y is None:
            continue
        if y <= target:
            if prev is None or _num(prev[metric]) == y:
                return {k: _num(r[k]) for k in ("tokens", "train_s", "train_cpu_s")}
            y0 = _num(prev[metric])
            f = (y0 - target) / (y0 - y)
            return {k: _num(prev[k]) + f * (_num(r[k]) - _num(prev[k])) for k in ("tokens", "train_s", "train_cpu_s")}
        prev = r
    return {"tokens": None, "train_s": None, "train_cpu_s": None}


def _boot_ci(diffs: np.ndarray, n_boot: int, seed: int = 0) -> tuple[float, float]:
    """95% interval of the mean of paired seed differences, resampling seeds with replacement."""
    rng = np.random.default_rng(seed)
    if len(diffs) < 2:
        return float("nan"), float("nan")
    means = diffs[rng.integers(0, len(diffs), size=(n_boot, len(diffs)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarize(rows: list[dict[str, Any]], ab: dict[str, Any]) -> dict[str, Any]:
    """Per-arm finals (mean, sd over seeds), time to target, and paired differences to the reference arm."""
    arms = list(ab["arms"])
    curves = _curves(rows)
    finals = {k: v[-1] for k, v in curves.items() if v and str(v[-1].get("final")) == "1"}
    metric = ab.get("metric", "val_bits_per_base")
    mets = metrics_of(rows) + ["tokens", "train_s", "train_cpu_s"]
    per_arm: dict[str, Any] = {}
    for arm in arms:
        seeds = sorted(s for (a, s) in finals if a == arm)
        entry: dict[str, Any] = {"seeds": seeds}
        for m in mets:
            vals = [_num(finals[(arm, s)].get(m)) for s in seeds]
            vals = [v for v in vals if v is not None]
            if vals:
                entry[m] = {"mean": float(np.mean(vals)), "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                            "values": vals}
        per_arm[arm] = entry
    # the target: given, else the level every arm reaches (the worst arm's mean final value)
    target = _num(ab.get("target"))
    last = [_num(f.get(metric)) for f in finals.values()]
    last = [v for v in last if v is not None]
    if target is None and last:
        target = max(last)  # the worst run's final value: a level every run reaches
    if target is not None:
        for arm in arms:
            hits = [reach(curves[(arm, s)], metric, target) for s in per_arm[arm]["seeds"]]
            per_arm[arm]["reach"] = {
                k: {"values": [h[k] for h in hits], "seeds": per_arm[arm]["seeds"],
                    "reached": sum(h[k] is not None for h in hits),
                    "mean": float(np.mean([h[k] for h in hits])) if hits and all(h[k] is not None for h in hits) else None}
                for k in ("tokens", "train_s", "train_cpu_s")
            }  # fmt: skip
    n_boot = int(ab.get("bootstrap", 10000))
    diffs: dict[str, Any] = {}
    ref = arms[0]
    for arm in arms[1:]:
        d: dict[str, Any] = {}
        seeds = sorted(set(per_arm[arm]["seeds"]) & set(per_arm[ref]["seeds"]))
        for m in mets:
            pairs = [(_num(finals[(arm, s)].get(m)), _num(finals[(ref, s)].get(m))) for s in seeds]
            x = np.array([a - b for a, b in pairs if a is not None and b is not None])
            if len(x):
                lo, hi = _boot_ci(x, n_boot)
                d[m] = {"mean": float(x.mean()), "ci95": [lo, hi], "min": float(x.min()), "max": float(x.max()), "n": len(x)}
        if target is not None:
            for k in ("tokens", "train_s", "train_cpu_s"):
                a_v = dict(zip(per_arm[arm]["seeds"], per_arm[arm]["reach"][k]["values"]))
                r_v = dict(zip(per_arm[ref]["seeds"], per_arm[ref]["reach"][k]["values"]))
                ratios = np.array([a_v[s] / r_v[s] for s in seeds if a_v[s] is not None and r_v[s]])
                if len(ratios):
                    lo, hi = _boot_ci(ratios, n_boot)
                    d[f"reach_{k}_ratio"] = {"mean": float(ratios.mean()), "ci95": [lo, hi], "n": len(ratios)}
        diffs[arm] = d
    return {"switch": ab["switch"], "arms": {a: ab["arms"][a] for a in arms}, "reference": ref, "metric": metric,
            "target": target, "per_arm": per_arm, "vs_reference": diffs}  # fmt: skip


def format_summary(s: dict[str, Any]) -> str:
    """summary.md: a Markdown table per arm and the paired differences."""
    mets = [m for m in ("val_bits_per_base", "val_bits_per_base_upper", "val_bits_per_base_lower", "ess_auroc",
                        "ess_gene_length_auroc") if any(m in a for a in s["per_arm"].values())]
    if "val_bits_per_base_lower" not in mets:
        mets = [m for m in mets if m != "val_bits_per_base_upper"]
    head = ["arm", "seeds", *mets, "tokens", "train CPU s"]
    if s["target"] is not None:
        head += [f"tokens to {s['target']:.4f}", f"CPU s to {s['target']:.4f}"]
    lines = [f"switch `{s['switch']}`, reference arm `{s['reference']}`; mean ± sd over seeds", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, e in s["per_arm"].items():
        cells = [f"`{arm}`", str(len(e["seeds"]))]
        for m in mets:
            cells.append(f"{e[m]['mean']:.4f} ± {e[m]['sd']:.4f}" if m in e else "-")
        cells.append(f"{e['tokens']['mean']:,.0f}" if "tokens" in e else "-")
        cells.append(f"{e['train_cpu_s']['mean']:.0f}" if "train_cpu_s" in e else "-")
        if s["target"] is not None:
            rc = e.get("reach", {})
            for k, fmt in (("tokens", "{:,.0f}"), ("train_cpu_s", "{:.0f}")):
                v = rc.get(k, {})
                n = v.get("reached", 0)
                cells.append(fmt.format(v["mean"]) if v.get("mean") is not None else f"{n}/{len(e['seeds'])} reached")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "paired difference to the reference (arm - reference, per seed), seed-bootstrap 95% interval:", ""]
    for arm, d in s["vs_reference"].items():
        for m, v in d.items():
            if m.startswith("reach_"):
                lines.append(f"- `{arm}` {m}: {v['mean']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}] (n={v['n']})")
            elif m in mets:
                lines.append(f"- `{arm}` {m}: {v['mean']:+.5f} [{v['ci95'][0]:+.5f}, {v['ci95'][1]:+.5f}], "
                             f"per-seed range [{v['min']:+.5f}, {v['max']:+.5f}] (n={v['n']})")
    return "\n".join(lines) + "\n"


def plot_curves(rows: list[dict[str, Any]], out_png: Path, title: str = "") -> None:
    """Each validation metric against tokens, training wall time and training CPU time: the mean over
    seeds per arm (at each validation step), shaded between the seeds' min and max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mets = [m for m in metrics_of(rows) if m.startswith("val_")]
    if not mets:
        return
    curves = _curves(rows)
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    xs = [("tokens", "tokens (millions)"), ("train_s", "training wall time (s)"), ("train_cpu_s", "training CPU time (s)")]
    scale = {"tokens": 1e-6, "train_s": 1.0, "train_cpu_s": 1.0}
    fig, axes = plt.subplots(len(mets), len(xs), figsize=(4.2 * len(xs), 3.0 * len(mets)), squeeze=False)
    for i, m in enumerate(mets):
        for j, (xk, xl) in enumerate(xs):
            ax = axes[i][j]
            for k, arm in enumerate(arms):
                runs = [c for (a, _), c in curves.items() if a == arm]
                steps = sorted({int(r["step"]) for c in runs for r in c})
                x, mid, lo, hi = [], [], [], []
                for st in steps:
                    pts = [r for c in runs for r in c if int(r["step"]) == st and _num(r.get(m)) is not None]
                    if not pts:
                        continue
                    ys = [_num(r[m]) for r in pts]
                    x.append(scale[xk] * float(np.mean([_num(r[xk]) or 0.0 for r in pts])))
                    mid.append(float(np.mean(ys)))
                    lo.append(min(ys))
                    hi.append(max(ys))
                if not x:
                    continue
                color = f"C{k}"
                ax.plot(x, mid, "o-", ms=3, color=color, label=f"{arm} (n={len(runs)})")
                ax.fill_between(x, lo, hi, color=color, alpha=0.2)
            ax.set_xlabel(xl)
            ax.set_ylabel(m.replace("val_", "val ").replace("_", " "))
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = out_png.with_name(f".{out_png.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(out_png)
