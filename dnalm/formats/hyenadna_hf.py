"""Open published HyenaDNA Hugging Face checkpoints (``LongSafari/hyenadna-*-hf`` folders) as dnalm models.

No ``transformers``, no ``trust_remote_code``, no pickle execution: ``config.json`` is parsed here, the
weights are read with ``safetensors`` or ``torch.load(..., weights_only=True)`` (plain tensors only), and
the keys are renamed onto dnalm's own HyenaDNA (``dnalm/models/hyena.py`` mirrors the reference layout).

What a folder may hold: ``config.json`` (``model_type: "hyenadna"`` or a HyenaDNA architecture), one of
``model.safetensors`` / ``pytorch_model.bin`` (or a sharded ``*.index.json`` of either), and optionally
``tokenizer_config.json``. Two architectures are supported:

- ``HyenaDNAForCausalLM`` -> :class:`dnalm.DNALM` (``score``, ``generate``, hidden states, fine-tuning).
- ``HyenaDNAForSequenceClassification`` -> :class:`HyenaDNAClassifier` (backbone + bias-free ``score``
  head + GPT-2 style pooling). A bare ``HyenaDNAModel`` folder (keys without the ``hyena.`` prefix) loads
  as a DNALM whose head is tied to the embedding.

Where the checkpoint's conventions differ from native dnalm models, the checkpoint wins for imported models
(each can be switched off where it is a convention rather than a weight):

- **Tokenizer** (``Tokenizer(lowercase="unk", append_sep=True, prepend_bos=False)``): lower-case bases
  become [UNK] (the reference tokenizer is case-sensitive and does not upper-case), [SEP] is appended, no
  [BOS] is prepended, batches are padded on the left with [PAD]. Switch off with
  ``load_hf(path, lowercase="upper", append_sep=False)`` or by assigning ``model.tokenizer``. Known gap:
  dnalm maps IUPAC codes (R, Y, ...) to N and rejects other characters, where the reference gives [UNK].
- **LM head**: the file's ``lm_head.weight`` is used as its own tensor (``tie_embeddings=False``), even if
  it differs from the embedding; only a file without it gets a head tied to the embedding.
- **Norms**: block LayerNorms use eps 1e-5 (hard-coded in the reference); the final norm uses
  ``layer_norm_epsilon``.
- **Filter tables**: ``pos_emb.z`` and ``modulation.deltas`` are loaded from the file (z may have been
  trained); ``pos_emb.t`` is recomputed and checked against the file. In dnalm, z is a buffer, so
  fine-tuning does not train it (the reference's Parameter version would, at its own learning rate).
- **Unused fields**: ``embed_dropout``, ``hyena_filter_dropout`` and ``use_bias`` are never read by the
  reference's forward, so they are ignored; ``hyena_dropout`` becomes ``HyenaConfig.dropout`` (dnalm also
  applies it on the block's residual branches; eval outputs are unaffected).
- **Classification pooling**: ``idx = (first position of pad_token_id) - 1``, so an unpadded or
  left-padded row pools its last token ([SEP]) and a right-padded row its last real token. Pass
  ``attention_mask`` to pool at each row's last real token instead.
- **Length**: inputs longer than ``max_seq_len`` are an error (the reference crashes on them).

``convert`` writes a native checkpoint (``config.json`` + ``model.safetensors``); the tokenizer settings
travel in config.json. A classification model is written with ``format: "dnalm-hf-classifier"`` and is
read back by :func:`load_converted_classifier` (``dnalm.load`` does this). ``save_hf`` goes the other way
(a native HyenaDNA written in the HF layout), which the tests use to check other shapes.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, save_model
from torch import nn

from dnalm.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    atomic_dir,
    load_pretrained,
    load_weights,
    read_checkpoint_meta,
    save_pretrained,
)
from dnalm.config import ConfigError, to_dict
from dnalm.formats.base import CheckpointFormat
from dnalm.models import model_config_from_dict
from dnalm.models.hyena import HyenaConfig
from dnalm.models.lm import DNALM
from dnalm.tokenizer import BASES, PAD, VOCAB_SIZE, Tokenizer

__all__ = [
    "CLASSIFIER_FORMAT",
    "HFCheckpoint",
    "HyenaDNAClassifier",
    "ClassifierOutput",
    "is_hf_folder",
    "is_converted_classifier",
    "read_hf_config",
    "read_hf_weights",
    "load_hf",
    "load",
    "convert",
    "save_hf",
    "load_converted_classifier",
]

CLASSIFIER_FORMAT = "dnalm-hf-classifier"
ARCHITECTURES = {
    "HyenaDNAForCausalLM": "causal_lm",
    "HyenaDNAForSequenceClassification": "classifier",
    "HyenaDNAModel": "base",
}
BLOCK_LN_EPS = 1e-5  # nn.LayerNorm(d_model) in the reference's HyenaBlock: the default eps, not the config's
REFERENCE_SHORT_FILTER = 3  # the reference pads the short conv by 2 whatever its size: causal only for size 3

# The reference HyenaConfig's fields and their defaults (used where a config.json leaves one out, as
# ``from_pretrained`` would).
HYENA_DEFAULTS: dict[str, Any] = {
    "vocab_size": 12,
    "d_model": 256,
    "d_inner": None,
    "use_bias": True,
    "train_freq": True,
    "max_seq_len": 1024,
    "emb_dim": 3,
    "n_layer": 12,
    "num_inner_mlps": 2,
    "hyena_order": 2,
    "short_filter_order": 3,
    "filter_order": 64,
    "activation_freq": 1,
    "embed_dropout": 0.1,
    "hyena_dropout": 0.0,
    "hyena_filter_dropout": 0.0,
    "layer_norm_epsilon": 1e-5,
    "initializer_range": 0.02,
    "pad_vocab_size_multiple": 8,
}
# Generic transformers PretrainedConfig fields: metadata, or settings the HyenaDNA forward never reads.
GENERIC_FIELDS = {
    "_name_or_path", "_commit_hash", "architectures", "auto_map", "model_type", "torch_dtype", "dtype",
    "transformers_version", "id2label", "label2id", "num_labels", "pad_token_id", "bos_token_id",
    "eos_token_id", "sep_token_id", "problem_type", "tie_word_embeddings", "output_hidden_states",
    "use_return_dict", "return_dict", "use_cache", "torchscript", "finetuning_task",
}


def _as_path(path: str | Path) -> Path:
    return Path(path)


# ------------------------------------------------------------------------------------------ detection


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def is_hf_folder(path: str | Path) -> bool:
    """True for a directory whose config.json says ``model_type: "hyenadna"`` or names a HyenaDNA architecture."""
    cfg = _as_path(path) / CONFIG_FILE
    if not cfg.is_file():
        return False
    try:
        meta = json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    if not isinstance(meta, dict) or "format" in meta:  # native dnalm files carry "format"
        return False
    archs = meta.get("architectures") or []
    return meta.get("model_type") == "hyenadna" or any(a in ARCHITECTURES for a in archs if isinstance(a, str))


def is_converted_classifier(path: str | Path) -> bool:
    """True for a directory written by :func:`convert` from a HyenaDNA sequence-classification folder."""
    cfg = _as_path(path) / CONFIG_FILE
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("format") == CLASSIFIER_FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


# ------------------------------------------------------------------------------------------ config


@dataclass
class HFCheckpoint:
    """What a HyenaDNA ``-hf`` config.json (+ tokenizer_config.json) says, in dnalm terms."""

    kind: Literal["causal_lm", "classifier", "base"] | None  # None: decided from the weights' keys
    config: HyenaConfig  # tie_embeddings is decided later, from the weights
    train_freq: bool
    num_labels: int | None
    pad_token_id: int | None
    id2label: dict[int, str] | None
    tokenizer: dict[str, Any] = field(default_factory=dict)  # Tokenizer(**...) settings


def _field(meta: dict, name: str, kind: type | tuple[type, ...], where: str, allow_none: bool = False) -> Any:
    """``meta[name]`` (or the reference default), type-checked; JSON true/false never pass as numbers."""
    value = meta.get(name, HYENA_DEFAULTS.get(name))
    if value is None and allow_none:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        want = " or ".join(k.__name__ for k in kinds)
        raise CheckpointError(f"{where}: field {name!r} must be {want} (got {value!r})")
    return value


def read_hf_config(path: str | Path) -> HFCheckpoint:
    """Parse a HyenaDNA ``-hf`` folder's config.json (and tokenizer_config.json if present).

    Raises CheckpointError naming the field for a field the importer does not understand, a wrong type,
    or a setting the reference itself cannot run (``hyena_order`` other than 2, ``short_filter_order``
    other than 3, an even ``emb_dim``).
    """
    folder = _as_path(path)
    where = str(folder / CONFIG_FILE)
    if not (folder / CONFIG_FILE).is_file():
        raise CheckpointError(f"{folder}: no {CONFIG_FILE}; not a HyenaDNA checkpoint folder")
    meta = _read_json(folder / CONFIG_FILE)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}: expected a JSON object")
    unknown = sorted(set(meta) - set(HYENA_DEFAULTS) - GENERIC_FIELDS)
    if unknown:
        raise CheckpointError(
            f"{where}: field {unknown[0]!r} is not understood by dnalm's HyenaDNA importer"
            + (f" (also: {', '.join(unknown[1:])})" if len(unknown) > 1 else "")
            + "; it may change the model, so the checkpoint is not loaded. Known fields: "
            + ", ".join(sorted(HYENA_DEFAULTS))
        )
    if meta.get("model_type", "hyenadna") != "hyenadna":
        raise CheckpointError(f"{where}: model_type is {meta['model_type']!r}, not 'hyenadna'")

    archs = meta.get("architectures") or []
    if not isinstance(archs, list) or len(archs) > 1:
        raise CheckpointError(f"{where}: field 'architectures' must list one architecture (got {archs!r})")
    kind = None
    if archs:
        if archs[0] not in ARCHITECTURES:
            raise CheckpointError(
                f"{where}: architecture {archs[0]!r} is not supported (supported: {', '.join(ARCHITECTURES)})"
            )
        kind = ARCHITECTURES[archs[0]]

    d_model = _field(meta, "d_model", int, where)
    n_layer = _field(meta, "n_layer", int, where)
    d_inner = _field(meta, "d_inner", int, where, allow_none=True)
    max_seq_len = _field(meta, "max_seq_len", int, where)
    emb_dim = _field(meta, "emb_dim", int, where)
    filter_order = _field(meta, "filter_order", int, where)
    num_inner_mlps = _field(meta, "num_inner_mlps", int, where)
    order = _field(meta, "hyena_order", int, where)
    short = _field(meta, "short_filter_order", int, where)
    freq = _field(meta, "activation_freq", (int, float), where)
    train_freq = _field(meta, "train_freq", bool, where)
    vocab = _field(meta, "vocab_size", int, where)
    multiple = _field(meta, "pad_vocab_size_multiple", int, where)
    eps = _field(meta, "layer_norm_epsilon", (int, float), where)
    hyena_dropout = _field(meta, "hyena_dropout", (int, float), where)
    for name in ("embed_dropout", "hyena_filter_dropout", "initializer_range"):
        _field(meta, name, (int, float), where)
    _field(meta, "use_bias", bool, where)

    if order != 2:
        raise CheckpointError(
            f"{where}: field 'hyena_order' is {order}; the reference HyenaDNA only runs order 2 (its filter "
            "MLP has d_model outputs), so such a checkpoint cannot be reproduced"
        )
    if short != REFERENCE_SHORT_FILTER:
        raise CheckpointError(
            f"{where}: field 'short_filter_order' is {short}; the reference pads the short filter by 2 "
            "whatever its size, which is a causal filter only for size 3 (every published checkpoint)"
        )
    if vocab != VOCAB_SIZE:
        raise CheckpointError(
            f"{where}: field 'vocab_size' is {vocab}; HyenaDNA's character vocabulary has {VOCAB_SIZE} ids"
        )
    if multiple < 1:
        raise CheckpointError(f"{where}: field 'pad_vocab_size_multiple' must be >= 1 (got {multiple})")
    if num_inner_mlps < 0:
        raise CheckpointError(f"{where}: field 'num_inner_mlps' must be >= 0 (got {num_inner_mlps})")
    padded = -(-vocab // multiple) * multiple  # the reference pads the embedding table to a multiple
    try:
        config = HyenaConfig(
            n_layer=n_layer, d_model=d_model, l_max=max_seq_len, vocab_size=padded, order=2,
            filter_order=filter_order, emb_dim=emb_dim, num_inner_mlps=num_inner_mlps,
            activation_freq=float(freq), modulation_shift=0.05, short_filter_order=short, d_inner=d_inner,
            ln_eps=float(eps), block_ln_eps=BLOCK_LN_EPS, dropout=float(hyena_dropout), tie_embeddings=False,
        )
    except ConfigError as e:
        raise CheckpointError(f"{where}: {e}") from None

    id2label = meta.get("id2label")
    if id2label is not None:
        if not isinstance(id2label, dict):
            raise CheckpointError(f"{where}: field 'id2label' must be a mapping")
        try:
            id2label = {int(k): str(v) for k, v in id2label.items()}
        except ValueError:
            raise CheckpointError(f"{where}: field 'id2label' has a key that is not an integer") from None
    num_labels = meta.get("num_labels", len(id2label) if id2label else None)
    if num_labels is not None and (not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 1):
        raise CheckpointError(f"{where}: field 'num_labels' must be a positive integer (got {num_labels!r})")
    pad_token_id = meta.get("pad_token_id")
    if pad_token_id is not None and (not isinstance(pad_token_id, int) or isinstance(pad_token_id, bool)):
        raise CheckpointError(f"{where}: field 'pad_token_id' must be an integer or null (got {pad_token_id!r})")

    return HFCheckpoint(
        kind=kind, config=config, train_freq=train_freq, num_labels=num_labels, pad_token_id=pad_token_id,
        id2label=id2label, tokenizer=_read_tokenizer_config(folder, max_seq_len),
    )


def _read_tokenizer_config(folder: Path, max_seq_len: int) -> dict[str, Any]:
    """The reference CharacterTokenizer's rules as ``Tokenizer`` settings; tokenizer_config.json may only
    narrow them (padding side, a smaller model_max_length) and must list the characters A C G T N."""
    settings: dict[str, Any] = {
        "lowercase": "unk", "append_sep": True, "prepend_bos": False, "padding_side": "left",
        "model_max_length": max_seq_len,
    }
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return settings
    tc = _read_json(path)
    if not isinstance(tc, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    chars = tc.get("characters")
    if chars is not None and list(chars) != list(BASES):
        raise CheckpointError(
            f"{path}: field 'characters' is {chars!r}; the HyenaDNA vocabulary (and dnalm's) is {list(BASES)}, "
            "so token ids would not match"
        )
    side = tc.get("padding_side", "left")
    if side not in ("left", "right"):
        raise CheckpointError(f"{path}: field 'padding_side' must be 'left' or 'right' (got {side!r})")
    settings["padding_side"] = side
    mml = tc.get("model_max_length")
    if isinstance(mml, int) and not isinstance(mml, bool) and 0 < mml < max_seq_len:
        settings["model_max_length"] = mml
    return settings


# ------------------------------------------------------------------------------------------ weights


def _load_torch_file(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)``: plain tensors only, never arbitrary objects."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: cannot be read as plain tensors with torch.load(weights_only=True) ({first}); dnalm never "
            "unpickles arbitrary objects: re-save the file as a plain state dict or as safetensors"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict of named tensors")
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor; expected a state dict")
    return state


def _load_safetensors_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors ({e})") from None


def read_hf_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict of a HyenaDNA folder and the file(s) it came from.

    Prefers ``model.safetensors``, then ``pytorch_model.bin``, then a sharded ``*.index.json`` of either.
    """
    folder = _as_path(path)
    for name, reader in (("model.safetensors", _load_safetensors_file), ("pytorch_model.bin", _load_torch_file)):
        if (folder / name).is_file():
            return reader(folder / name), str(folder / name)
    for name, reader in (
        ("model.safetensors.index.json", _load_safetensors_file),
        ("pytorch_model.bin.index.json", _load_torch_file),
    ):
        index = folder / name
        if index.is_file():
            meta = _read_json(index)
            weight_map = meta.get("weight_map") if isinstance(meta, dict) else None
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index}: no 'weight_map' object")
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                if not (folder / shard).is_file():
                    raise CheckpointError(f"{index}: shard {shard!r} is missing from {folder}")
                state.update(reader(folder / shard))
            return state, str(index)
    raise CheckpointError(
        f"{folder}: no weights found (looked for model.safetensors, pytorch_model.bin and their .index.json)"
    )


