"""Memory a command will need on this machine, estimated from the model's config before anything is built.

The terms reuse the training planner (``dnalm.scaling.plan``): the parameter count of the family's spec, and
the per-block activation model ``activation_elements``. Inference without gradients keeps one block's
intermediates alive at a time, so the activation term is the largest block's (not their sum), plus the
residual stream between blocks, the hidden states a command asks for, and the logits. Training on this
machine uses the planner's single-process (DDP) estimate: weights, gradients, AdamW state and the saved
activations.

Weights count at the dtype they will have in memory: a preset is built in float32; a native checkpoint is
built in float32 and its file is read whole while loading (both at once); a foreign checkpoint as its
format loads it: float32, or, for formats that keep the stored dtypes (Evo 1 / Evo 2, bf16 as released),
the weight files' bytes plus one block's float32 copy (a block computing in float32 converts its own
weights for its pass). :func:`check_model_memory` resolves a model
argument (preset, run, checkpoint) to these numbers with the config alone, in well under a second even for
a 40B preset, and refuses with one line (:class:`dnalm.memory.NotEnoughMemoryError`) before the model is
built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dnalm.formats import detect_format, model_config
from dnalm.memory import RUNTIME_BYTES, MemoryNeed, gib, require, require_weights, weight_file_bytes
from dnalm.scaling.flops import count_params
from dnalm.scaling.plan import activation_elements, memory_per_gpu, shape_from_config

__all__ = ["weights_footprint", "meta_model_as_loaded", "keeps_stored_dtype", "inference_need", "training_need", "check_model_memory", "check_need", "check_weights_fit"]


def keeps_stored_dtype(path: str | Path | None) -> bool:
    """Whether ``dnalm.load(path)`` keeps the weights in the dtypes their files store (Evo 1 / Evo 2 folders)."""
    if path is None or not Path(path).is_dir():
        return False
    fmt = detect_format(path)
    return bool(fmt is not None and fmt.stored_dtype)


def _stored_half(config: Any, path: str | Path | None) -> bool:
    """Whether ``dnalm.load(path)`` keeps weights stored in half precision (bf16 / fp16 for most tensors)."""
    n = count_params(config)
    return keeps_stored_dtype(path) and bool(n) and weight_file_bytes(path) < 3.5 * n  # type: ignore[arg-type]


def weights_footprint(config: Any, path: str | Path | None = None, param_bytes: int = 4) -> dict[str, int]:
    """The weights' terms of an estimate, in bytes.

    A preset or dnalm checkpoint: {"weights": the parameters in memory, "checkpoint file (while loading)":
    bytes read at once}; ``param_bytes`` is the in-memory element size (4: float32, as ``DNALM(config)``
    builds; 2: bf16). A format that keeps stored dtypes (Evo): {"weights (as stored)": the weight files' bytes
    (memory-mapped, not copied), "one block's float32 copy": what a block computing in float32 adds while it
    runs (when the files hold half precision)}."""
    if keeps_stored_dtype(path):
        parts = {"weights (as stored)": weight_file_bytes(path)}  # type: ignore[arg-type]
        if _stored_half(config, path):
            parts["one block's float32 copy"] = int(shape_from_config(config).largest_layer_params * 4)
        return parts
    parts = {"weights": count_params(config) * param_bytes}
    stored = weight_file_bytes(path) if path is not None else 0
    if stored:
        parts["checkpoint file (while loading)"] = stored
    return parts


def meta_model_as_loaded(config: Any, path: str | Path | None = None) -> Any:
    """``DNALM(config)`` on the meta device in the dtypes ``dnalm.load(path)`` gives it: float32, or bf16 for
    a format that keeps half-precision stored weights (the long-context estimate then counts them as such,
    plus one block's float32 copy)."""
    import torch

    from dnalm.models.lm import meta_model

    model = meta_model(config)
    return model.to(torch.bfloat16) if _stored_half(config, path) else model


def inference_need(
    config: Any,
    tokens: int,
    batch: int = 1,
    *,
    param_bytes: int = 4,
    hidden_states: bool = False,
    logits: bool = True,
    weights: dict[str, int] | None = None,
) -> MemoryNeed:
    """Peak memory of ``batch`` forward passes of ``tokens`` tokens each, without gradients.

    Terms: the runtime; the weights (``weights``, default :func:`weights_footprint`); the largest block's
    intermediates (the planner's per-token activation count at the model's activation dtype); the residual
    stream in and out of a block; every hidden state when ``hidden_states`` (embeddings, probes); the float32
    logits and their log-softmax when ``logits``.
    """
    shape = shape_from_config(config)
    n = max(1, int(tokens)) * max(1, int(batch))
    act = float(param_bytes)
    block = 0.0
    for spec in shape.layers:
        half, fp32 = activation_elements(
            spec, shape.d_model, shape.mlp_hidden, max(1, int(tokens * spec.share)), batch, shape.order, shape.norm,
            mixed_precision=param_bytes < 4,
        )
        block = max(block, spec.share * (half * act + fp32 * 4))
    d = config.d_model
    parts = {"runtime": RUNTIME_BYTES, **(weights if weights is not None else weights_footprint(config, None, param_bytes))}
    parts["largest block's activations"] = int(n * block)
    parts["residual stream"] = int(2 * n * d * 4)
    if hidden_states:
        parts["hidden states"] = int((shape.n_layer + 2) * n * d * act)
    if logits:
        parts["logits"] = int(3 * n * config.vocab_size * 4)
    return MemoryNeed(int(sum(parts.values())), parts)


def training_need(config: Any, seq_len: int, batch: int = 1, activation_checkpointing: bool = False,
                  weights: dict[str, int] | None = None) -> MemoryNeed:
    """Peak memory of training on this machine: the planner's single-process estimate (16 bytes per
    parameter for weights, gradients and AdamW state, plus the saved activations and the logits)."""
    m = memory_per_gpu(shape_from_config(config), seq_len, "DDP", 1, activation_checkpointing, batch)
    parts = {"runtime": RUNTIME_BYTES, "weights, gradients, optimizer": int(m.weights + m.grads + m.optimizer),
             "activations": int(m.activations), "logits": int(m.logits)}
    extra = {k: v for k, v in (weights or {}).items() if k != "weights"}  # a checkpoint read while loading
    parts.update(extra)
    return MemoryNeed(int(sum(parts.values())), parts)


def check_need(need: MemoryNeed, what: str, max_memory: int | None = None, hint: str = "") -> MemoryNeed:
    """:func:`dnalm.memory.require` with this module's default hint."""
    return require(need, what, max_memory, hint or "use a machine with more memory, a smaller model, or shorter "
                   "inputs and smaller batches")


def check_model_memory(
    model: str | Path | Any,
    what: str,
    tokens: int | None = None,
    batch: int = 1,
    *,
    hidden_states: bool = False,
    logits: bool = True,
    training: bool = False,
    activation_checkpointing: bool = False,
    max_memory: int | None = None,
    need: MemoryNeed | None = None,
) -> MemoryNeed:
    """Estimate what ``what`` needs with ``model`` (preset, run or checkpoint, read from its config only; or a
    model config object) and
    raise :class:`dnalm.memory.NotEnoughMemoryError` if that exceeds the memory available. ``tokens`` per
    sequence (default: the model's context, at most 8,192), ``batch`` sequences per pass. The weights alone
    are checked first, so a model too large for the machine is refused whatever the inputs. ``need``
    replaces the workload estimate (e.g. the one-pass long-context estimate). A model argument whose config
    cannot be read is not checked here: loading it reports the problem."""
    if isinstance(model, (str, Path)):
        try:
            config, _ = model_config(model)
        except Exception:  # noqa: BLE001 - not resolvable without loading: the command's own loader names the problem
            return MemoryNeed(0, {})
        weights, name = weights_footprint(config, model), str(model)
    else:  # a config object (dnalm train)
        config, weights, name = model, weights_footprint(model), f"a {config_name(model)} model"
    _check_weights(config, weights, name, what, max_memory)
    if need is None:
        L = min(int(tokens), int(config.max_len)) if tokens else min(int(config.max_len), 8192)
        if training:
            need = training_need(config, L, batch, activation_checkpointing, weights)
        else:
            need = inference_need(config, L, batch, hidden_states=hidden_states, logits=logits, weights=weights)
        what = f"{what} with {name} ({batch} x {L:,} tokens per pass)"
    else:
        what = f"{what} with {name}"
    return check_need(need, what, max_memory)


def _check_weights(config: Any, weights: dict[str, int], name: str, what: str, max_memory: int | None) -> None:
    stored = "weights (as stored)" in weights
    require_weights(weights, f"{what} with {name}",
                    f"{count_params(config) / 1e9:.2f}B parameters, {'as stored' if stored else 'float32'}", max_memory)


def check_weights_fit(model: str | Path, what: str, max_memory: int | None = None) -> None:
    """The first, cheapest check (the config and the analytic parameter count only; no model, not even on the
    meta device): refuse a model whose weights alone exceed the memory available. ``dnalm`` runs it for every
    command with a model argument before anything else (precision choice included)."""
    try:
        config, _ = model_config(model)
    except Exception:  # noqa: BLE001 - the command's own loader names the problem
        return
    _check_weights(config, weights_footprint(config, model), str(model), what, max_memory)


def config_name(config: Any) -> str:
    return f"{getattr(config, 'family', type(config).__name__)} {config.d_model}-wide"


def describe(need: MemoryNeed) -> str:
    """``need`` as one line: total and every term."""
    return f"{need} = " + " + ".join(f"{k} {gib(v)}" for k, v in need.parts.items())
