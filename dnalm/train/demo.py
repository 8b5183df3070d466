"""The embedded demo's run: E. coli K-12 MG1655, a small StripedHyena 2, under ten minutes on a laptop CPU.

``demo_config()`` is the run; ``configs/demo.yaml`` is the same run written as YAML for users to copy
(a test keeps the two identical). ``dnalm demo`` (dnalm/cli/run.py) trains it and reports.

The recipe: the FLOP-matched sweep (BENCHMARKS.md) found StripedHyena 2 and HyenaDNA ahead at small
budgets, and its smallest models best; short windows with large batches buy the most tokens per second on
a CPU. So: StripedHyena 2 (SE, MR, LI, attention) 4 layers wide 24 (30k parameters), windows of 256 bases,
batch 64. Precision and threads are left to ``auto`` (dnalm/runtime.py): bf16 autocast only where the
CPU runs it faster, threads from the free cores. Never set a precision here: bf16 autocast is several
times slower than float32 on CPUs without native bf16 (AVX2-only x86, most ARM).
"""

from __future__ import annotations

from dnalm.config import DataConfig, RunConfig, TrainConfig
from dnalm.models.striped_hyena import StripedHyenaConfig

DEMO_MARGIN = 0.02  # bits/base under the best Markov chain that the demo promises


def demo_config(out_dir: str = "runs/demo") -> RunConfig:
    """StripedHyena 2 (4 layers, width 24, windows of 256) on E. coli with the last 10% of the genome held out."""
    return RunConfig(
        model=StripedHyenaConfig(version=2, n_layer=4, d_model=24, n_head=1, max_len=258),
        data=DataConfig(seq_len=256, holdout_fraction=0.1, rc_augment=True),
        train=TrainConfig(
            steps=1400,
            batch_size=64,
            lr=3e-3,
            warmup_steps=50,
            weight_decay=0.1,
            eval_every=700,
            eval_tokens=100_000,
            ckpt_every=200,
            log_every=10,
            max_time_minutes=9.0,
        ),
        out_dir=out_dir,
    )
