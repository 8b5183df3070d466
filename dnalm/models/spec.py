"""What a model family tells the rest of dnalm: the :class:`ModelSpec`, the :class:`Backbone` contract, and
the registry of families.

Each family file (``dnalm/models/hyena.py``, ``transformer.py``, ``striped_hyena.py``, ``hnet.py``) ends
with one ``SPEC = ModelSpec(...)``; ``dnalm/models/__init__.py`` registers them. The language-model shell
(``dnalm.models.lm``), the trainer, the optimizer, the FLOP counter and the memory planner read a spec and
never branch on a family name, so a new family is one file plus one :func:`register` call.

The counting helpers below (FLOP and parameter terms of the usual pieces, the :class:`LayerSpec` the
memory planner reads) are the building blocks the family files use for their own counts; the
conventions they follow are stated in ``dnalm/scaling/flops.py`` and ``dnalm/scaling/plan.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import nn

from dnalm.config import ConfigError
from dnalm.ops.fftconv import fft_size

__all__ = [
    "Backbone",
    "RecurrentBackbone",
    "PrefixBackbone",
    "BackboneOutput",
    "ModelSpec",
    "FlopTerms",
    "LayerSpec",
    "ActivationShape",
    "SPECS",
    "register",
    "get_spec",
    "spec_of",
]


# ------------------------------------------------------------------------------------------ the contract


@dataclass
class BackboneOutput:
    """What a family's backbone returns."""

    hidden: torch.Tensor  # (B, L, D), before the final norm
    hidden_states: list[torch.Tensor] | None = None  # after each block, when requested
    aux_loss: torch.Tensor | None = None  # added to the LM loss (e.g. H-Net ratio loss)
    metrics: dict[str, float] = field(default_factory=dict)  # logged by the trainer


@runtime_checkable
class Backbone(Protocol):
    """A family's backbone: embeddings (B, L, D) -> hidden states (B, L, D) before the shell's final norm.

    ``backbone_class(config)`` builds it. Blocks live in ``nn.ModuleList`` attributes named ``layers``
    (anywhere inside the backbone): that is what FSDP shards block by block and what activation
    checkpointing wraps (``dnalm.train.distributed.model_blocks``).
    """

    def forward(self, x: torch.Tensor, output_hidden_states: bool = False) -> BackboneOutput: ...


@runtime_checkable
class RecurrentBackbone(Backbone, Protocol):
    """A backbone that generates with a state (``dnalm.generation``); without these methods generation
    recomputes the whole prefix for every token.

    ``prefill(x (B, L, D)) -> (hidden (B, L, D), state)`` and ``step(x_t (B, D), state) -> (hidden_t (B, D),
    state)``, hidden states taken before the final norm, like ``forward``; the state may be updated in place.
    """

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]: ...

    def step(self, x_t: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]: ...


# ------------------------------------------------------------------------------------------ counting


@dataclass
class FlopTerms:
    """Forward FLOPs per token by term (see ``dnalm/scaling/flops.py`` for the conventions)."""

    terms: dict[str, float] = field(default_factory=dict)  # dense matmul / convolution terms
    fft_terms: dict[str, float] = field(default_factory=dict)  # FFT long convolutions
    other_terms: dict[str, float] = field(default_factory=dict)  # analytic-only
    layer_kinds: list[str] = field(default_factory=list)  # mixer kind of each layer, in order

    def add(self, key: str, value: float) -> None:
        self.terms[key] = self.terms.get(key, 0.0) + float(value)

    def add_fft(self, parts: dict[str, float]) -> None:
        for key, value in parts.items():
            self.fft_terms[key] = self.fft_terms.get(key, 0.0) + float(value)


def rfft_flops(n: int) -> float:
    """FLOPs of one real FFT (or inverse real FFT) of size ``n``: 2.5 * n * log2(n)."""
    return 2.5 * n * math.log2(n) if n > 1 else 0.0


def fft_conv_flops(channels: int, L: int, B: int, filter_len: int | None = None) -> dict[str, float]:
    """FFT causal convolution of ``channels`` channels, per token: rfft(u), product, irfft, rfft(h)/B."""
    n = fft_size(L, filter_len if filter_len is not None else L)
    bins = n // 2 + 1
    return {
        "long_conv_fft": channels * 2 * rfft_flops(n) / L,  # rfft of the input + irfft of the product
        "long_conv_product": channels * 6 * bins / L,  # complex multiply: 6 real FLOPs per bin
        "filter_fft": channels * rfft_flops(n) / (L * B),  # once per sequence batch, broadcast over B
    }