def _backbone_prefix(state: dict[str, torch.Tensor], where: str) -> str:
    if any(k.startswith("hyena.backbone.") for k in state):
        return "hyena.backbone."
    if any(k.startswith("backbone.") for k in state):
        return "backbone."
    raise CheckpointError(f"{where}: no HyenaDNA backbone keys (expected 'hyena.backbone.*' or 'backbone.*')")


def _native_to_hf_names(key: str, config: HyenaConfig, prefix: str, train_freq: bool) -> list[str]:
    """The HF state-dict key(s) that hold native DNALM key ``key`` (several for the shared Sin frequency)."""
    if key == "embed.weight":
        return [prefix + "embeddings.word_embeddings.weight"]
    if key.startswith("norm_f."):
        return [prefix + "ln_f." + key.split(".", 1)[1]]
    if key == "lm_head.weight":
        return ["lm_head.weight"]
    if key.startswith("backbone.layers."):
        rest = key[len("backbone.") :]
        if rest.endswith("implicit_filter.freq"):
            if not train_freq:
                return []  # a plain attribute in the reference: not in its state dict
            base = prefix + rest[: -len(".freq")]
            return [f"{base}.{2 * j + 1}.freq" for j in range(config.num_inner_mlps + 1)]  # the Sin slots
        return [prefix + rest]
    raise CheckpointError(f"internal: no HF name for native key {key!r}")


