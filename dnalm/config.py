"""Typed configuration: one dataclass per model family, plus the data and training sections of a run.

YAML run files are plain data mapped onto these dataclasses. Unknown keys are an error (never silently
ignored), values are type-checked, and derived values (for example the MLP width) are computed here in
code, not written in YAML.
"""

from __future__ import annotations

import dataclasses
import math
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


# ----------------------------------------------------------------------------------------------- models


@dataclass
class HyenaConfig:
    """HyenaDNA (SPEC section 1): Hyena operator blocks with implicit long filters."""

    family: Literal["hyena"] = "hyena"
    n_layer: int = 2
    d_model: int = 128
    l_max: int = 1026  # filter table length; time is normalised to l_max (train length + 2)
    vocab_size: int = 16
    order: int = 2  # Hyena order N: N-1 long convolutions, N+1 projections
    filter_order: int = 64  # width of the implicit filter MLP
    emb_dim: int = 5  # positional features: t plus (emb_dim-1)/2 cos/sin bands
    num_inner_mlps: int = 2
    activation_freq: float = 10.0
    modulation_shift: float = 0.05
    short_filter_order: int = 3
    d_inner: int | None = None  # MLP width; None means 4 * d_model
    ln_eps: float = 1e-5  # final LayerNorm
    block_ln_eps: float = 1e-5  # LayerNorms inside blocks (HyenaDNA hard-codes 1e-5)
    dropout: float = 0.0
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.d_inner is None:
            self.d_inner = 4 * self.d_model
        _positive(self, "n_layer", "d_model", "l_max", "vocab_size", "filter_order", "emb_dim", "d_inner")
        if self.order < 2:
            raise ConfigError(f"model.order must be >= 2 (got {self.order})")
        if self.emb_dim < 3 or self.emb_dim % 2 == 0:
            raise ConfigError(f"model.emb_dim must be odd and >= 3 (got {self.emb_dim})")

    @property
    def max_len(self) -> int:
        """Longest input the model accepts (the filter table length)."""
        return self.l_max


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


