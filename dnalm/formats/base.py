"""What a foreign checkpoint format provides to ``dnalm.load``, ``dnalm convert`` and ``dnalm export``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn


@dataclass(frozen=True)
class CheckpointFormat:
    """A checkpoint layout dnalm can read (and perhaps write).

    Attributes:
        name: the name ``dnalm export --format`` and ``ModelSpec.formats`` use.
        description: one line for ``--help`` and error messages.
        detect: ``detect(path)`` -> True when ``path`` (a file or directory) is in this format; cheap, and
            never raises for an unrelated path.
        load: ``load(path, device)`` -> a model in eval mode (a DNALM, or a task model such as a classifier).
        convert: ``convert(src, dst, *, lowercase=None, append_sep=None, verify=True)`` -> (model, max abs
            difference of a reload, or None): write ``src`` as a native checkpoint ``dst``. None: the
            generic path (load, then ``save_pretrained``) is used.
        export: ``export(model, path)`` -> the written path: a native model in this format; None when the
            format is read-only.
        read_config: ``read_config(path)`` -> the model config, read without loading the weights (what
            ``dnalm info`` shows); None: ``load`` is used.
        stored_dtype: ``load`` keeps every tensor in the dtype its file stores (bf16 as released), and takes
            ``dtype=`` (e.g. ``torch.float32``) to convert instead; the memory checks then count the weight
            files' bytes. False: the model is float32 in memory.
    """

    name: str
    description: str
    detect: Callable[[Path], bool]
    load: Callable[..., nn.Module]
    convert: Callable[..., tuple[nn.Module, Any]] | None = None
    export: Callable[..., Path] | None = None
    read_config: Callable[[Path], Any] | None = None
    stored_dtype: bool = False
