"""LoRA fine-tuning beside the linear probe (and full fine-tuning) and the k-mer baseline, in one run.

One process reads a labelled benchmark set once, loads the model once, and trains each mode on the same
train/dev/test split (``dnalm.eval.finetune.finetune``: class-weighted cross-entropy, the dev set picks the
checkpoint); the k-mer logistic regression (k and C chosen on dev) is fitted once on the same split. It prints
test accuracy / MCC / AUROC, trainable parameters and time (wall and this thread's CPU time: the machine may
be shared) per mode, and writes them to ``--json``.

Usage::

    python benchmarks/bench_lora.py RUN_OR_MODEL --data ../shared/data/benchmarks/gue_prom_core_tata \\
        --modes probe lora full --lora-rank 8 --lora-alpha 16 --epochs 3 --json bench_lora.json

``--data`` is a folder with train/dev/test.csv, or with one data.csv (then a stratified, seeded 80/10/10
split is made, as ``dnalm finetune`` does).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from dnalm.config import LoRAConfig
from dnalm.eval.finetune import finetune, kmer_baseline, load_sets
from dnalm.formats import load


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="run directory, checkpoint directory or preset")
    ap.add_argument("--data", required=True, help="benchmark folder (train/dev/test.csv, or data.csv)")
    ap.add_argument("--modes", nargs="+", default=["probe", "lora"], choices=["probe", "lora", "full"])
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--lora-alpha", type=float, default=16.0)
    ap.add_argument("--lora-targets", default="in_proj,out_proj,Wqkv,mlp.*")
    ap.add_argument("--lora-lr", type=float, default=None, help="LoRA learning rate (default: finetune's 1e-3)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    d = Path(args.data)
    files = (d / "train.csv", d / "dev.csv", d / "test.csv") if (d / "dev.csv").is_file() else (d / "data.csv", None, None)
    data, classes, _ = load_sets(*files, seed=args.seed)
    model = load(args.model)
    n_model = sum(p.numel() for p in model.parameters())
    sizes = {k: len(v.labels) for k, v in data.items()}
    print(f"{d.name}: train/dev/test {sizes['train']}/{sizes['dev']}/{sizes['test']}; model {args.model} "
          f"({n_model:,} parameters); torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.machine()}")
    rows = []
    t0, c0 = time.perf_counter(), time.thread_time()
    base = kmer_baseline(data["train"], data["dev"], data["test"], seed=args.seed)
    rows.append({"mode": f"k-mer LR (k={base['k']}, C={base['C']})", "test": base["test"], "trainable": None,
                 "seconds": time.perf_counter() - t0, "cpu_seconds": time.thread_time() - c0})
    _show(rows[-1])
    lora = LoRAConfig(rank=args.lora_rank, alpha=args.lora_alpha, targets=args.lora_targets)
    for mode in args.modes:
        t0, c0 = time.perf_counter(), time.thread_time()
        _, rep = finetune(
            model, data["train"], data["dev"], data["test"], classes, mode=mode, epochs=args.epochs,
            batch_size=args.batch_size, seed=args.seed, progress=False, baseline=False,
            lora=lora if mode == "lora" else None, lr=args.lora_lr if mode == "lora" else None,
        )  # fmt: skip
        name = mode if mode != "lora" else f"lora (r={lora.rank}, alpha={lora.alpha:g}, {rep['lora']['adapted_layers']} layers)"
        rows.append({"mode": name, "test": rep["test"], "dev": rep["dev"], "trainable": rep["trainable_parameters"],
                     "best": rep["best_checkpoint"], "seconds": time.perf_counter() - t0,
                     "cpu_seconds": time.thread_time() - c0})
        _show(rows[-1])
    print(f"{'':<44}{'accuracy':>9}{'MCC':>9}{'AUROC':>9}{'trainable':>12}{'wall s':>9}{'CPU s':>8}")
    for r in rows:
        t = r["test"]
        tr = f"{r['trainable']:,}" if r["trainable"] is not None else "-"
        print(f"{r['mode']:<44}{t['accuracy']:>9.4f}{t['mcc']:>9.4f}{t['auroc']:>9.4f}{tr:>12}"
              f"{r['seconds']:>9.1f}{r['cpu_seconds']:>8.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"data": str(d), "model": args.model, "sizes": sizes,
                                               "model_parameters": n_model, "rows": rows}, indent=1) + "\n")
    return 0


def _show(r: dict) -> None:
    t = r["test"]
    print(f"  {r['mode']}: test accuracy {t['accuracy']:.4f}, MCC {t['mcc']:.4f}, AUROC {t['auroc']:.4f}; "
          f"trainable {r['trainable']}; {r['seconds']:.0f} s wall, {r['cpu_seconds']:.0f} s CPU", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
