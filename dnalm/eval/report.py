"""The glue behind ``dnalm eval`` and ``dnalm info``: resolve a run/model/preset, score, format."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from dnalm.checkpoint import CheckpointError, atomic_write_text
from dnalm.config import ConfigError, RunConfig
from dnalm.train.config import run_config_from_dict
from dnalm.eval.likelihood import evaluate_lm, markov_report


def run_config_of(path: str | Path) -> RunConfig | None:
    """The run config snapshot of a run directory (or of the run a checkpoint belongs to)."""
    from dnalm.train.trainer import CONFIG_SNAPSHOT

    p = Path(path)
    for cand in (p, p.parent, p.parent.parent):
        snap = cand / CONFIG_SNAPSHOT
        if snap.is_file():
            return run_config_from_dict(yaml.safe_load(snap.read_text()))
    return None


def _store_of(run: RunConfig | None, explicit: str | None):
    from dnalm.data.store import TokenStore

    if explicit:
        return TokenStore.open(explicit)
    if run is None:
        return None
    path = run.data.store or str(Path(run.out_dir) / "store")
    return TokenStore.open(path) if Path(path).exists() else None


def evaluate_command(
    model_path: str,
    fasta: str | None = None,
    store: str | None = None,
    split: str = "validation",
    seq_len: int | None = None,
    batch_size: int = 8,
    markov_order: int = 10,
    json_out: str | None = None,
    progress: bool = True,
) -> str:
    """Score a FASTA file or a store split with a model, and the Markov baselines beside it."""
    import dnalm
    from dnalm.data.store import TokenStore, prepare

    model = dnalm.load(model_path)
    run = run_config_of(model_path) if Path(model_path).exists() else None
    seq_len = seq_len or (run.data.seq_len if run else min(model.config.max_len, 1024))
    if seq_len > model.config.max_len:
        raise ConfigError(f"--seq-len {seq_len} exceeds the model's maximum length {model.config.max_len}")
    train_store = _store_of(run, store)
    splits = [s.strip() for s in split.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="dnalm-eval-") as tmp:
        if fasta:
            prepare([fasta], Path(tmp) / "store", val_fraction=0.0, test_fraction=0.0, progress=False)
            eval_store = TokenStore.open(Path(tmp) / "store")
            eval_splits, target = ["train"], fasta
        elif train_store is not None:
            eval_store, eval_splits, target = train_store, splits, f"{split} split of {train_store.path}"
        else:
            raise CheckpointError(f"{model_path}: no store to evaluate on; pass --fasta or --store")
        lm = evaluate_lm(model, eval_store, eval_splits, seq_len, batch_size, progress=progress)
        result: dict[str, Any] = {"target": target, "seq_len": seq_len, **lm.to_dict()}
        if markov_order > 0 and train_store is not None:
            result["markov_bits_per_base"] = markov_report(train_store, eval_store, eval_splits, markov_order)
    if json_out:
        atomic_write_text(json_out, json.dumps(result, indent=2) + "\n")
    return format_eval(result)


def format_eval(result: dict[str, Any]) -> str:
    lines = [
        f"evaluated: {result['target']} ({result['bases']:,} bases, windows of {result['seq_len']})",
        f"  model            loss {result['loss']:.4f} nats   perplexity {result['perplexity']:.4f}   "
        f"bits/base {result['bits_per_base']:.4f}",
    ]
    markov = result.get("markov_bits_per_base")
    if markov:
        best = min(markov, key=markov.get)
        for k, bpb in markov.items():
            mark = "  <- best" if k == best else ""
            lines.append(f"  Markov order {int(k):2d}                                             bits/base {bpb:.4f}{mark}")
        delta = result["bits_per_base"] - markov[best]
        verdict = "beats" if delta < 0 else "does not beat"
        lines.append(f"  the model {verdict} the best Markov baseline by {abs(delta):.4f} bits/base")
    else:
        lines.append("  (no Markov baseline: no training split available; pass --store)")
    return "\n".join(lines)


def model_config_of(name: str) -> tuple[Any, str]:
    """(model config, description) from a preset name, run directory or checkpoint directory."""
    from dnalm.models import model_config_from_dict
    from dnalm.models import get_preset, list_presets
    from dnalm.train.checkpoint import latest_model_dir

    p = Path(name)
    if not p.exists():
        if name in list_presets():
            return get_preset(name), f"preset {name}"
        raise FileNotFoundError(f"{name}: no such run, checkpoint or preset")
    model_dir = p if (p / "config.json").is_file() else latest_model_dir(p)
    if model_dir is None:
        raise CheckpointError(f"{name}: no model found (config.json + model.safetensors)")
    meta = json.loads((model_dir / "config.json").read_text())
    return model_config_from_dict(meta["model"]), f"checkpoint {model_dir}"


def info_report(name: str | None, seq_len: int | None = None, batch_size: int = 1, list_presets: bool = False) -> str:
    """Parameters, FLOPs per token and memory of a model (built on the meta device: no allocation)."""
    from dnalm.models.lm import DNALM
    from dnalm.models import list_presets as presets

    if list_presets or name is None:
        return "presets:\n" + "\n".join(f"  {p}" for p in presets())
    config, what = model_config_of(name)
    with torch.device("meta"):
        model = DNALM(config)
    n_params = model.num_parameters()
    n_embed = model.embed.weight.numel()
    seq_len = seq_len or config.max_len
    lines = [
        f"{what}: family {config.family}, {getattr(config, 'n_layer', '?')} layers, d_model {config.d_model}, "
        f"max length {config.max_len:,}",
        f"  parameters        {n_params:,} ({n_params / 1e6:.2f}M; {n_params - n_embed:,} without the embedding)",
    ]
    lines += _flops_and_memory_lines(config, n_params, seq_len, batch_size)
    return "\n".join(lines)


def _flops_and_memory_lines(config: Any, n_params: int, seq_len: int, batch_size: int) -> list[str]:
    """FLOPs per token (analytic, SPEC section 4 terms) and the planner's single-process memory model."""
    from dnalm.scaling.flops import flops_per_token
    from dnalm.scaling.plan import memory_per_gpu, shape_from_config

    flops = flops_per_token(config, seq_len, batch_size)
    lines = [
        f"  FLOPs per token   forward {flops.forward:.4g} (matmul {flops.matmul:.4g}, FFT {flops.fft:.4g}), "
        f"training {flops.training:.4g}  [6N = {flops.six_n:.4g}] at seq_len {seq_len:,}",
        f"  inference weights {4 * n_params / 2**30:.3f} GiB (fp32)",
    ]
    shape = shape_from_config(config)
    for ckpt in (False, True):
        mem = memory_per_gpu(shape, seq_len, "DDP", activation_checkpointing=ckpt, micro_batch=batch_size)
        what = "with" if ckpt else "without"
        lines.append(
            f"  training memory   {mem.total / 2**30:.2f} GiB {what} activation checkpointing (batch {batch_size}, "
            f"seq_len {seq_len:,}, bf16 activations + fp32 AdamW state; see `dnalm plan`)"
        )
    return lines
