"""Model families and their registry.

A family is one file (``hyena.py``, ``transformer.py``, ``striped_hyena.py``, ``hnet.py``) holding its
config dataclass, its backbone, its presets and, at its end, one ``SPEC`` (:class:`~dnalm.models.spec.ModelSpec`).
This package registers the built-in ones; ``register(spec)`` adds another (see ``docs/architecture.md``).
Everything outside ``dnalm/models/`` looks a family up here and never compares family names.
"""

from __future__ import annotations

from typing import Any

from dnalm.config import ConfigError, from_dict
from dnalm.models import hnet, hyena, striped_hyena, transformer
from dnalm.models.spec import SPECS, ModelSpec, get_spec, register, spec_of

__all__ = [
    "SPECS", "ModelSpec", "get_spec", "register", "spec_of", "model_config_from_dict", "presets", "get_preset",
    "list_presets",
]  # fmt: skip

for _spec in (hyena.SPEC, transformer.SPEC, striped_hyena.SPEC, hnet.SPEC):
    register(_spec)


def model_config_from_dict(d: dict[str, Any], where: str = "model") -> Any:
    """Build the family's config from a plain dict (``family`` picks the class; unknown keys are errors)."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(d).__name__}")
    family = d.get("family")
    if family not in SPECS:
        raise ConfigError(f"{where}.family must be one of {sorted(SPECS)} (got {family!r})")
    return from_dict(SPECS[family].config, d, where)


def presets() -> dict[str, Any]:
    """Every registered family's presets: name -> function returning a fresh config."""
    return {name: make for spec in SPECS.values() for name, make in spec.presets.items()}


def get_preset(name: str) -> Any:
    """A fresh config object for the preset ``name``."""
    make = presets().get(name)
    if make is None:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(list_presets())}")
    return make()


def list_presets() -> list[str]:
    return sorted(presets())
