"""The language-model shell every family shares: token embedding -> backbone -> final norm -> LM head.

A family provides a *backbone* (``dnalm.models.spec.Backbone``): a module that maps embeddings (B, L, D)
to hidden states (B, L, D) and returns a :class:`BackboneOutput`. The shell adds the embedding, the
family's final norm, the (tied) head and the weighted loss; the family comes from the config's
``ModelSpec``. What users do with a model (score, generate, variant effects, embeddings, fine-tuning) is
in the application layer (``dnalm/eval/``, ``dnalm/generation.py``), offered as ``dnalm.score`` etc.

Hidden states (``output_hidden_states=True``) follow the Hugging Face convention:
``[embedding output, after block 0, ..., after the last block, after the final norm]``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from dnalm.models.spec import BackboneOutput, spec_of
from dnalm.runtime import half_compute
from dnalm.tokenizer import PAD, Tokenizer

HALF = (torch.bfloat16, torch.float16)
BLOCK_METHODS = ("forward", "prefill", "step", "forward_prefix", "forward_from")  # what backbones call on blocks


@dataclass
class LMOutput:
    logits: torch.Tensor  # (B, L, V) float32
    hidden_states: list[torch.Tensor] | None = None
    aux_loss: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def prefill_layers(layers: nn.ModuleList, x: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, list[Any]]:
    """Run a prompt x (B, L, D) through a stack of blocks that support generation; returns (hidden, one
    state per block). Shared by every family's backbone ``prefill``."""
    states = []
    for layer in layers:
        x, state = layer.prefill(x, **kwargs)
        states.append(state)
    return x, states


def step_layers(layers: nn.ModuleList, x_t: torch.Tensor, states: list[Any]) -> tuple[torch.Tensor, list[Any]]:
    """One token x_t (B, D) through the stack; each block's state is replaced by its updated one."""
    for i, layer in enumerate(layers):
        x_t, states[i] = layer.step(x_t, states[i])
    return x_t, states


@contextmanager
def float32_params(module: nn.Module, on: bool = True) -> Iterator[nn.Module]:
    """Inside the context, ``module``'s bf16/fp16 parameters read as float32 copies (``p.float()``, exact:
    every half-precision value is a float32 value); afterwards the stored parameters are back, untouched.
    Only this module's float32 copy is extra memory. The copies are differentiable casts, so gradients still
    reach the stored parameters (LoRA on a bf16 base, for instance)."""
    swapped: list[tuple[dict, str, nn.Parameter]] = []
    if on:
        for m in module.modules():
            for name, p in list(m._parameters.items()):
                if p is not None and p.dtype in HALF:
                    swapped.append((m._parameters, name, p))
                    m._parameters[name] = p.float()  # type: ignore[assignment]
    try:
        yield module
    finally:
        for params, name, p in reversed(swapped):
            params[name] = p


def blocks_of(backbone: nn.Module) -> list[nn.Module]:
    """The blocks a backbone runs one after the other (``backbone.layers``), or the backbone itself."""
    layers = getattr(backbone, "layers", None)
    return list(layers) if isinstance(layers, nn.ModuleList) and len(layers) else [backbone]


@contextmanager
def blockwise_float32(backbone: nn.Module, on: bool = True) -> Iterator[None]:
    """Inside the context, each block of ``backbone`` (:func:`blocks_of`) computes with its half-precision
    weights converted to float32 for the duration of its own call (forward, prefill or step): at most one
    block's float32 copy exists at a time, and the weights stay in their stored dtype."""
    patched: list[tuple[nn.Module, str]] = []
    if on:
        for block in blocks_of(backbone):
            for name in BLOCK_METHODS:
                fn = getattr(block, name, None)
                if fn is None or name in vars(block):  # absent, or already wrapped by an outer context
                    continue

                def run(*args: Any, _fn: Any = fn, _block: nn.Module = block, **kwargs: Any) -> Any:
                    with float32_params(_block):
                        return _fn(*args, **kwargs)

                object.__setattr__(block, name, run)  # an instance attribute: nn.Module.__call__ finds it
                patched.append((block, name))
    try:
        yield
    finally:
        for block, name in patched:
            object.__delattr__(block, name)