def _map_state(
    hf: dict[str, torch.Tensor],
    model: nn.Module,
    config: HyenaConfig,
    prefix: str,
    train_freq: bool,
    where: str,
    head_keys: dict[str, str],
) -> dict[str, torch.Tensor]:
    """HF state dict -> ``model``'s state dict; raises CheckpointError listing every problem at once.

    ``head_keys`` maps HF head keys to ``model`` keys (``lm_head.weight``/``score.weight``); backbone keys
    map onto ``model``'s keys under ``lm_prefix`` (the DNALM inside ``model``).
    """
    lm_prefix = "lm." if isinstance(model, HyenaDNAClassifier) else ""
    expected = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    shapes: list[str] = []
    problems: list[str] = []

    def take(hf_key: str, native_key: str, tensor: torch.Tensor) -> None:
        want = tuple(expected[native_key].shape)
        if tuple(tensor.shape) != want:
            shapes.append(f"{hf_key}: file {tuple(tensor.shape)} vs expected {want}")
        out[native_key] = tensor

    for native_key in expected:
        if native_key in head_keys.values():
            continue
        inner = native_key[len(lm_prefix) :]
        names = _native_to_hf_names(inner, config, prefix, train_freq)
        if inner.endswith("implicit_filter.freq"):
            # One frequency shared by every Sin layer: the reference saves it once per Sin slot.
            if not train_freq:
                continue  # keep the native init, activation_freq, as the reference's constant (no key)
            present = [n for n in names if n in hf]
            used.update(present)
            if not present:
                missing.append(names[0])
                continue
            for n in present[1:]:
                if hf[n].shape == hf[present[0]].shape and not torch.equal(hf[n], hf[present[0]]):
                    problems.append(
                        f"{n} differs from {present[0]}; the reference shares one frequency tensor between them"
                    )
            take(present[0], native_key, hf[present[0]])
            continue
        (name,) = names
        if name in hf:
            used.add(name)
            take(name, native_key, hf[name])
        elif inner.endswith("modulation.deltas"):
            pass  # a buffer the reference derives from d_model; the native constructor computes the same
        else:
            missing.append(name)
    for hf_key, native_key in head_keys.items():
        if hf_key in hf:
            used.add(hf_key)
            take(hf_key, native_key, hf[hf_key])
        else:
            missing.append(hf_key)
    # pos_emb.t: derived from max_seq_len in both implementations; check the file agrees, then drop it.
    for i in range(config.n_layer):
        t_key = f"{prefix}layers.{i}.mixer.filter_fn.pos_emb.t"
        if t_key in hf:
            used.add(t_key)
            t_native = model.get_submodule(f"{lm_prefix}backbone.layers.{i}.mixer.filter_fn.pos_emb").t
            t_file = hf[t_key]
            if tuple(t_file.shape) != tuple(t_native.shape):
                shapes.append(f"{t_key}: file {tuple(t_file.shape)} vs expected {tuple(t_native.shape)}")
            elif (t_file.float() - t_native).abs().max() > 1e-6:
                problems.append(f"{t_key} is not linspace(0, 1, max_seq_len), which dnalm's filter assumes")
    unexpected = sorted(set(hf) - used)
    for label, items, sep in (("missing keys", missing, ", "), ("unexpected keys", unexpected, ", "),
                              ("shape mismatch", shapes, "; ")):
        if items:
            more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
            problems.append(f"{label}: " + sep.join(items[:8]) + more)
    if problems:
        raise CheckpointError(f"{where}: " + " | ".join(problems))
    for k, v in expected.items():  # keys the file may leave out (derived buffers, a constant freq)
        out.setdefault(k, v)
    return {k: v.to(expected[k].dtype) for k, v in out.items()}


