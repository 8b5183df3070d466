"""Memory of LoRA training, estimated before anything is loaded (``dnalm finetune --mode lora`` and
``dnalm train`` with ``train.lora`` check it against the memory available).

The model is built on PyTorch's meta device (no memory, no weights) and the adapters are put on it, so the
count of adapted layers and adapter parameters is exact for any family and target list. Then, in bytes:

- frozen base weights: every base parameter in its stored dtype (2 bytes for bf16 checkpoints);
- adapters: float32 weights, gradients and AdamW's two moments (16 bytes per adapter parameter);
- activations saved for the backward pass: the planner's per-block count (``dnalm.scaling.plan``,
  ``activation_elements``: norms, projections' outputs, the FFT path in float32, the MLP), in the base's
  dtype, plus what each adapter keeps: the float32 copy of its input when the base is not float32, and its
  rank-r hidden ``A x``;
- the backward pass's working set: about one block's activations more;
- the logits (language-model training only): L x V in the base's dtype plus float32 for the loss and its
  gradient;
- a fixed runtime allowance (the CUDA context or the CPU allocator's slack).

It is an estimate for planning and for refusing hopeless runs early, not a bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


from dnalm.config import LoRAConfig
from dnalm.models.lm import meta_model
from dnalm.models.lora import add_lora, count_trainable
from dnalm.scaling.plan import activation_elements, shape_from_config

GiB = 2**30
RUNTIME_BYTES = int(0.75 * GiB)


@dataclass
class LoRAMemory:
    """Estimated bytes by part, and the counts behind them."""

    parts: dict[str, float]
    base_params: int
    adapter_params: int
    adapted_layers: int
    seq_len: int
    batch: int
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return float(sum(self.parts.values()))

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v / GiB:.2f}" for k, v in self.parts.items())
        return (f"{self.total / GiB:.2f} GiB ({parts} GiB; {self.adapted_layers} adapted layers, "
                f"{self.adapter_params:,} adapter parameters, {self.batch} x {self.seq_len} tokens)")


def lora_memory(
    config: Any,
    lora: LoRAConfig,
    seq_len: int,
    batch: int = 1,
    weight_bytes: int = 2,
    lm_logits: bool = False,
    trainable_extra: int = 0,
) -> LoRAMemory:
    """Memory of one LoRA training step of ``config`` on ``batch`` sequences of ``seq_len`` tokens with the
    base stored in ``weight_bytes`` bytes per parameter (module docstring). ``trainable_extra`` counts other
    trainable float32 parameters (a classification head)."""
    model = meta_model(config)
    names = add_lora(model, lora)
    n_adapter = count_trainable(model)
    n_base = sum(p.numel() for p in model.parameters()) - n_adapter
    shape = shape_from_config(config)
    tokens = batch * seq_len
    mixed = weight_bytes < 4
    per_block = []
    for spec in shape.layers:
        n = max(1, int(seq_len * spec.share))
        half, fp32 = activation_elements(spec, shape.d_model, shape.mlp_hidden, n, batch, shape.order, shape.norm,
                                         mixed_precision=mixed)  # fmt: skip
        per_block.append(spec.share * (half * weight_bytes + fp32 * 4))
    mods = dict(model.named_modules())
    adapter_acts = sum(lora.rank * 4 + (mods[n].in_features * 4 if mixed else 0) for n in names)
    acts = tokens * (sum(per_block) + adapter_acts + 2 * 3 * shape.d_model * weight_bytes)  # + the final norm
    parts = {
        "base weights": float(n_base * weight_bytes),
        "adapters + AdamW": float((n_adapter + trainable_extra) * 16),
        "activations": float(acts),
        "backward working set": float(tokens * max(per_block, default=0.0)),
        "runtime": float(RUNTIME_BYTES),
    }
    if lm_logits:
        parts["logits"] = float(tokens * config.vocab_size * (weight_bytes + 8))
    return LoRAMemory(parts, n_base, n_adapter, len(names), seq_len, batch)
