"""Checkpoint formats: foreign layouts (HyenaDNA Hugging Face folders, and Evo 1 / Evo 2 as they arrive)
mapped onto dnalm's own models, and the registry that ``dnalm.load``, ``dnalm convert`` and
``dnalm export --format`` consult. dnalm's own format (config.json + model.safetensors) is
``dnalm.checkpoint``.

A new format is one module here that ends with ``FORMAT = CheckpointFormat(...)``
(:class:`~dnalm.formats.base.CheckpointFormat`) and one :func:`register_format` call below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dnalm.checkpoint import (
    CheckpointError,
    is_adapter_dir,
    is_native_checkpoint,
    latest_model_dir,
    load_pretrained,
    read_adapter,
    read_config_json,
)
from dnalm.config import to_dict
from dnalm.formats import evo, hyenadna_hf
from dnalm.formats.base import CheckpointFormat
from dnalm.models import get_preset, list_presets, model_config_from_dict
from dnalm.models.lm import DNALM
from dnalm.models.lora import LoRAError, apply_adapter, merge_lora

__all__ = [
    "CheckpointFormat", "FORMATS", "register_format", "get_format", "detect_format", "load", "load_base_model",
    "load_adapter_model", "model_config",
]  # fmt: skip

FORMATS: dict[str, CheckpointFormat] = {}


def register_format(fmt: CheckpointFormat) -> CheckpointFormat:
    if fmt.name in FORMATS and FORMATS[fmt.name] is not fmt:
        raise ValueError(f"checkpoint format {fmt.name!r} is already registered")
    FORMATS[fmt.name] = fmt
    return fmt


def get_format(name: str) -> CheckpointFormat:
    """The registered format ``name``; CheckpointError listing the known ones otherwise."""
    if name not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {name!r}; known: {', '.join(sorted(FORMATS))}")
    return FORMATS[name]


def detect_format(path: str | Path) -> CheckpointFormat | None:
    """The first registered format that recognises ``path``, or None."""
    p = Path(path)
    return next((fmt for fmt in FORMATS.values() if fmt.detect(p)), None)


register_format(hyenadna_hf.FORMAT)
register_format(evo.EVO2_FORMAT)
register_format(evo.EVO1_FORMAT)


def load(path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None) -> nn.Module:
    """Load a model from a preset name (fresh weights), a checkpoint directory or a run directory.

    A run directory resolves to its final model, else its newest checkpoint. A LoRA adapter directory of a
    language model (``dnalm train`` with ``train.lora``) loads its base model with the adapters merged. A folder in a registered
    foreign format (a HyenaDNA Hugging Face folder, ...) loads through that format: a DNALM for a language
    model, a task model (e.g. ``HyenaDNAClassifier``) for a classification checkpoint. Raises
    ``FileNotFoundError`` or ``CheckpointError`` naming the problem.

    ``dtype`` None: float32 for presets and dnalm's own checkpoints; the stored dtypes for formats that keep
    them (Evo 1 / Evo 2: bf16 as released, memory-mapped, each block computing in float32 one at a time or in
    bf16 where this CPU is fast in it; see ``DNALM.compute``). A dtype converts the weights to it
    (``torch.float32``: the whole model in float32).
    """
    p = Path(path)
    fmt = detect_format(p) if p.is_dir() and not is_native_checkpoint(p) else None
    if fmt is not None and fmt.stored_dtype:
        return fmt.load(p, device, dtype=dtype)
    model = _load(path, device)
    return model if dtype is None else model.to(dtype)


def _load(path: str | Path, device: str) -> nn.Module:
    p = Path(path)
    if not p.exists():
        if str(path) in list_presets():
            return DNALM(get_preset(str(path))).to(device)
        raise FileNotFoundError(f"{path}: no such file, directory or preset (presets: {', '.join(list_presets())})")
    if not p.is_dir():
        raise CheckpointError(f"{path}: is a file; expected a checkpoint or run directory, or a preset name")
    if is_adapter_dir(p):
        return load_adapter_model(p, device)
    if (p / "config.json").is_file():
        read_config_json(p / "config.json")  # a damaged config.json is named as such, not as "no checkpoint"
    if is_native_checkpoint(p):
        return load_pretrained(p, device)
    fmt = detect_format(p)
    if fmt is not None:
        return fmt.load(p, device)
    run_model = latest_model_dir(p)
    if run_model is not None:
        return load_pretrained(run_model, device)
    raise CheckpointError(f"{path}: not a dnalm checkpoint or run directory (no config.json + model.safetensors)")


def load_base_model(meta: dict, where: str | Path, device: str = "cpu", base: str | Path | None = None) -> nn.Module:
    """The base model an adapter (``adapter.json`` = ``meta``) was trained on: ``base`` if given, else the
    path or preset it names; its config must be the one the adapter recorded."""
    src = base if base is not None else meta["base_model"]
    try:
        model = load(src, device)
    except FileNotFoundError:
        raise CheckpointError(
            f"{where}: the adapter's base model {src} is not there; give its path (--base PATH)"
        ) from None
    if not isinstance(model, DNALM):
        raise CheckpointError(f"{where}: the base {src} is a {type(model).__name__}, not a language model")
    have, want = to_dict(model.config), meta["base_config"]
    if have != want:
        diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
        raise CheckpointError(f"{where}: the base model {src} differs from the adapter's base in {', '.join(diff)}")
    return model


def load_adapter_model(path: str | Path, device: str = "cpu", base: str | Path | None = None, merge: bool = True) -> nn.Module:
    """A language model with the LoRA adapter at ``path`` applied: merged into the weights (``merge``), or as
    separate ``LoRALinear`` modules. ``base`` overrides where the base model is read from."""
    meta, tensors = read_adapter(path)
    if meta.get("kind", "lm") != "lm":
        raise CheckpointError(f"{path}: a {meta.get('kind')} adapter (use dnalm predict, or dnalm export --merge-lora)")
    model = load_base_model(meta, path, device, base)
    try:
        apply_adapter(model, meta["lora"], meta["adapted"], tensors, str(path), meta.get("base_fingerprint"))
    except LoRAError as e:
        raise CheckpointError(str(e)) from None
    if merge:
        merge_lora(model)
    return model.eval()


def model_config(name: str | Path) -> tuple[Any, str]:
    """(model config, description) of a preset name, run directory, checkpoint directory or foreign checkpoint
    folder, read without building the model or loading its weights (what ``dnalm info`` and the memory checks use)."""
    name = str(name)
    p = Path(name)
    if not p.exists():
        if name in list_presets():
            return get_preset(name), f"preset {name}"
        raise FileNotFoundError(f"{name}: no such run, checkpoint or preset")
    fmt = detect_format(p) if p.is_dir() else None
    if fmt is not None:  # a foreign checkpoint (a HyenaDNA -hf folder, ...): its own config layout
        config = fmt.read_config(p) if fmt.read_config is not None else None
        return (config if config is not None else load(p).config), f"{fmt.description}: {p}"
    model_dir = p if (p / "config.json").is_file() else latest_model_dir(p)
    if model_dir is None:
        raise CheckpointError(f"{name}: no model found (config.json + model.safetensors)")
    meta = read_config_json(model_dir / "config.json")
    if "model" not in meta:
        raise CheckpointError(f"{model_dir / 'config.json'}: no 'model' section; not a dnalm checkpoint config")
    return model_config_from_dict(meta["model"], where=f"{model_dir / 'config.json'}:model"), f"checkpoint {model_dir}"
