"""Named model configurations, as Python objects (``get_preset("hyenadna-tiny-1k")``).

HyenaDNA sizes follow SPEC section 1 (l_max = context + 2, as the published checkpoints use).
Transformer++ presets match the HyenaDNA presets in depth and width, so their parameter counts are
close; they are the baseline of the architecture comparisons.
"""

from __future__ import annotations

from typing import Any, Callable

from dnalm.config import ConfigError
from dnalm.models.hyena import HyenaConfig
from dnalm.models.transformer import TransformerConfig


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


# ---- StripedHyena (Evo 1) and StripedHyena 2 (Evo 2), as released:
# Evo 1: togethercomputer/evo-1-8k-base and evo-1-131k-base config.json (32 layers, 4096 wide, 32 heads,
# attention at 8/16/24, inner_mlp_size 10928, state 8, byte vocabulary 512; the 131k model divides RoPE
# positions by 16). Evo 2: ArcInstitute/evo2 evo2/configs/evo2-{7b,40b}-{8k,1m}.yml (hcs/hcm/hcl/attn layer
# indices, 256/512 filter groups, state 16). The released 1M files list a wider MLP than the 8k ones
# (7B: 11264 vs 11008, 40B: 22528 vs 21888); each preset follows its own file. The 1M RoPE (base 1e11,
# positions / 128) is what ``extend_context(cfg, 2**20)`` gives from a base-1e4 8k config.


def _evo1(max_len: int, rope_interp: float) -> Callable[[], Any]:
    from dnalm.models.striped_hyena import StripedHyenaConfig

    layers = ["attn" if i in (8, 16, 24) else "hyena" for i in range(32)]
    return lambda: StripedHyenaConfig(
        version=1, n_layer=32, d_model=4096, n_head=32, max_len=max_len, vocab_size=512, layers=layers,
        mlp_hidden=10928, state_size=8, rope_base=10000.0, rope_interp=rope_interp,
    )  # fmt: skip


def _evo2(size: str, max_len: int, mlp_hidden: int, rope_base: float, rope_interp: float) -> Callable[[], Any]:
    from dnalm.models.striped_hyena import StripedHyenaConfig

    n_layer, d_model, n_head, groups = (32, 4096, 32, 256) if size == "7b" else (50, 8192, 64, 512)
    attn = [3, 10, 17, 24, 31] if size == "7b" else [3, 10, 17, 24, 31, 35, 42, 49]
    hyena = [i for i in range(n_layer) if i not in attn]  # the rest cycle SE, MR, LI in depth order
    kinds = {i: ("se", "mr", "li")[j % 3] for j, i in enumerate(hyena)} | {i: "attn" for i in attn}
    layers = [kinds[i] for i in range(n_layer)]
    return lambda: StripedHyenaConfig(
        version=2, n_layer=n_layer, d_model=d_model, n_head=n_head, max_len=max_len, vocab_size=512,
        layers=layers, mlp_hidden=mlp_hidden, state_size=16, filter_groups=groups, rope_base=rope_base,
        rope_interp=rope_interp,
    )  # fmt: skip


def _striped_tiny(version: int, layers: list[str], mlp_hidden: int) -> Callable[[], Any]:
    from dnalm.models.striped_hyena import StripedHyenaConfig

    return lambda: StripedHyenaConfig(
        version=version, n_layer=len(layers), d_model=128, n_head=4, max_len=1026, layers=list(layers),
        mlp_hidden=mlp_hidden,
    )  # fmt: skip


PRESETS.update(
    {
        "striped-hyena-tiny": _striped_tiny(1, ["hyena", "attn", "hyena"], 256),  # ~0.5M, for tests and demos
        "striped-hyena2-tiny": _striped_tiny(2, ["se", "mr", "li", "attn"], 192),  # ~0.57M
        "evo-1-8k": _evo1(8192, 1.0),
        "evo-1-131k": _evo1(131072, 16.0),
        "evo2-7b-8k": _evo2("7b", 8192, 11008, 1e4, 1.0),
        "evo2-7b": _evo2("7b", 1_048_576, 11264, 1e11, 128.0),
        "evo2-40b-8k": _evo2("40b", 8192, 21888, 1e6, 1.0),
        "evo2-40b": _evo2("40b", 1_048_576, 22528, 1e11, 128.0),
    }
)


# ---- dnaHNet (SPEC section 5): 2-stage hierarchies named by their target ratios, (3,2) and (2,2); each
# stage's encoder/decoder is 1 attention + 4 Mamba-2 blocks as in the paper. CPU-sized: nucleotide width 32,
# stage-1 width 64, a 3-block Transformer main network at width 128 (~1.1M parameters), Mamba-2 with
# d_state 32 and SSD chunks of 32 (SPEC's 128 / 256 are for paper-scale widths).


def _dnahnet_tiny(ratios: list[float]) -> Callable[[], Any]:
    from dnalm.models.hnet import HNetConfig

    inner = [64, 128] if len(ratios) == 2 else [128]
    return lambda: HNetConfig(
        d_model=32, inner_d_model=list(inner), target_ratios=list(ratios),
        encoder_layout=["t1m4"] * len(ratios), decoder_layout=["m4t1"] * len(ratios),
        main_layout="t3", attn_head_dim=32, d_state=32, mamba_headdim=32, ssd_chunk_size=32, max_len=1026,
    )  # fmt: skip


PRESETS.update(
    {
        "dnahnet-tiny-32": _dnahnet_tiny([3.0, 2.0]),
        "dnahnet-tiny-22": _dnahnet_tiny([2.0, 2.0]),
        "dnahnet-tiny-3": _dnahnet_tiny([3.0]),  # 1-stage
    }
)


def get_preset(name: str) -> Any:
    """A fresh config object for the preset ``name``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()


def list_presets() -> list[str]:
    return sorted(PRESETS)
