"""Named model configurations, as Python objects (``get_preset("hyenadna-tiny-1k")``).

HyenaDNA sizes follow SPEC section 1 (l_max = context + 2, as the published checkpoints use).
Transformer++ presets match the HyenaDNA presets in depth and width, so their parameter counts are
close; they are the baseline of the architecture comparisons.
"""

from __future__ import annotations

from typing import Any, Callable

from dnalm.config import ConfigError, HyenaConfig, TransformerConfig


def _hyena(n_layer: int, d_model: int, context: int) -> Callable[[], HyenaConfig]:
    return lambda: HyenaConfig(n_layer=n_layer, d_model=d_model, l_max=context + 2)


def _transformer(n_layer: int, d_model: int, context: int) -> Callable[[], TransformerConfig]:
    return lambda: TransformerConfig(n_layer=n_layer, d_model=d_model, n_head=d_model // 32, max_len=context + 2)


PRESETS: dict[str, Callable[[], Any]] = {
    "hyenadna-tiny-1k": _hyena(2, 128, 1024),
    "hyenadna-tiny-1k-d256": _hyena(2, 256, 1024),
    "hyenadna-small-32k": _hyena(4, 256, 32768),
    "hyenadna-medium-160k": _hyena(8, 256, 160000),
    "hyenadna-medium-450k": _hyena(8, 256, 450000),
    "hyenadna-large-1m": _hyena(8, 256, 1_000_000),
    "transformer-tiny-1k": _transformer(2, 128, 1024),
    "transformer-tiny-1k-d256": _transformer(2, 256, 1024),
    "transformer-small-32k": _transformer(4, 256, 32768),
    "transformer-medium-160k": _transformer(8, 256, 160000),
}


def get_preset(name: str) -> Any:
    """A fresh config object for the preset ``name``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()


def list_presets() -> list[str]:
    return sorted(PRESETS)