def gpt2_init(module: nn.Module, n_layer: int, std: float = 0.02) -> None:
    """GPT-2 style init: Linear/Embedding N(0, std), biases 0, and every Linear flagged
    ``residual_out = True`` (a projection back into the residual stream) scaled by 1/sqrt(2*n_layer)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            scale = 1 / math.sqrt(2 * n_layer) if getattr(m, "residual_out", False) else 1.0
            nn.init.normal_(m.weight, mean=0.0, std=std * scale)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)


def lm_loss(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None, ignore_index: int = PAD
) -> torch.Tensor:
    """Weighted next-token cross-entropy, renormalised: sum(CE * w) / sum(w) over valid positions.

    With ``weights`` None (or all ones) this is the plain mean CE over non-padding targets; with repeat
    weights (lower case 0.1, otherwise 1; Evo's repeat down-weighting) the magnitude stays that of a plain mean.
    """
    ce = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none", ignore_index=ignore_index
    )  # (B*L,)
    valid = (targets.reshape(-1) != ignore_index).float()
    w = valid if weights is None else weights.reshape(-1).float() * valid
    return (ce * w).sum() / w.sum().clamp_min(1e-8)


class DNALM(nn.Module):
    """A DNA language model of any family: ``DNALM(config)``; see ``dnalm.load`` for checkpoints."""

    def __init__(self, config: Any, tokenizer: Tokenizer | None = None):
        super().__init__()
        self.config = config
        d, v = config.d_model, config.vocab_size
        self.embed = nn.Embedding(v, d)  # (V, D)
        spec = spec_of(config)
        self.backbone = spec.backbone(config)
        self.norm_f = spec.final_norm(config)
        self.lm_head = None if config.tie_embeddings else nn.Linear(d, v, bias=False)
        nn.init.normal_(self.embed.weight, std=0.02)
        if self.lm_head is not None:
            nn.init.normal_(self.lm_head.weight, std=0.02)
        self.tokenizer = tokenizer or Tokenizer(model_max_length=config.max_len)
        # weights in bf16/fp16 (an Evo checkpoint as released): "float32" runs each block with a float32 copy of
        # its weights, "weights" in their dtype, "auto" in bf16 only where this CPU is fast in it
        # (dnalm.runtime.half_compute; the command line's --precision overrides it)
        self.compute = "auto"

    def half_dtype(self) -> torch.dtype | None:
        """bf16 / fp16 when some weights are stored in half precision, else None."""
        return next((p.dtype for p in self.parameters() if p.dtype in HALF), None)

    def compute_mode(self) -> str | None:
        """None for float32 weights; else "float32" or "weights" (:func:`dnalm.runtime.half_compute`)."""
        if self.half_dtype() is None:
            return None
        return half_compute(getattr(self, "compute", "auto"), self.device.type)

    def upcasts(self) -> bool:
        """Whether a pass computes in float32 over half-precision stored weights (one block at a time)."""
        return self.compute_mode() == "float32"

    @contextmanager
    def computing(self) -> Iterator[bool]:
        """The context of one pass over half-precision weights: "float32" upcasts the blocks one at a time,
        "weights" runs the matmuls in the weights' dtype under autocast; in both the residual stream between
        blocks is float32 (as ``forward_long`` keeps it). Yields whether the embeddings go to float32."""
        mode = self.compute_mode()
        if mode is None:
            yield False
            return
        amp = torch.autocast(self.device.type, dtype=self.half_dtype()) if mode == "weights" else nullcontext()
        with blockwise_float32(self.backbone, mode == "float32"), amp:
            yield True

    @property
    def head_weight(self) -> torch.Tensor:
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, input_ids: torch.Tensor, output_hidden_states: bool = False) -> LMOutput:
        """input_ids (B, L) int64 -> logits (B, L, V) float32 (+ hidden states on request)."""
        if input_ids.shape[1] > self.config.max_len:
            raise ValueError(
                f"input of {input_ids.shape[1]} tokens exceeds the model's maximum length {self.config.max_len}"
            )
        with self.computing():
            x = self.embed_ids(input_ids)  # (B, L, D)
            out: BackboneOutput = self.backbone(x, output_hidden_states=output_hidden_states)
            h = self.final_norm(out.hidden)  # (B, L, D)
            logits = self.head_logits(h)  # (B, L, V)
        hidden_states = None
        if output_hidden_states:
            hidden_states = [x] + list(out.hidden_states or []) + [h]
        return LMOutput(logits, hidden_states, out.aux_loss, out.metrics)

    @property
    def shares_prefix(self) -> bool:
        """True when the family can score rows from a shared prefix (``ModelSpec.prefix_sharing``)."""
        return spec_of(self.config).prefix_sharing

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """The final norm on backbone outputs (..., D), in float32 over half-precision weights when :meth:`upcasts`."""
        with float32_params(self.norm_f, self.upcasts()):
            return self.norm_f(hidden.to(self.norm_f.weight.dtype))

    def head_logits(self, h: torch.Tensor) -> torch.Tensor:
        """The head on final-normed states (..., D) -> float32 logits (..., V)."""
        return F.linear(h, self.head_weight.float() if self.upcasts() else self.head_weight).float()

    def logits_of(self, hidden: torch.Tensor) -> torch.Tensor:
        """The final norm and the head on backbone outputs (..., D) -> float32 logits (..., V)."""
        return self.head_logits(self.final_norm(hidden))

    def embed_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings (..., D), in float32 over half-precision weights (the residual stream's dtype then)."""
        x = self.embed(input_ids)
        return x.float() if self.half_dtype() is not None else x

    def forward_prefix(self, input_ids: torch.Tensor, total_len: int) -> tuple[torch.Tensor, Any]:
        """The first p tokens (1, p) of rows ``total_len`` long -> (logits (1, p, V), the prefix state);
        see :class:`dnalm.models.spec.PrefixBackbone`. Only for families with ``shares_prefix``."""
        if total_len > self.config.max_len:
            raise ValueError(f"input of {total_len} tokens exceeds the model's maximum length {self.config.max_len}")
        with self.computing():
            hidden, state = self.backbone.forward_prefix(self.embed_ids(input_ids), total_len)
            return self.logits_of(hidden), state

    def forward_from(self, state: Any, input_ids: torch.Tensor) -> torch.Tensor:
        """Tokens p .. total_len-1 of B rows (B, total_len - p) after a shared prefix -> logits (B, ., V)."""
        with self.computing():
            return self.logits_of(self.backbone.forward_from(self.embed_ids(input_ids), state))

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if exclude_embeddings else n

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device


def meta_model(config: Any) -> DNALM:
    """``DNALM(config)`` on the meta device: every shape and name, no memory (memory estimates, info, the
    precision benchmark's shapes)."""
    with torch.device("meta"):
        return DNALM(config)
