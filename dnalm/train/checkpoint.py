"""Training checkpoints inside a run directory.

Layout::

    RUN/checkpoints/step-0000200/   config.json, model.safetensors   (the model, loadable on its own)
                                    optimizer.pt                      (AdamW state; tensors only)
                                    state.json                        (step, tokens, sampler, schedule, RNG)
    RUN/model/                      the final model (config.json + model.safetensors)

Each checkpoint directory is written atomically (see dnalm.checkpoint.atomic_dir), so a killed run
leaves either a complete checkpoint or none. ``optimizer.pt`` is read with ``weights_only=True``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from dnalm.checkpoint import CheckpointError, atomic_dir, is_native_checkpoint, write_model_files

CKPT_DIR = "checkpoints"
FINAL_MODEL_DIR = "model"
_STEP_RE = re.compile(r"^step-(\d+)$")


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found) if (p / "state.json").is_file()]


def latest_model_dir(run_dir: str | Path) -> Path | None:
    """The model a run directory stands for: its final model, else its newest checkpoint."""
    run_dir = Path(run_dir)
    if is_native_checkpoint(run_dir / FINAL_MODEL_DIR):
        return run_dir / FINAL_MODEL_DIR
    for ckpt in reversed(checkpoint_dirs(run_dir)):
        if is_native_checkpoint(ckpt):
            return ckpt
    return None


def save_training_checkpoint(
    run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict, keep_last: int
) -> Path:
    path = Path(run_dir) / CKPT_DIR / f"step-{step:07d}"
    with atomic_dir(path) as tmp:
        write_model_files(model, tmp, {"step": step})
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(state) + "\n")
    for old in checkpoint_dirs(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def load_training_state(ckpt: Path) -> tuple[dict[str, torch.Tensor], dict, dict[str, Any]]:
    """(model state dict, optimizer state dict, state.json) of a checkpoint directory."""
    from safetensors.torch import load_file

    try:
        model_state = load_file(str(ckpt / "model.safetensors"))
        optim_state = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
        state = json.loads((ckpt / "state.json").read_text())
    except (OSError, json.JSONDecodeError, RuntimeError) as e:
        raise CheckpointError(f"{ckpt}: cannot resume from this checkpoint ({e})") from None
    return model_state, optim_state, state
