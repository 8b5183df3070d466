"""dnalm: build DNA language models from scratch and put them to work.

Public API::

    import dnalm
    model = dnalm.load("hyenadna-tiny-1k")        # a preset name builds a fresh model
    model = dnalm.load("runs/demo")               # a run directory, a checkpoint, or a HyenaDNA -hf folder
    model.score(["ACGT..."], reduce="mean")        # log-likelihoods
"""

from __future__ import annotations

from pathlib import Path

from dnalm.models.lm import DNALM
from dnalm.models import get_preset, list_presets
from dnalm.tokenizer import Tokenizer

__version__ = "0.1.0"
__all__ = ["DNALM", "Tokenizer", "load", "get_preset", "list_presets", "__version__"]


def load(path: str | Path, device: str = "cpu") -> DNALM:
    """Load a model from a preset name (fresh weights), a checkpoint directory or a run directory.

    A run directory resolves to its newest checkpoint. A HyenaDNA Hugging Face folder (``config.json`` with
    ``model_type: "hyenadna"``) loads through ``dnalm.hf.load_hf``: a DNALM for a causal LM, a
    ``dnalm.hf.HyenaDNAClassifier`` for a sequence-classification checkpoint. Raises ``FileNotFoundError`` or
    ``dnalm.checkpoint.CheckpointError`` with a message naming the problem.
    """
    from dnalm.checkpoint import is_native_checkpoint, load_pretrained

    p = Path(path)
    if not p.exists():
        if str(path) in list_presets():
            return DNALM(get_preset(str(path))).to(device)
        raise FileNotFoundError(f"{path}: no such file, directory or preset (presets: {', '.join(list_presets())})")
    if is_native_checkpoint(p):
        return load_pretrained(p, device)
    from dnalm import hf

    if hf.is_hf_folder(p) or hf.is_converted_classifier(p):
        return hf.load(p, device)  # a HyenaDNA "-hf" download or its converted classifier (dnalm/hf.py)
    from dnalm.train.checkpoint import latest_model_dir

    run_model = latest_model_dir(p)
    if run_model is not None:
        return load_pretrained(run_model, device)
    from dnalm.checkpoint import CheckpointError

    raise CheckpointError(f"{path}: not a dnalm checkpoint or run directory (no config.json + model.safetensors)")
