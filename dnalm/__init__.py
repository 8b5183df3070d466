"""dnalm: build DNA language models from scratch and put them to work.

Public API::

    import dnalm
    model = dnalm.load("hyenadna-tiny-1k")          # a preset name builds a fresh model
    model = dnalm.load("runs/demo")                 # a run directory, a checkpoint, or a foreign checkpoint
    dnalm.score(model, ["ACGT..."], reduce="mean")   # log-likelihoods
    dnalm.generate(model, "ACGT", 100)               # sampled bases
    out = model(input_ids, output_hidden_states=True)

This module is the top of the package's layers (see docs/architecture.md): it only gathers what the
layers below offer.
"""

from __future__ import annotations

from typing import Any

from dnalm.version import __version__

# name -> module: imported on first use, so that ``import dnalm`` (and the command line's memory preflight,
# dnalm.cli.preflight) does not pay for ``import torch`` before it is needed
_EXPORTS = {
    "DNALM": "dnalm.models.lm", "Tokenizer": "dnalm.tokenizer", "load": "dnalm.formats",
    "get_preset": "dnalm.models", "list_presets": "dnalm.models", "score": "dnalm.eval.scoring",
    "generate": "dnalm.generation", "score_variants": "dnalm.eval.variants", "embed_sequences": "dnalm.eval.embed",
    "score_essentiality": "dnalm.eval.essentiality", "score_dms": "dnalm.eval.dms",
    "finetune": ("dnalm.eval.finetune", "finetune_files"),
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dnalm' has no attribute {name!r}")
    import importlib

    target = _EXPORTS[name]
    module, attr = target if isinstance(target, tuple) else (target, name)
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "DNALM", "Tokenizer", "load", "get_preset", "list_presets", "score", "generate", "score_variants",
    "embed_sequences", "score_essentiality", "score_dms", "finetune", "__version__",
]  # fmt: skip
