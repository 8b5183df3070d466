"""Checkpoint formats: foreign layouts (HyenaDNA Hugging Face folders, and Evo 1 / Evo 2 as they arrive)
mapped onto dnalm's own models, and the registry that ``dnalm.load``, ``dnalm convert`` and
``dnalm export --format`` consult. dnalm's own format (config.json + model.safetensors) is
``dnalm.checkpoint``.

A new format is one module here that ends with ``FORMAT = CheckpointFormat(...)``
(:class:`~dnalm.formats.base.CheckpointFormat`) and one :func:`register_format` call below.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from dnalm.checkpoint import CheckpointError, is_native_checkpoint, latest_model_dir, load_pretrained, read_config_json
from dnalm.formats import evo, hyenadna_hf
from dnalm.formats.base import CheckpointFormat
from dnalm.models import get_preset, list_presets
from dnalm.models.lm import DNALM

__all__ = ["CheckpointFormat", "FORMATS", "register_format", "get_format", "detect_format", "load"]

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


def load(path: str | Path, device: str = "cpu") -> nn.Module:
    """Load a model from a preset name (fresh weights), a checkpoint directory or a run directory.

    A run directory resolves to its final model, else its newest checkpoint. A folder in a registered
    foreign format (a HyenaDNA Hugging Face folder, ...) loads through that format: a DNALM for a language
    model, a task model (e.g. ``HyenaDNAClassifier``) for a classification checkpoint. Raises
    ``FileNotFoundError`` or ``CheckpointError`` naming the problem.
    """
    p = Path(path)
    if not p.exists():
        if str(path) in list_presets():
            return DNALM(get_preset(str(path))).to(device)
        raise FileNotFoundError(f"{path}: no such file, directory or preset (presets: {', '.join(list_presets())})")
    if not p.is_dir():
        raise CheckpointError(f"{path}: is a file; expected a checkpoint or run directory, or a preset name")
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
