"""Model checkpoints: a directory with ``config.json`` and ``model.safetensors``, written atomically.

Atomic means: everything is written into a temporary sibling directory, flushed to disk, and only then
renamed into place (:mod:`dnalm.outputs`). A killed writer leaves at most a ``.tmp-*`` directory, never a
checkpoint that looks complete. Weights are safetensors only; nothing here unpickles.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model

from dnalm.config import ConfigError, to_dict
from dnalm.models import SPECS, model_config_from_dict
from dnalm.models.lm import DNALM
from dnalm.outputs import atomic_dir, atomic_write_bytes, atomic_write_text, fsync_dir  # noqa: F401 (re-exported)
from dnalm.tokenizer import Tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "dnalm"
CKPT_DIR = "checkpoints"  # RUN/checkpoints/step-NNNNNNN/: training checkpoints (dnalm.train.checkpoint)
FINAL_MODEL_DIR = "model"  # RUN/model/: the final model of a run
_STEP_RE = re.compile(r"^step-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: missing files, bad config, mismatched weights."""


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
        meta = json.loads(cfg.read_text())
    except (OSError, ValueError):  # unreadable, not UTF-8 or not JSON
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def read_config_json(path: str | Path) -> dict[str, Any]:
    """``path`` (a config.json) as a dict; CheckpointError naming the file when it is unreadable, not UTF-8,
    not JSON, or JSON whose top level is not an object."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not UTF-8 text (byte {e.start + 1}); not a valid config.json") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: the top level is a JSON {type(meta).__name__}, not an object (a mapping of settings)")
    return meta


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
    meta = read_config_json(cfg)
    if meta.get("format") != fmt or "model" not in meta:
        raise CheckpointError(f"{path}: a {meta.get('format', 'unknown')!r} checkpoint; {wrong_format}")
    return meta


def load_weights(
    module: torch.nn.Module, path: str | Path, device: str | torch.device = "cpu", transform: Any = None
) -> torch.nn.Module:
    """Load ``path/model.safetensors`` into ``module`` strictly (every key and shape must match), move it
    to ``device`` and put it in eval mode. ``transform(state)`` (optional) maps an older layout first."""
    weights = Path(path) / WEIGHTS_FILE
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights}: cannot read safetensors ({e})") from None
    if transform is not None:
        try:
            state = transform(state)
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{weights}: cannot convert the older layout ({e})") from None
    check_state_dict(module, state, str(weights))
    check_finite(state, str(weights))
    module.load_state_dict(state)
    return module.to(device).eval()


def check_finite(state: dict[str, torch.Tensor], where: str) -> None:
    """CheckpointError naming the tensors that hold NaN or infinite values (damaged weights would
    otherwise print 'bits/base nan' and exit 0)."""
    bad = []
    for k, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad.append(f"{k} ({int((~torch.isfinite(t)).sum())} of {t.numel()})")
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise CheckpointError(f"{where}: non-finite (NaN or infinite) weights in {shown}; the checkpoint is damaged")


def load_pretrained(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a native checkpoint directory into a DNALM (strict: every key must match)."""
    meta = read_checkpoint_meta(path, FORMAT, "not a dnalm checkpoint (config.json + model.safetensors)")
    model_dict, transform = meta["model"], None
    spec = SPECS.get(model_dict.get("family")) if isinstance(model_dict, dict) else None
    if spec is not None and spec.upgrade is not None:
        model_dict, transform, note = spec.upgrade(model_dict)
        if note:
            warnings.warn(f"{path}: {note}", stacklevel=2)
    try:
        config = model_config_from_dict(model_dict, where=f"{Path(path) / CONFIG_FILE}:model")
        tokenizer = Tokenizer(**meta.get("tokenizer", {}))
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(str(e)) from None
    fn = None if transform is None else (lambda state: transform(state, config))
    return load_weights(DNALM(config, tokenizer=tokenizer), path, device, transform=fn)


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


# ------------------------------------------------------------------------------------------ LoRA adapters

ADAPTER_FILE = "adapter.safetensors"
ADAPTER_META = "adapter.json"
ADAPTER_FORMAT = "dnalm-lora-adapter"


def is_adapter_dir(path: str | Path) -> bool:
    """True for a directory written by :func:`save_adapter` (adapter.json + adapter.safetensors)."""
    p = Path(path)
    if not ((p / ADAPTER_META).is_file() and (p / ADAPTER_FILE).is_file()):
        return False
    try:
        meta = json.loads((p / ADAPTER_META).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == ADAPTER_FORMAT


def save_adapter(
    path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any], extra_files: dict[str, str] | None = None
) -> Path:
    """Write a LoRA adapter directory atomically: ``adapter.safetensors`` (the adapter tensors and any task
    head) and ``adapter.json`` (``meta``: the base model's identity, rank, alpha, targets, ...)."""
    from safetensors.torch import save_file

    with atomic_dir(path) as tmp:
        (tmp / ADAPTER_META).write_text(json.dumps({"format": ADAPTER_FORMAT, **meta}, indent=2) + "\n")
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / ADAPTER_FILE))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return Path(path)


def read_adapter(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(adapter.json, adapter tensors) of an adapter directory; CheckpointError naming what is wrong."""
    p = Path(path)
    if not is_adapter_dir(p):
        raise CheckpointError(f"{p}: not a LoRA adapter directory (adapter.json + adapter.safetensors)")
    meta = read_config_json(p / ADAPTER_META)
    for key in ("base_model", "base_config", "lora", "adapted"):
        if key not in meta:
            raise CheckpointError(f"{p / ADAPTER_META}: no {key!r}; the adapter file is incomplete")
    try:
        tensors = load_file(str(p / ADAPTER_FILE))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{p / ADAPTER_FILE}: cannot read safetensors ({e})") from None
    check_finite(tensors, str(p / ADAPTER_FILE))
    return meta, tensors