# ------------------------------------------------------------------------------------------ classifier


@dataclass
class ClassifierOutput:
    """What :class:`HyenaDNAClassifier` returns."""

    logits: torch.Tensor  # (B, C) pooled, float32
    token_logits: torch.Tensor  # (B, L, C) the head at every position, before pooling
    pooled_index: torch.Tensor  # (B,) position pooled per row (-1 = last position)
    hidden_states: list[torch.Tensor] | None = None  # as DNALM reports them, on request


class HyenaDNAClassifier(nn.Module):
    """The HyenaDNA sequence-classification model: a DNALM backbone, a bias-free linear ``score`` head
    (here ``head``) on the final-norm hidden states, and GPT-2 style pooling.

    Pooling (the reference's rule): ``idx = argmax_t(input_ids == pad_token_id) - 1`` per row, so a row
    without padding pools its last position. With ``pad_token_id`` None only batch size 1 is allowed.
    Passing ``attention_mask`` switches to pooling each row's last real token instead.

    This is separate from ``dnalm.models.heads.SequenceClassifier`` (dnalm's own fine-tuning head: mean or
    last-base pooling over right-padded [BOS]-prefixed inputs, a head with a bias) because a published
    checkpoint's head and pooling must be reproduced as they are. ``config``, ``tokenizer``, ``embed``,
    ``backbone``, ``norm_f`` and ``device`` are those of ``lm``, so code written for a DNALM's backbone
    (hidden states, embeddings, ``SequenceClassifier(clf.lm, ...)``) works on ``clf.lm`` or ``clf``.
    """

    def __init__(
        self,
        config: HyenaConfig,
        num_labels: int,
        pad_token_id: int | None = PAD,
        id2label: dict[int, str] | None = None,
        tokenizer: Tokenizer | None = None,
    ):
        super().__init__()
        self.lm = DNALM(config, tokenizer=tokenizer)
        self.head = nn.Linear(config.d_model, num_labels, bias=False)
        nn.init.normal_(self.head.weight, std=0.02)
        self.pad_token_id = pad_token_id
        self.id2label = dict(id2label) if id2label else {i: f"LABEL_{i}" for i in range(num_labels)}

    # the DNALM-facing attributes, so generic backbone code accepts the classifier too
    @property
    def config(self) -> HyenaConfig:
        return self.lm.config

    @property
    def tokenizer(self) -> Tokenizer:
        return self.lm.tokenizer

    @tokenizer.setter
    def tokenizer(self, value: Tokenizer) -> None:
        self.lm.tokenizer = value

    @property
    def embed(self) -> nn.Embedding:
        return self.lm.embed

    @property
    def backbone(self) -> nn.Module:
        return self.lm.backbone

    @property
    def norm_f(self) -> nn.Module:
        return self.lm.norm_f

    @property
    def device(self) -> torch.device:
        return self.lm.device

    @property
    def num_labels(self) -> int:
        return self.head.out_features

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> ClassifierOutput:
        """input_ids (B, L) -> ClassifierOutput(logits (B, C), token_logits (B, L, C), pooled_index (B,))."""
        B, L = input_ids.shape
        if L > self.config.max_len:
            raise ValueError(f"input of {L} tokens exceeds the model's maximum length {self.config.max_len}")
        x = self.lm.embed(input_ids)  # (B, L, D)
        out = self.lm.backbone(x, output_hidden_states=output_hidden_states)
        h = self.lm.norm_f(out.hidden)  # (B, L, D)
        token_logits = self.head(h)  # (B, L, C)
        if attention_mask is not None:
            pos = torch.arange(L, device=input_ids.device).expand(B, L)  # (B, L)
            idx = torch.where(attention_mask.bool(), pos, torch.full_like(pos, -1)).max(1).values  # (B,)
        elif self.pad_token_id is None:
            if B != 1:
                raise ValueError("this classifier has no pad_token_id, so it pools batch size 1 only")
            idx = torch.full((B,), -1, dtype=torch.long, device=input_ids.device)
        else:
            idx = (input_ids == self.pad_token_id).long().argmax(-1) - 1  # (B,) first pad - 1; -1 if none
        pooled = token_logits[torch.arange(B, device=input_ids.device), idx]  # (B, C)
        states = [x] + list(out.hidden_states or []) + [h] if output_hidden_states else None
        return ClassifierOutput(pooled.float(), token_logits.float(), idx, states)

    @torch.no_grad()
    def classify(self, seqs: list[str] | str, batch_size: int = 8) -> torch.Tensor:
        """Pooled logits (N, C) of DNA strings, each as if run alone (no padding ever enters the model:
        only sequences of equal token length share a batch). Apply ``softmax`` for probabilities."""
        single = isinstance(seqs, str)
        seqs = [seqs] if single else list(seqs)
        was_training = self.training
        self.eval()
        enc = [self.tokenizer.encode(s, f"sequence {i}")[0] for i, s in enumerate(seqs)]
        out = torch.zeros(len(seqs), self.num_labels)
        by_len: dict[int, list[int]] = {}
        for i, ids in enumerate(enc):
            by_len.setdefault(len(ids), []).append(i)
        try:
            for members in by_len.values():
                for s in range(0, len(members), batch_size):
                    part = members[s : s + batch_size]
                    ids = torch.tensor([enc[i] for i in part], dtype=torch.long, device=self.device)
                    # no pad inside, so the reference rule pools the last token; pad_token_id None is fine too
                    mask = torch.ones_like(ids, dtype=torch.bool)
                    out[part] = self(ids, attention_mask=mask).logits.cpu()
        finally:
            self.train(was_training)
        return out[0] if single else out

    def spec(self) -> dict[str, Any]:
        return {"num_labels": self.num_labels, "pad_token_id": self.pad_token_id,
                "id2label": {str(k): v for k, v in self.id2label.items()}}


