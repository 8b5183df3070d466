"""Preset parameter counts against the published HyenaDNA sizes (docs/architectures.md §1 table; HyenaDNA paper,
Nguyen et al. 2023) and Transformer++ presets matched to them."""

from __future__ import annotations

import pytest
import torch

from dnalm.models.lm import DNALM
from dnalm.models import get_preset

# name -> published parameter count (docs/architectures.md §1, "Published sizes")
HYENADNA_PUBLISHED = {
    "hyenadna-tiny-1k": 0.44e6,
    "hyenadna-tiny-1k-d256": 1.6e6,
    "hyenadna-small-32k": 3.3e6,
    "hyenadna-medium-160k": 6.6e6,
    "hyenadna-medium-450k": 6.6e6,
    "hyenadna-large-1m": 6.6e6,
}


def _count(name: str) -> int:
    with torch.device("meta"):  # count without allocating (the 1M-context filter tables are large)
        return DNALM(get_preset(name)).num_parameters()


@pytest.mark.parametrize("name,published", HYENADNA_PUBLISHED.items())
def test_hyenadna_parameter_counts_within_5_percent(name, published):
    n = _count(name)
    assert abs(n / published - 1) < 0.05, f"{name}: {n:,} parameters vs published {published:,.0f}"


@pytest.mark.parametrize(
    "name,context", [("hyenadna-tiny-1k", 1024), ("hyenadna-small-32k", 32768), ("hyenadna-large-1m", 1_000_000)]
)
def test_hyenadna_l_max_is_context_plus_2(name, context):
    assert get_preset(name).l_max == context + 2
