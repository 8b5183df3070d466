"""Typed configuration machinery, and the data and training sections of a run.

YAML run files are plain data mapped onto dataclasses. Unknown keys are an error (never silently
ignored), values are type-checked, and derived values (for example the MLP width) are computed in code,
not written in YAML. Each model family's config dataclass lives in its family file (``dnalm/models/``);
a whole run file is read by ``dnalm.train.config.load_run_config``, which resolves the model section and
``preset:`` through the model registry.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A bad configuration value or key; the message names the field."""


def _round_up(x: float, multiple: int) -> int:
    return int(math.ceil(x / multiple) * multiple)


# ------------------------------------------------------------------------------------------- data/train


@dataclass
class StageConfig:
    """One stage of the length schedule: ``batch_size`` windows of ``seq_len`` per step, for ``steps``
    steps or ``tokens`` tokens (the last stage may give neither: it runs until train.steps)."""

    seq_len: int
    batch_size: int
    steps: int | None = None
    tokens: int | None = None


@dataclass
class SourceConfig:
    """One source of a data mixture."""

    kind: Literal["random", "genic"] = "random"
    weight: float = 1.0
    flank: int = 1000  # genic windows: bases kept around each gene
    exclude: list[str] = field(default_factory=list)  # record-name glob patterns to skip


@dataclass
class DataConfig:
    """Where training data comes from and how windows are drawn."""

    store: str | None = None  # a prepared store; None means prepare the inputs below into the run dir
    inputs: list[str] = field(default_factory=list)  # FASTA/GenBank files; empty = the embedded E. coli genome
    annotations: list[str] = field(default_factory=list)  # GFF3/GTF for genic windows
    holdout_fraction: float = 0.1  # prepare: fraction of each record held out (half validation, half test)
    seq_len: int = 1024
    rc_augment: bool = True
    max_n_fraction: float = 0.1
    repeat_weight: float = 1.0  # loss weight for lower-case (soft-masked) bases; Evo 2 uses 0.1
    sources: list[SourceConfig] = field(default_factory=list)  # empty = random windows only
    warmup_stages: list[StageConfig] = field(default_factory=list)  # sequence-length warm-up (empty = off)


DEFAULT_LORA_TARGETS = ("in_proj", "out_proj", "Wqkv", "mlp.*")


@dataclass
class LoRAConfig:
    """Low-rank adapters (dnalm/models/lora.py): rank r, scale alpha / r, the linear layers to adapt (glob
    patterns over module names, e.g. ``in_proj``, ``Wqkv``, ``mlp.*``) and dropout on the adapters' input."""

    rank: int = 8
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            self.targets = [t.strip() for t in self.targets.split(",") if t.strip()]
        self.targets = list(self.targets)
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"LoRA rank must be a whole number >= 1 (got {self.rank!r})")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not (
            math.isfinite(self.alpha) and self.alpha > 0
        ):
            raise ConfigError(f"LoRA alpha must be a finite number > 0 (got {self.alpha!r})")
        self.alpha = float(self.alpha)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError(f"LoRA dropout must be in [0, 1) (got {self.dropout!r})")
        self.dropout = float(self.dropout)
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ConfigError("LoRA targets must be non-empty patterns, e.g. in_proj,out_proj,Wqkv,mlp.*")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


