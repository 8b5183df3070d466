"""The embedded demo: E. coli K-12 MG1655, a small HyenaDNA, a few minutes on a laptop CPU.

``demo_config()`` is the run; ``configs/demo.yaml`` is the same run written as YAML for users to copy
(a test keeps the two identical).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from dnalm.checkpoint import atomic_write_text
from dnalm.config import DataConfig, RunConfig, TrainConfig
from dnalm.models.hyena import HyenaConfig
from dnalm.eval.likelihood import evaluate_lm, markov_report
from dnalm.eval.report import format_eval


def demo_config(out_dir: str = "runs/demo") -> RunConfig:
    """HyenaDNA (2 layers, width 128, context 1k) on E. coli with the last 10% of the genome held out."""
    return RunConfig(
        model=HyenaConfig(n_layer=2, d_model=128, l_max=1026),
        data=DataConfig(seq_len=1024, holdout_fraction=0.1, rc_augment=True),
        train=TrainConfig(
            steps=800,
            batch_size=16,
            lr=2e-3,
            bf16=True,  # bf16 autocast: 1.5x faster matmuls on CPUs with AVX512-BF16; FFTs and loss stay float32
            warmup_steps=50,
            weight_decay=0.1,
            eval_every=400,
            eval_tokens=100_000,
            ckpt_every=200,
            log_every=10,
            max_time_minutes=12.0,
        ),
        out_dir=out_dir,
    )


def run_demo(out_dir: str = "runs/demo", minutes: float | None = None, steps: int | None = None,
             restart: bool = False) -> dict:
    """Train the demo model, then score the held-out 10% (validation + test) with it and with
    order-0..10 Markov chains fitted on the training 90%. Prints and writes RUN/eval.json."""
    from dnalm.train.trainer import prepare_data, train

    config = demo_config(out_dir)
    if minutes is not None:
        config.train.max_time_minutes = minutes
    if steps is not None:
        config.train.steps = steps
        config.train.warmup_steps = max(1, min(config.train.warmup_steps, steps // 10))
    t0 = time.time()
    result = train(config, resume=not restart)
    store = prepare_data(config, progress=False)
    import dnalm

    model = dnalm.load(result.run_dir)
    held_out = ["validation", "test"]
    print("scoring the held-out 10% of the genome ...", flush=True)
    lm = evaluate_lm(model, store, held_out, config.data.seq_len, batch_size=16, progress=True)
    report = {
        "target": "E. coli K-12 MG1655, last 10% of the genome (validation + test)",
        "seq_len": config.data.seq_len,
        **lm.to_dict(),
        "markov_bits_per_base": markov_report(store, store, held_out, max_order=10),
        "train_steps": result.steps,
        "train_tokens": result.tokens,
        "wall_time_s": time.time() - t0,
    }
    atomic_write_text(Path(out_dir) / "eval.json", json.dumps(report, indent=2) + "\n")
    print(format_eval(report))
    print(f"run directory: {out_dir} (config.yaml, metrics.jsonl, loss.png, checkpoints/, model/, eval.json)")
    return report
