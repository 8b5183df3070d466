"""Model checkpoints: a directory with ``config.json`` and ``model.safetensors``, written atomically.

Atomic means: everything is written into a temporary sibling directory, flushed to disk, and only then
renamed into place. A killed writer leaves at most a ``.tmp-*`` directory, never a checkpoint that
looks complete. Weights are safetensors only; nothing here unpickles.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model

from dnalm.config import ConfigError, to_dict
from dnalm.models import model_config_from_dict
from dnalm.models.lm import DNALM
from dnalm.tokenizer import Tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "dnalm"
CKPT_DIR = "checkpoints"  # RUN/checkpoints/step-NNNNNNN/: training checkpoints (dnalm.train.checkpoint)
FINAL_MODEL_DIR = "model"  # RUN/model/: the final model of a run
_STEP_RE = re.compile(r"^step-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: missing files, bad config, mismatched weights."""


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write a file via a temporary sibling, fsync and a rename: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically (see atomic_write_bytes)."""
    return atomic_write_bytes(path, text.encode())


def write_model_files(model: torch.nn.Module, directory: Path, extra: dict[str, Any] | None = None) -> None:
    """Write config.json + model.safetensors into an existing directory (no atomicity by itself)."""
    meta = {
        "format": FORMAT,
        "model": to_dict(model.config),
        "tokenizer": model.tokenizer.to_dict(),
        **(extra or {}),
    }
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    save_model(model, str(directory / WEIGHTS_FILE))  # handles tied (shared) tensors


def save_pretrained(model: torch.nn.Module, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Save a model as ``path/config.json`` + ``path/model.safetensors``, atomically."""
    with atomic_dir(path) as tmp:
        write_model_files(model, tmp, extra)
    return Path(path)


def is_native_checkpoint(path: Path) -> bool:
    cfg = path / CONFIG_FILE
    if not (cfg.is_file() and (path / WEIGHTS_FILE).is_file()):
        return False
    try:
        return json.loads(cfg.read_text()).get("format") == FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


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


def read_checkpoint_meta(path: str | Path, fmt: str, wrong_format: str) -> dict[str, Any]:
    """config.json of a checkpoint directory whose ``format`` must be ``fmt`` (``wrong_format`` says what
    to do otherwise); the weights file must exist too."""
    path = Path(path)
    cfg = path / CONFIG_FILE
    if not cfg.is_file():
        raise CheckpointError(f"{path}: no {CONFIG_FILE}; {wrong_format}")
    if not (path / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{path}: no {WEIGHTS_FILE}; the checkpoint is incomplete")
    try:
        meta = json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt or "model" not in meta:
        found = meta.get("format", "unknown") if isinstance(meta, dict) else "unknown"
        raise CheckpointError(f"{path}: a {found!r} checkpoint; {wrong_format}")
    return meta


def load_weights(module: torch.nn.Module, path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load ``path/model.safetensors`` into ``module`` strictly (every key and shape must match), move it
    to ``device`` and put it in eval mode."""
    weights = Path(path) / WEIGHTS_FILE
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights}: cannot read safetensors ({e})") from None
    check_state_dict(module, state, str(weights))
    module.load_state_dict(state)
    return module.to(device).eval()


def load_pretrained(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a native checkpoint directory into a DNALM (strict: every key must match)."""
    meta = read_checkpoint_meta(path, FORMAT, "not a dnalm checkpoint (config.json + model.safetensors)")
    try:
        config = model_config_from_dict(meta["model"], where=f"{Path(path) / CONFIG_FILE}:model")
        tokenizer = Tokenizer(**meta.get("tokenizer", {}))
    except (ConfigError, TypeError) as e:
        raise CheckpointError(str(e)) from None
    return load_weights(DNALM(config, tokenizer=tokenizer), path, device)


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Raise CheckpointError naming missing/unexpected keys and shape mismatches."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append("missing keys: " + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected[:10]) + (" ..." if len(unexpected) > 10 else ""))
    if shapes:
        problems.append("shape mismatch: " + "; ".join(shapes[:10]))
    if problems:
        raise CheckpointError(f"{where}: " + " | ".join(problems))
