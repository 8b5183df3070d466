"""Reading a run config: a YAML file (or a plain dict) -> :class:`dnalm.config.RunConfig`.

The ``model`` section is built by its family's config class (``dnalm.models.model_config_from_dict``);
``preset: NAME`` starts from a registered preset, and a partial ``model`` section beside it overrides that
preset's fields.
"""

from __future__ import annotations

from pathlib import Path

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
    if model is None:
        if preset is None:
            raise ConfigError("the run config needs a 'model' section or a 'preset' name")
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
