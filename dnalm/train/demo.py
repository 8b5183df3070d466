"""The embedded demo's run: E. coli K-12 MG1655, a small HyenaDNA, a few minutes on a laptop CPU.

``demo_config()`` is the run; ``configs/demo.yaml`` is the same run written as YAML for users to copy
(a test keeps the two identical). ``dnalm demo`` (dnalm/cli/run.py) trains it and reports.
"""

from __future__ import annotations

from dnalm.config import DataConfig, RunConfig, TrainConfig
from dnalm.models.hyena import HyenaConfig


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