# ------------------------------------------------------------------------------------------ loading


def load_hf(
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    lowercase: Literal["unk", "upper"] | None = None,
    append_sep: bool | None = None,
    prepend_bos: bool | None = None,
) -> DNALM | HyenaDNAClassifier:
    """Load a HyenaDNA ``-hf`` folder: a DNALM (causal LM) or a :class:`HyenaDNAClassifier`, in eval mode.

    The tokenizer reproduces the checkpoint's (lower case -> [UNK], [SEP] appended, no [BOS]); the keyword
    arguments override those settings (e.g. ``lowercase="upper"`` reads soft-masked repeats as bases).
    Raises CheckpointError (naming the file and the key or field) before anything is returned.
    """
    folder = _as_path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a directory")
    info = read_hf_config(folder)
    state, where = read_hf_weights(folder)
    prefix = _backbone_prefix(state, where)
    kind = info.kind or ("classifier" if "score.weight" in state else "causal_lm")
    if kind == "base" and prefix != "backbone.":
        raise CheckpointError(f"{where}: config says HyenaDNAModel but the keys start with 'hyena.backbone.'")
    if kind != "base" and prefix != "hyena.backbone.":
        raise CheckpointError(f"{where}: config says {kind} but the keys start with 'backbone.' (a bare HyenaDNAModel)")
    tok_settings = dict(info.tokenizer)
    for name, value in (("lowercase", lowercase), ("append_sep", append_sep), ("prepend_bos", prepend_bos)):
        if value is not None:
            tok_settings[name] = value
    if tok_settings["lowercase"] not in ("unk", "upper"):
        raise CheckpointError(f"lowercase must be 'unk' or 'upper' (got {tok_settings['lowercase']!r})")
    tokenizer = Tokenizer(**tok_settings)
    config = info.config

    if kind == "classifier":
        config.tie_embeddings = True  # no LM head in a classification checkpoint
        score = state.get("score.weight")
        num_labels = info.num_labels or (score.shape[0] if score is not None and score.dim() == 2 else None)
        if num_labels is None:
            raise CheckpointError(f"{where}: missing keys: score.weight (and config.json gives no num_labels)")
        model: nn.Module = HyenaDNAClassifier(config, num_labels, info.pad_token_id, info.id2label, tokenizer)
        head_keys = {"score.weight": "head.weight"}
    else:
        config.tie_embeddings = "lm_head.weight" not in state  # the file's own head when it has one
        model = DNALM(config, tokenizer=tokenizer)
        head_keys = {} if config.tie_embeddings else {"lm_head.weight": "lm_head.weight"}
    mapped = _map_state(state, model, config, prefix, info.train_freq, where, head_keys)
    model.load_state_dict(mapped)
    return model.to(device).eval()


