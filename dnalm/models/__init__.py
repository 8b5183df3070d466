"""Model families: each family file holds its config dataclass and its backbone."""

from __future__ import annotations

from typing import Any

from dnalm.config import ConfigError, from_dict
from dnalm.models.hnet import HNetConfig
from dnalm.models.hyena import HyenaConfig
from dnalm.models.striped_hyena import StripedHyenaConfig
from dnalm.models.transformer import TransformerConfig

# family name -> config class; each family file documents its own fields
MODEL_CONFIGS: dict[str, type] = {
    "hyena": HyenaConfig,
    "transformer": TransformerConfig,
    "striped_hyena": StripedHyenaConfig,
    "hnet": HNetConfig,
}


def model_config_from_dict(d: dict[str, Any], where: str = "model") -> Any:
    """Build the family's config from a plain dict (``family`` picks the class)."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(d).__name__}")
    family = d.get("family")
    if family not in MODEL_CONFIGS:
        raise ConfigError(f"{where}.family must be one of {sorted(MODEL_CONFIGS)} (got {family!r})")
    return from_dict(MODEL_CONFIGS[family], d, where)
