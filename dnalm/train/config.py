"""Reading a run config: a YAML file (or a plain dict) -> :class:`dnalm.config.RunConfig`.

The ``model`` section is built by its family's config class (``dnalm.models.model_config_from_dict``);
``preset: NAME`` starts from a registered preset, and a partial ``model`` section beside it overrides that
preset's fields.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from dnalm.checkpoint import CheckpointError, latest_model_dir, read_config_json
from dnalm.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    from_dict,
    read_yaml_mapping,
    to_dict,
    upgrade_legacy_keys,
)
from dnalm.models import get_preset, model_config_from_dict


def model_dict_of(source: str) -> dict:
    """The model section of a saved model: a run or checkpoint directory's config.json, or the config of a
    model in a registered foreign format (read without the weights where the format can)."""
    p = Path(source)
    if not p.exists():
        raise ConfigError(f"train.init_from {source}: no such directory")
    model_dir = latest_model_dir(p) or (p if (p / "config.json").is_file() else None)
    try:
        if model_dir is not None:
            meta = read_config_json(model_dir / "config.json")
            if isinstance(meta.get("model"), dict):
                return meta["model"]
        from dnalm.formats import detect_format, load

        fmt = detect_format(p)
        if fmt is None:
            raise ConfigError(f"train.init_from {source}: not a dnalm run, checkpoint or known model format")
        config = fmt.read_config(p) if fmt.read_config is not None else None
        return to_dict(config if config is not None else load(p).config)
    except CheckpointError as e:
        raise ConfigError(f"train.init_from {source}: {e}") from None


def run_config_from_dict(d: dict) -> RunConfig:
    """A run config from plain data (the inverse of ``to_dict(run_config)``)."""
    if not isinstance(d, dict):
        raise ConfigError("a run config must be a mapping with model/data/train sections")
    d = dict(d)
    if isinstance(d.get("train"), dict):
        d["train"] = dict(d["train"])
        upgrade_legacy_keys(d)  # train.bf16 -> train.precision
    model = d.pop("model", None)
    preset = d.get("preset")
    init_from = (d.get("train") or {}).get("init_from") if isinstance(d.get("train"), dict) else None
    if model is None and preset is None and init_from is not None:
        model = model_dict_of(init_from)  # continue training a model as it was saved (or imported)
    if model is None:
        if preset is None:
            raise ConfigError("the run config needs a 'model' section, a 'preset' name or a train.init_from model")
        model = to_dict(get_preset(preset))
    elif preset is not None:
        model = {**to_dict(get_preset(preset)), **model}  # the section overrides the preset's fields
    run = from_dict(RunConfig, d, "")
    run.model = model_config_from_dict(model)
    return run


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config and apply ``section.key=value`` overrides (values parsed as YAML scalars)."""
    data = read_yaml_mapping(path, "config file")
    apply_overrides(data, overrides or [])
    return run_config_from_dict(data)


def run_config_hash(config: RunConfig) -> str:
    """Hash of a run config's model, data and train sections (not its output directory): two runs with the
    same hash train the same thing (sweeps and ablations skip finished runs by it)."""
    d = to_dict(config)
    blob = json.dumps({k: d[k] for k in ("model", "data", "train")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