@dataclass
class TrainConfig:
    """Optimisation, evaluation and checkpointing."""

    steps: int = 1000
    batch_size: int = 16  # global batch (sequences per optimizer step)
    grad_accum: int = 1
    lr: float = 6e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int | None = None  # None means 1% of steps
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # autocast dtype; auto: chosen per machine (dnalm/runtime.py)
    seed: int = 0  # model init
    data_seed: int = 0  # data order
    eval_every: int = 200
    eval_tokens: int | None = 200_000  # cap on validation tokens per evaluation (None = whole split)
    eval_batch_size: int = 8
    log_every: int = 10
    ckpt_every: int = 200
    keep_last: int = 2
    max_bad_steps: int = 5  # consecutive non-finite losses before the run stops
    max_time_minutes: float | None = None  # stop (and checkpoint) after this wall time
    threads: int | None = None  # torch CPU threads (None = the free usable cores, adjusted if steps slow down; dnalm/runtime.py)
    # several processes (torchrun; see dnalm/train/distributed.py): "ddp" replicates the model,
    # "fsdp" shards parameters, gradients and optimizer state (FSDP2); both write sharded checkpoints
    parallel: Literal["none", "ddp", "fsdp"] = "none"
    activation_checkpointing: bool = False  # recompute each block's activations in backward (less memory)
    init_from: str | None = None  # start from this run's/checkpoint's weights (a new stage; fresh optimizer and LR)
    extend_from_len: int | None = None  # context extension: the length the init_from model was trained at
    # train low-rank adapters only (the init_from model frozen in its stored dtype): {rank, alpha, targets, dropout}
    lora: LoRAConfig | None = None

    def __post_init__(self) -> None:
        _positive(self, "steps", "batch_size", "grad_accum", "eval_every", "log_every", "ckpt_every", "keep_last")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0 (got {self.lr})")
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"train.batch_size ({self.batch_size}) must be divisible by train.grad_accum ({self.grad_accum})"
            )
        if self.warmup_steps is None:
            self.warmup_steps = max(1, self.steps // 100)


@dataclass
class RunConfig:
    """A whole training run: model, data, train, and where to write it."""

    model: Any = None  # a family's config dataclass (dnalm/models/)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out_dir: str = "runs/demo"
    preset: str | None = None  # informational: the preset the model section came from

    def to_dict(self) -> dict:
        return to_dict(self)


def read_yaml_mapping(path: str | Path, what: str) -> dict:
    """A YAML file whose top level is a mapping (``safe_load`` only); ConfigError naming the file otherwise."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; expected the {what} (a YAML file)")
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start + 1}: {e.reason}); save the {what} as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` strings to a nested dict in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {p} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError:
            node[parts[-1]] = raw
    return data


def upgrade_legacy_keys(data: dict, announce: bool = True) -> dict:
    """Renamed keys of older run configs, mapped in place: ``train.bf16: true|false`` is now
    ``train.precision: bf16|fp32`` (announced on stderr unless ``announce`` is False)."""
    train = data.get("train")
    if isinstance(train, dict) and "bf16" in train:
        old = train.pop("bf16")
        if "precision" in train:
            raise ConfigError("train.bf16 and train.precision are both set; keep train.precision (bf16 is its old name)")
        if not isinstance(old, bool):
            raise ConfigError(f"train.bf16 must be true or false (got {old!r}); it is now train.precision: auto|fp32|bf16|fp16")
        train["precision"] = "bf16" if old else "fp32"
        if announce:
            print(f"note: train.bf16 is now train.precision; read bf16: {str(old).lower()} as precision: "
                  f"{train['precision']} (precision: auto picks bf16 only where it is faster)", file=sys.stderr)
    return data


# ------------------------------------------------------------------------------------------- helpers


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is None or value <= 0:
            raise ConfigError(f"{type(obj).__name__}.{name} must be > 0 (got {value})")


def to_dict(obj: Any) -> Any:
    """Dataclass (possibly nested) -> plain JSON/YAML-able data."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def from_dict(cls: type, d: dict, where: str) -> Any:
    """Plain dict -> dataclass, recursively, rejecting unknown keys and wrong types."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(
            f"unknown key(s) in {where or 'the run config'}: {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for key, value in d.items():
        kwargs[key] = _coerce(hints[key], value, f"{where}.{key}" if where else key)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where or 'config'}: {e}") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {list(args)} (got {value!r})")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list (got {value!r})")
        if origin is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
            if len(value) != len(args):
                raise ConfigError(f"{where} must have {len(args)} items (got {len(value)})")
            return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false (got {value!r})")
        return value
    if tp is int:
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or int(value) != value):
            raise ConfigError(f"{where} must be an integer (got {value!r})")
        return int(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number (got {value!r})")
        if not math.isfinite(value):  # YAML reads .nan and .inf as floats; no setting means them
            raise ConfigError(f"{where} must be a finite number (got {value!r})")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string (got {value!r})")
        return value
    return value