def gated_mlp_flops(d: int, f: int) -> float:
    """l3(act(l1 z) * l2 z) (or SwiGLU): three d x f matmuls."""
    return 6.0 * d * f


def attention_core_flops(d: int, L: int, causal_savings: bool) -> float:
    """QK^T and AV per token: 2*L*d each (dense); a causal kernel skipping masked tiles does ~(L+1)/2."""
    keys = (L + 1) / 2 if causal_savings else L
    return 4.0 * keys * d


def attention_layer_flops(out: FlopTerms, d: int, L: int, causal_savings: bool, share: float = 1.0) -> None:
    """The qkv projection, the attention core and the output projection of one attention mixer."""
    out.add("qkv_proj", share * 6 * d * d)
    out.add("attention_core", share * attention_core_flops(d, int(round(L)), causal_savings))
    out.add("attn_out_proj", share * 2 * d * d)


def ssd_flops(L: int, T: int, heads_x_headdim: int, n: int) -> float:
    """Chunked SSD scan FLOPs per token (one B/C group; einsums as in dnalm.models.mamba2.ssd_chunked):
    C.B inside chunks (2Tn), the masked (T, T) mix of x (2T*E), chunk states and their read-out (4E*n);
    the sequence is padded to a whole number of chunks."""
    E = heads_x_headdim
    pad = math.ceil(L / T) * T / L
    return pad * (2 * T * n + 2 * T * E + 4 * E * n)


def attention_block_params(d: int, bias: bool) -> int:
    """Wqkv + out_proj (+ their biases)."""
    return 4 * d * d + (4 * d if bias else 0)


def layer_params_estimate(d: int, f: int, gated: bool) -> float:
    """Parameters of one d-wide block with an f-wide MLP: Wqkv + out (or in_proj 3D + out_proj) and the MLP.
    The memory planner sizes FSDP's gathered-layer buffers with it."""
    return 4 * d * d + (3 if gated else 2) * d * f


@dataclass
class LayerSpec:
    """What the memory planner's activation model needs to know about one block."""

    kind: str  # attention | long_conv (Hyena, by FFT) | explicit_conv (short Hyena FIR, direct) | mamba | routing
    filter_len: int | None = None  # FFT filter length (None = the sequence length)
    modal_states: int = 0  # modes per channel of a modal filter (its power tables are saved, per sequence)
    modal_complex: bool = False  # complex poles (Evo 1) or real (Hyena-LI)
    filter_mlp: float = 0.0  # HyenaDNA: elements per position saved by the implicit filter MLP
    mlp_saved: int = 4  # MLP hidden tensors saved: gated with activation 4, bilinear GLU 3, GELU MLP 2
    width: int | None = None  # block width (None = the model's d_model); dnaHNet stages differ
    mlp_hidden: int | None = None  # MLP width (None = the model's)
    share: float = 1.0  # positions this block sees per nucleotide (dnaHNet: 1 / product of ratios so far)
    mamba: tuple[int, int, int, int] | None = None  # Mamba-2 (d_state, headdim, chunk, expand)
    chunk: int = 256  # dnaHNet routing: SSD chunk of the EMA dechunking
    next_share: float = 0.0  # dnaHNet routing: chunk positions per position of this level


@dataclass
class ActivationShape:
    """A family's description of its blocks for the memory planner (``dnalm.scaling.plan.ModelShape``)."""

    layers: list[LayerSpec]  # one per block
    n_layer: int
    mlp_hidden: int
    mlp_gated: bool  # gated (3 matrices) or GELU (2 matrices) MLP
    largest_layer_params: float
    norm: str = "rms"  # rms (saves input and normalised input) | layer (saves input only)
    order: int = 2  # Hyena order (number of projections - 1)
    note: str = ""  # how the shape was obtained, when that needs saying


