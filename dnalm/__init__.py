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

from dnalm.eval.dms import score_dms
from dnalm.eval.embed import embed_sequences
from dnalm.eval.essentiality import score_essentiality
from dnalm.eval.finetune import finetune_files as finetune
from dnalm.eval.scoring import score
from dnalm.eval.variants import score_variants
from dnalm.formats import load
from dnalm.generation import generate
from dnalm.models import get_preset, list_presets
from dnalm.models.lm import DNALM
from dnalm.tokenizer import Tokenizer
from dnalm.version import __version__

__all__ = [
    "DNALM", "Tokenizer", "load", "get_preset", "list_presets", "score", "generate", "score_variants",
    "embed_sequences", "score_essentiality", "score_dms", "finetune", "__version__",
]  # fmt: skip