@dataclass
class StripedHyenaConfig:
    """StripedHyena (Evo, ``version`` 1) and StripedHyena 2 (Evo 2, ``version`` 2): SPEC sections 2-3.

    ``layers`` names the block at each depth (n_layer names). Version 1: "hyena" (gated convolution with
    the modal pole/residue long filter) and "attn" (RoPE attention). Version 2: "se" (explicit length
    ``se_len`` grouped FIR), "mr" (explicit length ``mr_len`` grouped, decay-regularised), "li" (implicit
    real modal filter, full length) and "attn". Left out, it is derived: version 1 puts attention at
    every 8th layer from layer 8 (Evo 1 7B: 8, 16, 24), version 2 repeats SE, MR, LI, MHA, SE, MR, LI
    (Evo 2 7B). See dnalm/models/striped_hyena.py for the blocks.
    """

    family: Literal["striped_hyena"] = "striped_hyena"
    version: Literal[1, 2] = 1
    n_layer: int = 4
    d_model: int = 128
    n_head: int = 4
    max_len: int = 1026
    vocab_size: int = 16
    layers: list[str] | None = None  # block name per depth; None = the published pattern (see above)
    mlp_hidden: int | None = None  # gated-MLP width; None means 8/3 * d_model rounded up to a multiple of 64
    state_size: int | None = None  # modes per channel of modal filters; None = 8 (version 1) or 16 (version 2)
    short_filter_len: int = 3  # depthwise FIR on the 3D projections
    se_len: int = 7
    mr_len: int = 128
    filter_groups: int | None = None  # SE/MR filter groups; None = d_model // 16 (Evo 2: 256 at d_model 4096)
    rope_base: float = 10000.0
    rope_interp: float = 1.0  # linear position interpolation: positions are divided by this
    norm_eps: float = 1e-6
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.mlp_hidden is None:
            self.mlp_hidden = _round_up(8 * self.d_model / 3, 64)
        if self.state_size is None:
            self.state_size = 8 if self.version == 1 else 16
        if self.filter_groups is None:
            self.filter_groups = max(1, self.d_model // 16)
        _positive(self, "n_layer", "d_model", "n_head", "max_len", "vocab_size", "mlp_hidden", "state_size")
        _positive(self, "short_filter_len", "se_len", "mr_len", "filter_groups", "rope_base", "rope_interp")
        if self.layers is None:
            if self.version == 1:
                self.layers = ["attn" if i and i % 8 == 0 else "hyena" for i in range(self.n_layer)]
            else:
                self.layers = [("se", "mr", "li", "attn", "se", "mr", "li")[i % 7] for i in range(self.n_layer)]
        allowed = ("hyena", "attn") if self.version == 1 else ("se", "mr", "li", "attn")
        if len(self.layers) != self.n_layer:
            raise ConfigError(f"model.layers has {len(self.layers)} names but model.n_layer is {self.n_layer}")
        for i, kind in enumerate(self.layers):
            if kind not in allowed:
                raise ConfigError(f"model.layers[{i}] is {kind!r}; version {self.version} allows {list(allowed)}")
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ConfigError(
                f"model.d_model ({self.d_model}) must split into n_head ({self.n_head}) heads of even size"
            )
        if self.d_model % self.filter_groups:
            raise ConfigError(f"model.d_model ({self.d_model}) must be divisible by filter_groups ({self.filter_groups})")


@dataclass
class HNetConfig:
    """dnaHNet (SPEC section 5): H-Net dynamic chunking over nucleotides; see dnalm/models/hnet.py.

    The hierarchy has ``len(target_ratios)`` stages. Stage s runs ``encoder_layout[s]`` at width
    ``widths[s]``, chunks with target ratio ``target_ratios[s]``, hands the chunks to stage s+1 and
    decodes with ``decoder_layout[s]``; the innermost level runs ``main_layout``. Widths:
    ``d_model`` at the nucleotide level, then ``inner_d_model`` (one per stage, the last is the main
    network's), never shrinking. Layouts are strings like "t1m4" (m = Mamba-2 block, t = attention block).
    """

    family: Literal["hnet"] = "hnet"
    d_model: int = 64  # nucleotide-level width (the embedding width)
    inner_d_model: list[int] = field(default_factory=lambda: [96, 128])  # widths of stage 1.. and the main network
    target_ratios: list[float] = field(default_factory=lambda: [3.0, 2.0])  # N per stage; (3,2) as in the paper
    encoder_layout: list[str] = field(default_factory=lambda: ["t1m4", "t1m4"])  # per stage
    decoder_layout: list[str] = field(default_factory=lambda: ["m4t1", "m4t1"])  # per stage
    main_layout: str = "t2"
    attn_head_dim: int = 32  # attention heads = width // attn_head_dim
    d_state: int = 128  # Mamba-2
    mamba_expand: int = 2
    mamba_d_conv: int = 4
    mamba_headdim: int = 64
    ssd_chunk_size: int = 256
    ratio_loss_alpha: float = 0.03  # total loss = NLL + alpha * sum of per-stage ratio losses
    max_len: int = 1026
    vocab_size: int = 16
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        import re

        _positive(self, "d_model", "attn_head_dim", "d_state", "mamba_expand", "mamba_d_conv", "mamba_headdim")
        _positive(self, "ssd_chunk_size", "max_len", "vocab_size", "rope_base")
        S = len(self.target_ratios)
        if S < 1:
            raise ConfigError("model.target_ratios needs one ratio per stage (at least one stage)")
        for name in ("inner_d_model", "encoder_layout", "decoder_layout"):
            if len(getattr(self, name)) != S:
                raise ConfigError(
                    f"model.{name} has {len(getattr(self, name))} entries but model.target_ratios has {S} (one per stage)"
                )
        for i, r in enumerate(self.target_ratios):
            if not r > 1:
                raise ConfigError(f"model.target_ratios[{i}] must be > 1 (got {r})")
        if self.ratio_loss_alpha < 0:
            raise ConfigError(f"model.ratio_loss_alpha must be >= 0 (got {self.ratio_loss_alpha})")
        if self.attn_head_dim % 2:
            raise ConfigError(f"model.attn_head_dim must be even for RoPE (got {self.attn_head_dim})")
        widths = self.widths
        for i in range(1, len(widths)):
            if widths[i] < widths[i - 1]:
                raise ConfigError(f"model.inner_d_model must never shrink (widths by level: {widths})")
        levels = [(f"encoder_layout[{s}]", self.encoder_layout[s], widths[s]) for s in range(S)]
        levels += [(f"decoder_layout[{s}]", self.decoder_layout[s], widths[s]) for s in range(S)]
        levels.append(("main_layout", self.main_layout, widths[S]))
        for name, layout, d in levels:
            s = str(layout).replace(" ", "").lower()
            if not s or re.sub(r"[mt]\d+", "", s):
                raise ConfigError(f"model.{name} is {layout!r}; expected groups like 'm4t1' (m = Mamba-2, t = attention)")
            if "t" in s and d % self.attn_head_dim:
                raise ConfigError(f"model.{name}: width {d} is not a multiple of attn_head_dim ({self.attn_head_dim})")
            if "m" in s and (self.mamba_expand * d) % self.mamba_headdim:
                raise ConfigError(
                    f"model.{name}: mamba_expand * width ({self.mamba_expand * d}) is not a multiple of "
                    f"mamba_headdim ({self.mamba_headdim})"
                )

    @property
    def n_stages(self) -> int:
        return len(self.target_ratios)

    @property
    def widths(self) -> list[int]:
        """Width per level: nucleotides, stage 1, ..., main network."""
        return [self.d_model] + list(self.inner_d_model)

    @property
    def n_layers_total(self) -> int:
        """All layers on the path nucleotides -> main -> nucleotides (the GPT-2 init depth)."""
        import re

        layouts = list(self.encoder_layout) + list(self.decoder_layout) + [self.main_layout]
        return sum(int(n) for s in layouts for n in re.findall(r"\d+", s))

    def attn_mlp_hidden(self, d: int) -> int:
        """SwiGLU width of the attention blocks at width d: 8/3 d rounded up to a multiple of 64."""
        return _round_up(8 * d / 3, 64)


ModelConfig = Union[HyenaConfig, TransformerConfig, StripedHyenaConfig, HNetConfig]

# family name -> config class; each family file documents its own fields
MODEL_CONFIGS: dict[str, type] = {
    "hyena": HyenaConfig,
    "transformer": TransformerConfig,
    "striped_hyena": StripedHyenaConfig,
    "hnet": HNetConfig,
}


def model_config_from_dict(d: dict[str, Any], where: str = "model") -> Any:
    """Build the family's config from a plain dict (``family`` picks the class)."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(d).__name__}")
    family = d.get("family")
    if family not in MODEL_CONFIGS:
        raise ConfigError(f"{where}.family must be one of {sorted(MODEL_CONFIGS)} (got {family!r})")
    return from_dict(MODEL_CONFIGS[family], d, where)


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
    bf16: bool = False
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
    threads: int | None = None  # torch CPU threads (None = PyTorch default)
    # several processes (torchrun; see dnalm/train/distributed.py): "ddp" replicates the model,
    # "fsdp" shards parameters, gradients and optimizer state (FSDP2); both write sharded checkpoints
    parallel: Literal["none", "ddp", "fsdp"] = "none"
    activation_checkpointing: bool = False  # recompute each block's activations in backward (less memory)
    init_from: str | None = None  # start from this run's/checkpoint's weights (a new stage; fresh optimizer and LR)
    extend_from_len: int | None = None  # context extension: the length the init_from model was trained at

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

    model: Any = field(default_factory=HyenaConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out_dir: str = "runs/demo"
    preset: str | None = None  # informational: the preset the model section came from

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        if not isinstance(d, dict):
            raise ConfigError("a run config must be a mapping with model/data/train sections")
        d = dict(d)
        model = d.pop("model", None)
        preset = d.get("preset")
        if model is None:
            if preset is None:
                raise ConfigError("the run config needs a 'model' section or a 'preset' name")
            from dnalm.presets import get_preset

            model = to_dict(get_preset(preset))
        elif preset is not None:
            from dnalm.presets import get_preset

            # a preset plus a partial model section: the section overrides the preset's fields
            model = {**to_dict(get_preset(preset)), **model}
        run = from_dict(cls, d, "")
        run.model = model_config_from_dict(model)
        return run


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config and apply ``section.key=value`` overrides (values parsed as YAML scalars)."""
    data = read_yaml_mapping(path, "config file")
    apply_overrides(data, overrides or [])
    return RunConfig.from_dict(data)


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
