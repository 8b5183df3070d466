"""Transformer++: the attention baseline (pre-norm RMSNorm, RoPE causal attention, SwiGLU MLP).

``SwiGLU`` and ``TransformerBlock`` are reused by other families (StripedHyena attention layers, the
dnaHNet main network). Generation follows the shared protocol: ``prefill(x) -> (y, state)`` and
``step(x_t, state) -> (y_t, state)``, where the state is one :class:`~dnalm.models.attention.KVCache`
per block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dnalm.config import ConfigError, _positive, _round_up
from dnalm.models.attention import CausalSelfAttention, KVCache, extend_context
from dnalm.models.lm import gpt2_init, prefill_layers, step_layers
from dnalm.models.spec import (
    ActivationShape,
    BackboneOutput,
    FlopTerms,
    LayerSpec,
    ModelSpec,
    attention_layer_flops,
    gated_mlp_flops,
    layer_params_estimate,
)


@dataclass
class TransformerConfig:
    """Transformer++ baseline: RMSNorm, SwiGLU, RoPE, causal scaled-dot-product attention."""

    family: Literal["transformer"] = "transformer"
    n_layer: int = 2
    d_model: int = 128
    n_head: int = 4
    max_len: int = 1026
    vocab_size: int = 16
    mlp_hidden: int | None = None  # None means 8/3 * d_model rounded up to a multiple of 64
    rope_base: float = 10000.0
    rope_interp: float = 1.0  # linear position interpolation: positions are divided by this
    norm_eps: float = 1e-5
    dropout: float = 0.0
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.mlp_hidden is None:
            self.mlp_hidden = _round_up(8 * self.d_model / 3, 64)
        _positive(self, "n_layer", "d_model", "n_head", "max_len", "vocab_size", "mlp_hidden")
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ConfigError(
                f"model.d_model ({self.d_model}) must split into n_head ({self.n_head}) heads of even size"
            )


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x): a gated MLP D -> hidden -> D (w2 is flagged ``residual_out``)."""

    def __init__(self, d_model: int, hidden: int, bias: bool = False):
        super().__init__()
        self.w1 = nn.Linear(d_model, hidden, bias=bias)  # gate
        self.w3 = nn.Linear(d_model, hidden, bias=bias)  # up
        self.w2 = nn.Linear(hidden, d_model, bias=bias)  # down, back into the residual stream
        self.w2.residual_out = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))  # (..., D)


