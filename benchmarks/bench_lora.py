"""LoRA fine-tuning beside the linear probe (and full fine-tuning) and the k-mer baseline, several seeds, one run.

One process reads a labelled benchmark set once, loads the model once, and for every seed trains each mode on
the same train/dev/test split (``dnalm.eval.finetune.finetune``: class-weighted cross-entropy, the dev set
picks the checkpoint); the k-mer logistic regression (k and C chosen on dev; deterministic, so fitted once) is
on the same split. The seed sets the head's init, the adapters' init and the data order. It prints test
accuracy / MCC / AUROC per mode and seed, whether the LoRA run learned (train loss per epoch, the adapters'
gradient norm, the norm of B, which starts at 0), then a summary: mean +- standard error over seeds per mode,
and the paired difference LoRA - probe (and LoRA - k-mer) per seed with its mean +- standard error and how
many seeds LoRA won. Times are wall and this thread's CPU seconds (the machine may be shared). Everything is
written to ``--json``.

Usage::

    python benchmarks/bench_lora.py RUN_OR_MODEL --data ../shared/data/benchmarks/gue_prom_core_tata \\
        --seeds 0 1 2 3 4 --modes probe lora --json bench_lora.json

LoRA settings default to ``dnalm finetune --mode lora``'s (rank, alpha, targets, learning rate, epochs);
``--data`` is a folder with train/dev/test.csv, or with one data.csv (then a stratified 80/10/10 split seeded
with ``--split-seed`` is made, as ``dnalm finetune`` does, and kept for every seed).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from dnalm.config import DEFAULT_LORA_TARGETS, LoRAConfig
from dnalm.eval.finetune import LORA_DEFAULTS, finetune, kmer_baseline, load_sets
from dnalm.formats import load
from dnalm.models.lora import lora_modules

METRICS = ("accuracy", "mcc", "auroc")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="run directory, checkpoint directory or preset")
    ap.add_argument("--data", required=True, help="benchmark folder (train/dev/test.csv, or data.csv)")
    ap.add_argument("--modes", nargs="+", default=["probe", "lora"], choices=["probe", "lora", "full"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--split-seed", type=int, default=0, help="seed of the 80/10/10 split of a data.csv set")
    ap.add_argument("--lora-rank", type=int, default=LORA_DEFAULTS["rank"])
    ap.add_argument("--lora-alpha", type=float, default=LORA_DEFAULTS["alpha"])
    ap.add_argument("--lora-targets", default=",".join(DEFAULT_LORA_TARGETS))
    ap.add_argument("--lora-lr", type=float, default=None, help="LoRA learning rate (default: finetune's)")
    ap.add_argument("--lora-epochs", type=int, default=None, help="LoRA epochs (default: finetune's)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of full fine-tuning")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    d = Path(args.data)
    files = (d / "train.csv", d / "dev.csv", d / "test.csv") if (d / "dev.csv").is_file() else (d / "data.csv", None, None)
    data, classes, _ = load_sets(*files, split_seed=args.split_seed)
    model = load(args.model)
    n_model = sum(p.numel() for p in model.parameters())
    sizes = {k: len(v.labels) for k, v in data.items()}
    print(f"{d.name}: train/dev/test {sizes['train']}/{sizes['dev']}/{sizes['test']}; model {args.model} "
          f"({n_model:,} parameters); seeds {args.seeds}; torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, {platform.machine()}", flush=True)
    t0, c0 = time.perf_counter(), time.thread_time()
    base = kmer_baseline(data["train"], data["dev"], data["test"], seed=0)
    kmer = {"mode": f"k-mer LR (k={base['k']}, C={base['C']})", "test": base["test"], "dev": base["dev"],
            "seconds": time.perf_counter() - t0, "cpu_seconds": time.thread_time() - c0}
    print(f"  {kmer['mode']}: test " + _fmt(kmer["test"]), flush=True)
    lora = LoRAConfig(rank=args.lora_rank, alpha=args.lora_alpha, targets=args.lora_targets)
    runs: list[dict] = []
    for seed in args.seeds:
        for mode in args.modes:
            t0, c0 = time.perf_counter(), time.thread_time()
            kw = {"epochs": args.epochs} if mode == "full" else {}
            if mode == "lora":
                kw = {"lora": lora, "lr": args.lora_lr, **({"epochs": args.lora_epochs} if args.lora_epochs else {})}
            clf, rep = finetune(model, data["train"], data["dev"], data["test"], classes, mode=mode,
                                batch_size=args.batch_size, seed=seed, progress=False, baseline=False, **kw)  # fmt: skip
            row = {"mode": mode, "seed": seed, "test": rep["test"], "dev": rep["dev"],
                   "trainable": rep["trainable_parameters"], "best": rep["best_checkpoint"],
                   "seconds": time.perf_counter() - t0, "cpu_seconds": time.thread_time() - c0}
            if mode != "probe":
                row["train_loss"] = [round(h["train_loss"], 4) for h in rep["history"]]
            if mode == "lora":
                row["lora"] = {k: rep["lora"][k] for k in ("rank", "alpha", "targets", "adapted_layers")}
                row["lora"]["lr"], row["lora"]["epochs"] = rep["learning_rate"], len(rep["history"])
                row["adapter_grad_norm"] = [round(h["adapter_grad_norm"], 4) for h in rep["history"]]
                row["B_norm"] = round(math.sqrt(sum(float(m.lora_B.detach().square().sum())
                                                    for m in lora_modules(clf.lm).values())), 4)  # fmt: skip
            runs.append(row)
            extra = ""
            if mode != "probe":
                extra = f"; train loss by epoch {row['train_loss']}"
            if mode == "lora":
                extra += f"; adapter grad norm {row['adapter_grad_norm']}; |B| {row['B_norm']} (0 at start)"
            print(f"  seed {seed} {mode}: test {_fmt(row['test'])}; best {row['best']}; trainable "
                  f"{row['trainable']:,}; {row['seconds']:.0f} s wall, {row['cpu_seconds']:.0f} s CPU{extra}", flush=True)
    summary = _summary(runs, kmer, args.modes)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "data": str(d), "model": args.model, "sizes": sizes, "model_parameters": n_model, "seeds": args.seeds,
            "kmer": kmer, "runs": runs, "summary": summary}, indent=1) + "\n")  # fmt: skip
    return 0


def _fmt(t: dict) -> str:
    return f"accuracy {t['accuracy']:.4f}, MCC {t['mcc']:.4f}, AUROC {t['auroc']:.4f}"


def _mse(x: list[float]) -> tuple[float, float]:
    a = np.asarray(x, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else float("nan")


def _summary(runs: list[dict], kmer: dict, modes: list[str]) -> dict:
    """Mean +- SE per mode, and paired (same seed) differences of LoRA against the probe and the k-mer LR."""
    out: dict = {"modes": {}, "paired": {}}
    n = len({r["seed"] for r in runs})
    print(f"\nsummary over {n} seeds (mean +- standard error; test set)")
    print(f"{'':<34}{'accuracy':>18}{'MCC':>18}{'AUROC':>18}{'trainable':>11}{'CPU s':>8}")
    t = kmer["test"]
    print(f"{kmer['mode']:<34}" + "".join(f"{t[m]:>18.4f}" for m in METRICS) + f"{'-':>11}{kmer['cpu_seconds']:>8.0f}")
    for mode in modes:
        rs = [r for r in runs if r["mode"] == mode]
        stats = {m: _mse([r["test"][m] for r in rs]) for m in METRICS}
        out["modes"][mode] = {m: {"mean": s[0], "se": s[1]} for m, s in stats.items()}
        out["modes"][mode]["trainable"] = rs[0]["trainable"]
        name = mode if mode != "lora" else (f"lora r={rs[0]['lora']['rank']} a={rs[0]['lora']['alpha']:g} "
                                            f"lr={rs[0]['lora']['lr']:g} ep={rs[0]['lora']['epochs']}")
        print(f"{name:<34}" + "".join(f"{s[0]:>10.4f} +-{s[1]:.4f}" for s in stats.values())
              + f"{rs[0]['trainable']:>11,}{np.mean([r['cpu_seconds'] for r in rs]):>8.0f}")
    if "lora" in modes:
        lo = {r["seed"]: r for r in runs if r["mode"] == "lora"}
        refs = {"k-mer": {s: {"test": kmer["test"]} for s in lo}}
        if "probe" in modes:
            refs["probe"] = {r["seed"]: r for r in runs if r["mode"] == "probe"}
        for ref, by_seed in refs.items():
            row = {}
            for m in METRICS:
                diff = [lo[s]["test"][m] - by_seed[s]["test"][m] for s in sorted(lo)]
                mean, se = _mse(diff)
                row[m] = {"mean": mean, "se": se, "wins": int(sum(x > 0 for x in diff)), "n": len(diff)}
            out["paired"][f"lora - {ref}"] = row
            print(f"{'lora - ' + ref + ' (paired)':<34}" + "".join(
                f"{row[m]['mean']:>+10.4f} +-{row[m]['se']:.4f}" for m in METRICS)
                + "   wins " + "/".join(f"{row[m]['wins']}" for m in METRICS) + f" of {n}")  # fmt: skip
    return out


if __name__ == "__main__":
    raise SystemExit(main())