def load_converted_classifier(path: str | Path, device: str | torch.device = "cpu") -> HyenaDNAClassifier:
    """Read a classifier written by :func:`convert` (``format: dnalm-hf-classifier``)."""
    folder = _as_path(path)
    cfg = folder / CONFIG_FILE
    meta = read_checkpoint_meta(folder, CLASSIFIER_FORMAT, "not a converted HyenaDNA classifier")
    try:
        config = model_config_from_dict(meta["model"], where=f"{cfg}:model")
        spec = meta["classifier"]
        model = HyenaDNAClassifier(
            config, int(spec["num_labels"]), spec.get("pad_token_id"),
            {int(k): v for k, v in (spec.get("id2label") or {}).items()}, Tokenizer(**meta.get("tokenizer", {})),
        )
    except (ConfigError, TypeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{cfg}: {e}") from None
    return load_weights(model, folder, device)


def load(path: str | Path, device: str | torch.device = "cpu") -> DNALM | HyenaDNAClassifier:
    """``dnalm.load``'s entry for HyenaDNA: a ``-hf`` folder or a converted classifier."""
    if is_converted_classifier(path):
        return load_converted_classifier(path, device)
    return load_hf(path, device)


# ------------------------------------------------------------------------------------------ convert / export


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    lowercase: Literal["unk", "upper"] | None = None,
    append_sep: bool | None = None,
    verify: bool = True,
) -> tuple[DNALM | HyenaDNAClassifier, float | None]:
    """Write the HyenaDNA ``-hf`` folder ``src`` as a native checkpoint ``dst`` (atomically).

    With ``verify`` the written checkpoint is read back and run on a short real-DNA probe beside the
    in-memory import; returns (model, max abs difference of the outputs), which should be 0.
    """
    model = load_hf(src, lowercase=lowercase, append_sep=append_sep)
    info = {"converted_from": str(src), "source_format": "hyenadna-hf"}
    if isinstance(model, HyenaDNAClassifier):
        with atomic_dir(dst) as tmp:
            meta = {"format": CLASSIFIER_FORMAT, "model": to_dict(model.config), "tokenizer": model.tokenizer.to_dict(),
                    "classifier": model.spec(), "info": info}
            (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            save_model(model, str(tmp / WEIGHTS_FILE))
    else:
        save_pretrained(model, dst, extra={"info": info})
    diff = None
    if verify:
        again = load(dst) if isinstance(model, HyenaDNAClassifier) else _load_native(dst)
        ids, _ = model.tokenizer.encode(_PROBE[: max(1, model.config.max_len - 2)], "probe")
        probe = torch.tensor([ids], dtype=torch.long)  # (1, L)
        with torch.no_grad():
            a, b = model(probe), again(probe)
        diff = float((a.logits - b.logits).abs().max())
    return model, diff


def _load_native(path: str | Path) -> DNALM:
    return load_pretrained(path)


# 64 bases of phage lambda (NC_001416.1, 0-based [1000:1064]): the probe of ``convert(verify=True)``.
_PROBE = "GCAGCGCAACACCCTTATCTGGTTGCCGACGGATGGTGATGCCGAGAACTTTATGAAAACCCAC"


def save_hf(
    model: DNALM | HyenaDNAClassifier,
    path: str | Path,
    weights: Literal["bin", "safetensors"] = "safetensors",
) -> Path:
    """Write a native HyenaDNA (DNALM or HyenaDNAClassifier) as a HyenaDNA ``-hf`` folder, atomically.

    ``weights="bin"`` reproduces the published layout (``pytorch_model.bin``, the Sin frequency saved under
    every Sin slot as one shared storage); ``"safetensors"`` keeps one frequency key per filter, as a
    safetensors export of the reference does. Raises CheckpointError for a model the reference cannot
    express (order other than 2, short filter other than 3, block eps other than 1e-5, shift other than 0.05).
    """
    config = model.config
    if not isinstance(config, HyenaConfig):
        raise CheckpointError(f"save_hf needs a HyenaDNA model (family 'hyena'), not {config.family!r}")
    for name, value, want in (("order", config.order, 2), ("short_filter_order", config.short_filter_order, 3),
                              ("block_ln_eps", config.block_ln_eps, BLOCK_LN_EPS),
                              ("modulation_shift", config.modulation_shift, 0.05)):
        if value != want:
            raise CheckpointError(f"model.{name} is {value}; the HyenaDNA -hf layout only expresses {want}")
    if config.vocab_size < VOCAB_SIZE:
        raise CheckpointError(f"model.vocab_size {config.vocab_size} is smaller than the {VOCAB_SIZE} HyenaDNA ids")
    multiple = 8 if -(-VOCAB_SIZE // 8) * 8 == config.vocab_size else config.vocab_size
    is_cls = isinstance(model, HyenaDNAClassifier)
    lm = model.lm if is_cls else model
    prefix = "hyena.backbone."
    state: dict[str, torch.Tensor] = {}
    for key, tensor in lm.state_dict().items():
        if is_cls and key == "lm_head.weight":
            continue  # a classification checkpoint has no LM head
        names = _native_to_hf_names(key, config, prefix, True)
        if key.endswith("implicit_filter.freq"):
            t = tensor.detach().clone()
            for n in names if weights == "bin" else names[:1]:
                state[n] = t  # one storage under every name, as torch.save of the reference writes it
            continue
        state[names[0]] = tensor.detach().clone()
        if key.endswith("filter_fn.pos_emb.z"):
            t_key = names[0][: -len(".z")] + ".t"
            state[t_key] = lm.get_submodule(key[: -len(".z")]).t.detach().clone()
    if is_cls:
        state["score.weight"] = model.head.weight.detach().clone()
        arch = "HyenaDNAForSequenceClassification"
    else:
        if lm.lm_head is None:
            state["lm_head.weight"] = lm.embed.weight.detach().clone()  # the reference always has one
        arch = "HyenaDNAForCausalLM"
    hf_config: dict[str, Any] = {
        "activation_freq": config.activation_freq, "architectures": [arch], "d_inner": config.d_inner,
        "d_model": config.d_model, "emb_dim": config.emb_dim, "embed_dropout": 0.1,
        "filter_order": config.filter_order, "hyena_dropout": config.dropout, "hyena_filter_dropout": 0.0,
        "hyena_order": 2, "initializer_range": 0.02, "layer_norm_epsilon": config.ln_eps,
        "max_seq_len": config.l_max, "model_type": "hyenadna", "n_layer": config.n_layer,
        "num_inner_mlps": config.num_inner_mlps, "pad_vocab_size_multiple": multiple,
        "short_filter_order": 3, "tie_word_embeddings": False, "torch_dtype": "float32", "train_freq": True,
        "use_bias": True, "vocab_size": VOCAB_SIZE,
    }
    if is_cls:
        hf_config["id2label"] = {str(k): v for k, v in model.id2label.items()}
        hf_config["label2id"] = {v: k for k, v in model.id2label.items()}
        hf_config["pad_token_id"] = model.pad_token_id
    tok = lm.tokenizer
    tok_config = {"characters": list(BASES), "model_max_length": tok.model_max_length or config.l_max,
                  "padding_side": tok.padding_side, "tokenizer_class": "CharacterTokenizer"}
    with atomic_dir(path) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
        if weights == "bin":
            torch.save(state, tmp / "pytorch_model.bin")
        elif weights == "safetensors":
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"))
        else:
            raise ValueError(f"weights must be 'bin' or 'safetensors' (got {weights!r})")
    return Path(path)


FORMAT = CheckpointFormat(
    name="hyenadna-hf",
    description="HyenaDNA Hugging Face folder (LongSafari/hyenadna-*-hf), or a classifier converted from one",
    detect=lambda path: is_hf_folder(path) or is_converted_classifier(path),
    load=load,
    convert=convert,
    export=save_hf,
    read_config=lambda path: read_hf_config(path).config if is_hf_folder(path) else None,
)