@runtime_checkable
class PrefixBackbone(Backbone, Protocol):
    """A causal backbone that continues from a shared prefix (``ModelSpec.prefix_sharing``).

    Rows that agree on their first p positions (a reference window and its variants) have identical
    outputs there; ``forward_prefix`` runs those p positions once and returns what the rest needs,
    ``forward_from`` runs only the remaining positions of any number of rows against that state. Exact:
    the same function as ``forward`` on the whole rows (up to float rounding).
    """

    def forward_prefix(self, x: torch.Tensor, total_len: int) -> tuple[torch.Tensor, Any]:
        """Prefix embeddings x (1, p, D) of rows ``total_len`` long -> (hidden (1, p, D), the prefix state)."""
        ...

    def forward_from(self, x: torch.Tensor, state: Any) -> torch.Tensor:
        """Embeddings of positions p .. total_len-1 of B rows, x (B, total_len - p, D) -> hidden (B, ., D).
        ``state`` is not changed: one state serves several calls."""
        ...


# ------------------------------------------------------------------------------------------ the spec


def _no_extra_decay_exclusions(name: str) -> bool:
    return False


@dataclass(frozen=True)
class ModelSpec:
    """Everything the rest of dnalm needs to know about one model family.

    Attributes:
        family: the name configs use (``model.family``).
        config: the config dataclass; its ``family`` field defaults to ``family``.
        backbone: the backbone class, built as ``backbone(config)`` (see :class:`Backbone`).
        final_norm: ``final_norm(config)`` -> the norm the shell applies after the backbone.
        count_params: ``count_params(config)`` -> parameters of the backbone and the final norm (the shell
            adds the token embedding and an untied head), from the config alone.
        flops: ``flops(config, seq_len, batch_size, causal_savings, **options)`` -> :class:`FlopTerms`,
            forward FLOPs per token.
        activations: ``activations(config)`` -> :class:`ActivationShape` for the memory planner.
        length_field: the config field that sets the longest input (``l_max`` for HyenaDNA, ``max_len``
            for the others); every config also exposes ``max_len``.
        no_weight_decay: ``no_weight_decay(name)`` -> True for a parameter (named relative to the DNALM)
            that gets no weight decay beyond the shared rule (vectors, norms, biases, the token embedding).
        extend_context: ``extend_context(config, new_len, base_len)`` -> the config of a context-extension
            stage, or None when the family has no positions to rescale (RoPE).
        presets: name -> zero-argument function returning a fresh config.
        formats: names of the foreign checkpoint formats (``dnalm.formats``) that map onto this family.
        upgrade: ``upgrade(model_dict)`` -> (model_dict, state_transform or None, note or None): how a
            checkpoint written by an older dnalm is read today. ``state_transform(state, config)`` maps the
            saved tensors onto the current parameters; ``note`` says what changed (shown as a warning).
        prefix_sharing: the backbone is a :class:`PrefixBackbone` (causal, with ``forward_prefix`` and
            ``forward_from``); the scoring core then computes a prefix shared by several rows once.
    """

    family: str
    config: type
    backbone: Callable[[Any], nn.Module]
    final_norm: Callable[[Any], nn.Module]
    count_params: Callable[[Any], int]
    flops: Callable[..., FlopTerms]
    activations: Callable[[Any], ActivationShape]
    length_field: str = "max_len"
    no_weight_decay: Callable[[str], bool] = _no_extra_decay_exclusions
    extend_context: Callable[..., Any] | None = None
    presets: dict[str, Callable[[], Any]] = field(default_factory=dict)
    formats: tuple[str, ...] = ()
    upgrade: Callable[[dict], tuple[dict, Callable[..., dict] | None, str | None]] | None = None
    prefix_sharing: bool = False


# ------------------------------------------------------------------------------------------ registry

SPECS: dict[str, ModelSpec] = {}  # family name -> spec, in registration order


def register(spec: ModelSpec) -> ModelSpec:
    """Add a family (a test or a plugin may add its own). Its name and preset names must be new."""
    if spec.family in SPECS and SPECS[spec.family] is not spec:
        raise ValueError(f"model family {spec.family!r} is already registered")
    taken = {name for other in SPECS.values() if other is not spec for name in other.presets}
    clash = sorted(taken & set(spec.presets))
    if clash:
        raise ValueError(f"preset name(s) {clash} of family {spec.family!r} are already registered")
    SPECS[spec.family] = spec
    return spec


def get_spec(family: str) -> ModelSpec:
    """The spec of ``family``; ConfigError naming the known families otherwise."""
    spec = SPECS.get(family)
    if spec is None:
        raise ConfigError(f"unknown model family {family!r}; known: {', '.join(sorted(SPECS))}")
    return spec


def spec_of(config: Any) -> ModelSpec:
    """The spec of a family config object (by its ``family`` field)."""
    return get_spec(getattr(config, "family", None))