class TransformerBlock(nn.Module):
    """Pre-norm block: x = x + attn(norm1(x)); x = x + mlp(norm2(x)); RMSNorm, RoPE attention, SwiGLU."""

    def __init__(
        self,
        d_model: int,
        n_head: int,
        mlp_hidden: int,
        max_len: int,
        rope_base: float = 10000.0,
        rope_interp: float = 1.0,
        norm_eps: float = 1e-5,
        dropout: float = 0.0,
        bias: bool = False,
    ):
        super().__init__()
        self.norm1 = nn.RMSNorm(d_model, eps=norm_eps)
        self.attn = CausalSelfAttention(d_model, n_head, max_len, rope_base, rope_interp, bias=bias, dropout=dropout)
        self.norm2 = nn.RMSNorm(d_model, eps=norm_eps)
        self.mlp = SwiGLU(d_model, mlp_hidden, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, D) -> (B, L, D)."""
        x = x + self.dropout(self.attn(self.norm1(x)))
        return x + self.dropout(self.mlp(self.norm2(x)))

    def prefill(self, x: torch.Tensor, capacity: int | None = None) -> tuple[torch.Tensor, KVCache]:
        """x (B, L, D) -> (y (B, L, D), this block's KV cache)."""
        a, cache = self.attn.prefill(self.norm1(x), capacity)
        x = x + a
        return x + self.mlp(self.norm2(x)), cache

    def forward_from(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """The positions after a shared prefix (its KV cache), x (B, s, D) -> (B, s, D)."""
        x = x + self.attn.forward_from(self.norm1(x), cache)
        return x + self.mlp(self.norm2(x))

    def step(self, x_t: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """x_t (B, D) -> (y_t (B, D), the updated cache)."""
        a, cache = self.attn.step(self.norm1(x_t), cache)
        x_t = x_t + a
        return x_t + self.mlp(self.norm2(x_t)), cache


class TransformerBackbone(nn.Module):
    """``n_layer`` Transformer++ blocks; returns the hidden state before the final norm."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(
            TransformerBlock(
                config.d_model,
                config.n_head,
                config.mlp_hidden,
                config.max_len,
                config.rope_base,
                config.rope_interp,
                config.norm_eps,
                config.dropout,
            )
            for _ in range(config.n_layer)
        )
        gpt2_init(self, config.n_layer)

    def forward(self, x: torch.Tensor, output_hidden_states: bool = False) -> BackboneOutput:
        """x (B, L, D) embeddings -> BackboneOutput(hidden (B, L, D), [after each block])."""
        states = []
        for layer in self.layers:
            x = layer(x)  # (B, L, D)
            if output_hidden_states:
                states.append(x)
        return BackboneOutput(hidden=x, hidden_states=states if output_hidden_states else None)

    def prefill(self, x: torch.Tensor, capacity: int | None = None) -> tuple[torch.Tensor, list[KVCache]]:
        """Prompt embeddings x (B, L, D) -> (hidden (B, L, D), one KV cache per block)."""
        return prefill_layers(self.layers, x, capacity=capacity)  # (B, L, D), one KV cache per block

    def step(self, x_t: torch.Tensor, state: list[KVCache]) -> tuple[torch.Tensor, list[KVCache]]:
        """One token's embedding x_t (B, D) -> (hidden (B, D), the updated caches)."""
        return step_layers(self.layers, x_t, state)  # (B, D); each cache is updated in place

    def forward_prefix(self, x: torch.Tensor, total_len: int) -> tuple[torch.Tensor, list[KVCache]]:
        """Prefix embeddings x (1, p, D) -> (hidden (1, p, D), one KV cache per block); see PrefixBackbone."""
        return prefill_layers(self.layers, x, capacity=x.shape[1])

    def forward_from(self, x: torch.Tensor, state: list[KVCache]) -> torch.Tensor:
        """Embeddings after the shared prefix, x (B, s, D) -> hidden (B, s, D); the caches are only read."""
        for layer, cache in zip(self.layers, state):
            x = layer.forward_from(x, cache)
        return x


# ------------------------------------------------------------------------------------------ the spec


def count_params(cfg: TransformerConfig) -> int:
    """Backbone + final RMSNorm parameters (the shell adds the embedding and an untied head)."""
    d, f = cfg.d_model, cfg.mlp_hidden
    layer = d + 4 * d * d + d + 3 * d * f  # RMSNorm, Wqkv + out_proj, RMSNorm, SwiGLU (no biases)
    return cfg.n_layer * layer + d  # final RMSNorm


def flops(cfg: TransformerConfig, L: int, B: int, causal_savings: bool = False) -> FlopTerms:
    """RMSNorm, RoPE causal attention, SwiGLU, per layer (forward FLOPs per token)."""
    d = cfg.d_model
    out = FlopTerms()
    for _ in range(cfg.n_layer):
        out.layer_kinds.append("attention")
        attention_layer_flops(out, d, L, causal_savings)
        out.add("mlp", gated_mlp_flops(d, cfg.mlp_hidden))
    out.add("logits", 2 * d * cfg.vocab_size)
    return out


def activations(cfg: TransformerConfig) -> ActivationShape:
    return ActivationShape(
        layers=[LayerSpec("attention") for _ in range(cfg.n_layer)],
        n_layer=cfg.n_layer,
        mlp_hidden=int(cfg.mlp_hidden),
        mlp_gated=True,
        largest_layer_params=layer_params_estimate(cfg.d_model, int(cfg.mlp_hidden), True),
    )


def _matched(n_layer: int, d_model: int, context: int):
    """A Transformer++ matching a HyenaDNA preset in depth and width (heads of 32), so their parameter counts
    are close: the baseline of the architecture comparisons."""
    return lambda: TransformerConfig(n_layer=n_layer, d_model=d_model, n_head=d_model // 32, max_len=context + 2)


SPEC = ModelSpec(
    family="transformer",
    config=TransformerConfig,
    backbone=TransformerBackbone,
    final_norm=lambda cfg: nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps),
    count_params=count_params,
    flops=flops,
    activations=activations,
    extend_context=extend_context,
    presets={
        "transformer-tiny-1k": _matched(2, 128, 1024),
        "transformer-tiny-1k-d256": _matched(2, 256, 1024),
        "transformer-small-32k": _matched(4, 256, 32768),
        "transformer-medium-160k": _matched(8, 256, 160000),
    },
    prefix_sharing=True,
)
