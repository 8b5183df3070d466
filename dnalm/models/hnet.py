"""dnaHNet: a tokenizer-free hierarchy with learned dynamic chunking (H-Net) on Mamba-2 and attention.

One *stage* reads a sequence, decides where chunks start, runs a deeper network on the chunks only,
and returns to its own resolution (docs/architectures.md §5):

    x (B, L, d_s) -> encoder -> h
    router:    p_t = ½(1 - cos(Wq h_t, Wk h_{t-1})), p_0 = 1;  b_t = p_t > 0.5    (Wq = Wk = I at init)
    chunk:     the h_t with b_t = 1, in order -> (B, M, d_s), padded on the right, with a mask
    main:      the next stage (an H-Net again) or, innermost, the main network (B, M, d_{s+1})
    dechunk:   EMA over chunks  z̄_j = P_j ẑ_j + (1 - P_j) z̄_{j-1},  P = p at chunk starts in [1e-4, 1-1e-4]
               then position t takes chunk cumsum(b)_t - 1
    output:    decoder(upsampled · STE(c_t) + residual_proj(h_t)),  c_t = p_t if b_t else 1 - p_t
               (STE is 1 in the forward pass and passes the gradient; residual_proj starts at zero)

Widths may grow with depth: entering a wider stage appends a learned vector to every position, and the
stage's output keeps only the first d_s channels (as H-Net does). Each stage adds a ratio loss
``N/(N-1) · ((N-1)·F·G + (1-F)·(1-G))`` with F the fraction of positions chosen and G the mean
boundary probability over the whole batch; its minimum is at F = G = 1/N for the stage's target ratio N.

Layer layouts are strings of (kind, count) groups: ``"t1m4"`` is one attention block (causal RoPE
attention + SwiGLU, pre-norm) followed by four Mamba-2 blocks. The default encoder ``t1m4`` and decoder
``m4t1`` follow the dnaHNet paper's 4 Mamba + 1 attention layers per side, ordered as H-Net's published
layouts (``T1m4`` / ``m4T1``: attention furthest from the router).

Generation (``prefill`` / ``step``): the encoder and decoder advance on every token; the main network
advances only when the router marks a boundary, otherwise the last smoothed chunk value is reused.
Samples of a batch place boundaries at different tokens, so the deeper network keeps one state per
sample and is stepped sample by sample (batched stepping works, with a Python loop over the samples
that are at a boundary).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from dnalm.config import ConfigError, _positive, _round_up
from dnalm.models.lm import gpt2_init, prefill_layers, step_layers
from dnalm.models.mamba2 import Mamba2Block, ssd_chunked
from dnalm.models.spec import (
    ActivationShape,
    BackboneOutput,
    FlopTerms,
    LayerSpec,
    ModelSpec,
    attention_block_params,
    attention_layer_flops,
    gated_mlp_flops,
    layer_params_estimate,
    ssd_flops,
)
from dnalm.models.transformer import TransformerBlock

_LAYOUT = re.compile(r"([mt])(\d+)")


@dataclass
class HNetConfig:
    """dnaHNet (docs/architectures.md §5): H-Net dynamic chunking over nucleotides; see dnalm/models/hnet.py.

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
        layouts = list(self.encoder_layout) + list(self.decoder_layout) + [self.main_layout]
        return sum(int(n) for s in layouts for n in re.findall(r"\d+", s))

    def attn_mlp_hidden(self, d: int) -> int:
        """SwiGLU width of the attention blocks at width d: 8/3 d rounded up to a multiple of 64."""
        return _round_up(8 * d / 3, 64)


def parse_layout(layout: str) -> list[str]:
    """``"t1m4"`` -> ``["t", "m", "m", "m", "m"]`` (``m`` Mamba-2 block, ``t`` attention block)."""
    s = layout.replace(" ", "").lower()
    if not s or _LAYOUT.sub("", s):
        raise ValueError(f"bad layer layout {layout!r}: expected groups like 'm4t1' (m = Mamba-2, t = attention)")
    return [kind for kind, n in _LAYOUT.findall(s) for _ in range(int(n))]


# ------------------------------------------------------------------------------------------ layer stacks


def _attention_block(d: int, config: Any) -> nn.Module:
    return TransformerBlock(
        d_model=d,
        n_head=d // config.attn_head_dim,
        mlp_hidden=config.attn_mlp_hidden(d),
        max_len=config.max_len,
        rope_base=config.rope_base,
        norm_eps=config.norm_eps,
    )


class Stack(nn.Module):
    """Layers at one width, built from a layout string; an optional RMSNorm at the end.

    ``forward``/``prefill``/``step`` follow the generation protocol; the state is a list, one per layer.
    """

    def __init__(self, layout: str, d: int, config: Any, final_norm: bool = True):
        super().__init__()
        layers = []
        for kind in parse_layout(layout):
            if kind == "m":
                layers.append(
                    Mamba2Block(
                        d,
                        norm_eps=config.norm_eps,
                        d_state=config.d_state,
                        expand=config.mamba_expand,
                        d_conv=config.mamba_d_conv,
                        headdim=config.mamba_headdim,
                        chunk_size=config.ssd_chunk_size,
                    )
                )
            else:
                layers.append(_attention_block(d, config))
        self.layers = nn.ModuleList(layers)
        self.norm = nn.RMSNorm(d, eps=config.norm_eps) if final_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, d) -> (B, L, d); every layer is causal, so right padding never reaches real positions."""
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, list]:
        x, states = prefill_layers(self.layers, x)
        return self.norm(x), states

    def step(self, x: torch.Tensor, states: list) -> tuple[torch.Tensor, list]:
        x, states = step_layers(self.layers, x, states)
        return self.norm(x), states


# ------------------------------------------------------------------------------- dynamic chunking parts


class Router(nn.Module):
    """Boundary probability from the cosine between adjacent encoder states (Wq, Wk start as identity)."""

    def __init__(self, d: int):
        super().__init__()
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.q_proj.weight.copy_(torch.eye(self.q_proj.weight.shape[0]))
        self.k_proj.weight.copy_(torch.eye(self.k_proj.weight.shape[0]))

    def _prob(self, h: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        q = F.normalize(self.q_proj(h).float(), dim=-1)
        k = F.normalize(self.k_proj(h_prev).float(), dim=-1)
        return ((1 - (q * k).sum(-1)) / 2).clamp(0.0, 1.0)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h (B, L, d) -> p (B, L) float32, with p[:, 0] = 1 (the first position always starts a chunk)."""
        p = self._prob(h[:, 1:], h[:, :-1])  # (B, L-1)
        return F.pad(p, (1, 0), value=1.0)  # (B, L)

    def step(self, h: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        """h, h_prev (B, d) -> p (B,)."""
        return self._prob(h, h_prev)


def chunk(h: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the positions where ``b`` is True, in order, right-padded to the batch's largest count.

    h (B, L, d), b (B, L) bool -> chunks (B, M, d), mask (B, M) bool, index (B, M) (source positions;
    padded slots point at some non-boundary position and are masked out).
    """
    B, L, d = h.shape
    counts = b.sum(1)  # (B,)
    M = int(counts.max()) if B else 0
    key = torch.arange(L, device=h.device)[None, :] + (~b).long() * L  # boundaries sort first, in order
    index = torch.argsort(key, dim=1)[:, :M]  # (B, M)
    chunks = torch.gather(h, 1, index[..., None].expand(B, M, d))  # (B, M, d)
    mask = torch.arange(M, device=h.device)[None, :] < counts[:, None]  # (B, M)
    return chunks, mask, index


def ema_smooth(z: torch.Tensor, P: torch.Tensor, chunk_size: int = 256) -> torch.Tensor:
    """z̄_j = P_j z_j + (1 - P_j) z̄_{j-1} (z̄_{-1} = 0) over the chunk axis; z (B, M, d), P (B, M) in (0, 1).

    This is a one-state SSM (decay 1 - P, input P·z), so it reuses the chunked SSD scan: parallel
    within chunks of ``chunk_size``, a short recurrence across them.
    """
    B, M, d = z.shape
    y, _ = ssd_chunked(
        z[:, :, None, :],  # (B, M, 1, d): one head of width d
        torch.log1p(-P.float())[..., None],  # (B, M, 1)
        P[..., None, None],  # (B, M, 1, 1)
        torch.ones_like(P)[..., None, None],  # (B, M, 1, 1)
        chunk_size,
    )
    return y[:, :, 0].to(z.dtype)  # (B, M, d)


def ste_ones(c: torch.Tensor) -> torch.Tensor:
    """Exactly 1 in the forward pass; the gradient flows to ``c`` unchanged (straight-through)."""
    return 1.0 + (c - c.detach())


def ratio_loss(b: torch.Tensor, p: torch.Tensor, valid: torch.Tensor, target: float) -> tuple[torch.Tensor, ...]:
    """H-Net ratio loss over the batch: returns (loss, F, G).

    F = fraction of valid positions that start a chunk (no gradient), G = mean boundary probability
    over valid positions. ``loss = N/(N-1) · ((N-1)·F·G + (1-F)·(1-G))``, minimal (= 1) at F = G = 1/N.
    """
    m = valid.float()
    n = m.sum().clamp_min(1.0)
    Fr = (b.float() * m).sum() / n
    G = (p.float() * m).sum() / n
    N = float(target)
    return N / (N - 1) * ((N - 1) * Fr * G + (1 - Fr) * (1 - G)), Fr, G


@dataclass
class StageRoute:
    """What one stage's router decided (for the ratio loss, logging and boundary analysis)."""

    prob: torch.Tensor  # (B, L_s) float32 boundary probability
    boundary: torch.Tensor  # (B, L_s) bool, False on padding
    valid: torch.Tensor  # (B, L_s) bool, real (non-padding) positions
    position: torch.Tensor  # (B, L_s) long: the nucleotide index each position of this stage starts at


# ------------------------------------------------------------------------------------------ the hierarchy


@dataclass
class StageState:
    """Generation state of one (non-innermost) stage."""

    encoder: list
    last_h: torch.Tensor  # (B, d): encoder output at the previous token (the router's k input)
    inner: list  # one state of the deeper network per sample (each for batch size 1)
    zbar: torch.Tensor  # (B, d_inner_out): the last smoothed chunk value
    decoder: list
    boundaries: list = field(default_factory=list)  # per step: (B,) bool boundary decisions of this stage


class HNetStage(nn.Module):
    """Stage ``level`` of the hierarchy; ``level == n_stages`` is the innermost main network."""

    def __init__(self, config: Any, level: int):
        super().__init__()
        widths = config.widths
        self.level, self.d = level, widths[level]
        d_prev = widths[level - 1] if level > 0 else widths[0]
        self.pad = nn.Parameter(torch.zeros(self.d - d_prev)) if self.d > d_prev else None
        self.innermost = level == config.n_stages
        self.chunk_size = config.ssd_chunk_size
        if self.innermost:
            self.main = Stack(config.main_layout, self.d, config, final_norm=True)
            return
        self.target_ratio = config.target_ratios[level]
        self.encoder = Stack(config.encoder_layout[level], self.d, config, final_norm=True)
        self.router = Router(self.d)
        self.main = HNetStage(config, level + 1)
        # the outermost decoder has no final norm: the LM shell applies its own
        self.decoder = Stack(config.decoder_layout[level], self.d, config, final_norm=level > 0)
        self.residual_proj = nn.Linear(self.d, self.d, bias=False)

    def _widen(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is None:
            return x
        return torch.cat([x, self.pad.to(x.dtype).expand(*x.shape[:-1], -1)], dim=-1)  # (..., d)

    def forward(
        self, x: torch.Tensor, valid: torch.Tensor, position: torch.Tensor, taps: list | None = None
    ) -> tuple[torch.Tensor, list[StageRoute]]:
        """x (B, L, d_prev), valid (B, L) bool, position (B, L) -> y (B, L, d_prev), routes of this and deeper stages."""
        D = x.shape[-1]
        x = self._widen(x)  # (B, L, d)
        if self.innermost:
            return self.main(x)[..., :D], []
        h = self.encoder(x)  # (B, L, d)
        residual = self.residual_proj(h)  # (B, L, d)
        p = self.router(h)  # (B, L)
        b = (p > 0.5) & valid  # (B, L)
        hc, valid_c, index = chunk(h, b)  # (B, M, d), (B, M), (B, M)
        zc, inner_routes = self.main(hc, valid_c, torch.gather(position, 1, index))  # (B, M, d)
        P = torch.gather(p, 1, index).clamp(1e-4, 1 - 1e-4)  # (B, M)
        zbar = ema_smooth(zc, P, self.chunk_size)  # (B, M, d)
        which = (torch.cumsum(b.long(), dim=1) - 1).clamp_min(0)  # (B, L): each position's chunk
        up = torch.gather(zbar, 1, which[..., None].expand(-1, -1, zbar.shape[-1]))  # (B, L, d)
        c = torch.where(b, p, 1 - p)  # (B, L)
        mid = up * ste_ones(c)[..., None].to(up.dtype) + residual  # (B, L, d)
        y = self.decoder(mid)  # (B, L, d)
        if taps is not None:
            taps.extend([h, mid, y])
        return y[..., :D], [StageRoute(p, b, valid, position)] + inner_routes

    # generation ----------------------------------------------------------------------------------------

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """x (B, L, d_prev) -> y (B, L, d_prev), state. Equals ``forward`` on unpadded input."""
        D = x.shape[-1]
        x = self._widen(x)
        if self.innermost:
            y, state = self.main.prefill(x)
            return y[..., :D], state
        h, enc_state = self.encoder.prefill(x)  # (B, L, d)
        residual = self.residual_proj(h)
        p = self.router(h)  # (B, L)
        b = p > 0.5
        ups, inner, zlast = [], [], []
        for i in range(x.shape[0]):  # samples have different chunk counts: one deeper state each
            zc, st = self.main.prefill(h[i : i + 1, b[i]])  # (1, M_i, d)
            zbar = ema_smooth(zc, p[i : i + 1, b[i]].clamp(1e-4, 1 - 1e-4), self.chunk_size)  # (1, M_i, d)
            ups.append(zbar[0, torch.cumsum(b[i].long(), 0) - 1])  # (L, d)
            inner.append(st)
            zlast.append(zbar[0, -1])
        mid = torch.stack(ups) + residual  # (B, L, d); STE(c) is exactly 1 in the forward pass
        y, dec_state = self.decoder.prefill(mid)
        state = StageState(enc_state, h[:, -1].clone(), inner, torch.stack(zlast), dec_state)
        return y[..., :D], state

    def step(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """One token x (B, d_prev) -> (B, d_prev); the deeper network moves only on boundary tokens."""
        D = x.shape[-1]
        x = self._widen(x)
        if self.innermost:
            y, state = self.main.step(x, state)
            return y[..., :D], state
        h, state.encoder = self.encoder.step(x, state.encoder)  # (B, d)
        residual = self.residual_proj(h)
        p = self.router.step(h, state.last_h)  # (B,)
        b = p > 0.5
        state.last_h = h
        zbar = state.zbar.clone()
        for i in torch.nonzero(b).flatten().tolist():
            z, state.inner[i] = self.main.step(h[i : i + 1], state.inner[i])  # (1, d)
            P = p[i].clamp(1e-4, 1 - 1e-4)
            zbar[i] = P * z[0] + (1 - P) * zbar[i]
        state.zbar = zbar
        state.boundaries.append(b)
        y, state.decoder = self.decoder.step(zbar + residual, state.decoder)
        return y[..., :D], state


class HNetBackbone(nn.Module):
    """dnaHNet backbone for the LM shell: embeddings (B, L, d_model) -> hidden (B, L, d_model).

    ``forward`` returns ``aux_loss = alpha · Σ_stages ratio_loss`` and, per stage s, the metrics
    ``stage{s}/ratio_loss``, ``stage{s}/compression`` (positions per chunk, 1/F) and
    ``stage{s}/boundary_prob`` (G). ``output_hidden_states`` gives, at nucleotide resolution, the
    stage-0 encoder output, the decoder input (dechunked main output + residual) and the decoder output.
    """

    def __init__(self, config: Any):
        super().__init__()
        self.config = config
        self.stage0 = HNetStage(config, 0)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init everywhere, then the pieces that must start special: identity router, zero residual
        projection and width pads, Mamba-2's dt/A/D."""
        gpt2_init(self, n_layer=self.config.n_layers_total)
        for m in self.modules():
            if isinstance(m, Router):
                m.reset_parameters()
            elif isinstance(m, HNetStage):
                if not m.innermost:
                    nn.init.zeros_(m.residual_proj.weight)
                if m.pad is not None:
                    nn.init.zeros_(m.pad)
            elif hasattr(m, "reset_ssm_parameters"):
                m.reset_ssm_parameters()

    def _run(self, x: torch.Tensor, taps: list | None = None) -> tuple[torch.Tensor, list[StageRoute]]:
        B, L, _ = x.shape
        valid = torch.ones(B, L, dtype=torch.bool, device=x.device)
        position = torch.arange(L, device=x.device).expand(B, L)
        return self.stage0(x, valid, position, taps)

    def forward(self, x: torch.Tensor, output_hidden_states: bool = False) -> BackboneOutput:
        """x (B, L, d_model) -> BackboneOutput(hidden (B, L, d_model), aux_loss, metrics)."""
        taps: list | None = [] if output_hidden_states else None
        y, routes = self._run(x, taps)
        losses, metrics = [], {}
        for s, (r, target) in enumerate(zip(routes, self.config.target_ratios)):
            loss, Fr, G = ratio_loss(r.boundary, r.prob, r.valid, target)
            losses.append(loss)
            metrics[f"stage{s}/ratio_loss"] = float(loss.detach())
            metrics[f"stage{s}/compression"] = float(1.0 / Fr.clamp_min(1e-12))
            metrics[f"stage{s}/boundary_prob"] = float(G.detach())
        aux = self.config.ratio_loss_alpha * torch.stack(losses).sum()
        hidden_states = taps[:3] if taps is not None else None
        return BackboneOutput(y, hidden_states, aux, metrics)

    @torch.no_grad()
    def boundaries(self, x: torch.Tensor) -> list[StageRoute]:
        """Router decisions of every stage for embeddings x (B, L, d_model), outermost first.

        ``StageRoute.position`` maps each position of a deeper stage back to the nucleotide where its
        chunk starts, so ``boundary`` can be placed on the sequence (see ``nucleotide_boundaries``).
        """
        return self._run(x)[1]

    def prefill(self, x: torch.Tensor) -> tuple[torch.Tensor, StageState]:
        """Prompt embeddings x (B, L, d_model) -> (hidden (B, L, d_model), state)."""
        return self.stage0.prefill(x)

    def step(self, x_t: torch.Tensor, state: StageState) -> tuple[torch.Tensor, StageState]:
        """One token's embedding x_t (B, d_model) -> (hidden (B, d_model), state)."""
        return self.stage0.step(x_t, state)


def nucleotide_boundaries(routes: list[StageRoute], length: int) -> list[torch.Tensor]:
    """Per stage, a (B, length) bool mask: True where a chunk of that stage starts at that nucleotide."""
    out = []
    for r in routes:
        m = torch.zeros(r.boundary.shape[0], length, dtype=torch.long, device=r.boundary.device)
        m.scatter_add_(1, r.position, r.boundary.long())  # padded slots add 0 wherever they point
        out.append(m > 0)
    return out


# ------------------------------------------------------------------------------------------ the spec


def count_params(cfg: HNetConfig) -> int:
    """Backbone + final RMSNorm parameters (the shell adds the embedding and an untied head)."""

    def stack(layout: str, d: int, final_norm: bool) -> int:
        n = d if final_norm else 0
        for kind in parse_layout(layout):
            if kind == "t":
                n += 2 * d + attention_block_params(d, bias=False) + 3 * d * cfg.attn_mlp_hidden(d)
            else:
                E, N = cfg.mamba_expand * d, cfg.d_state
                H, conv = E // cfg.mamba_headdim, E + 2 * N
                n += d + d * (2 * E + 2 * N + H) + conv * (cfg.mamba_d_conv + 1) + 3 * H + E + E * d
        return n

    widths, S = cfg.widths, cfg.n_stages
    total = 0
    for level in range(S + 1):
        d = widths[level]
        total += d - widths[level - 1] if level > 0 and d > widths[level - 1] else 0  # width pad vector
        if level == S:
            total += stack(cfg.main_layout, d, True)
        else:
            total += stack(cfg.encoder_layout[level], d, True) + stack(cfg.decoder_layout[level], d, level > 0)
            total += 2 * d * d + d * d  # router q/k, residual_proj
    return total + cfg.d_model  # final RMSNorm of the shell


def flops(
    cfg: HNetConfig, L: int, B: int, causal_savings: bool = False, stage_lengths: list[float] | None = None
) -> FlopTerms:
    """Per level, encoder + router + residual projection + decoder, EMA dechunking; main network innermost.
    Level s sees L_s positions (default L / product of the target ratios before it; pass the measured
    ``stage_lengths`` for an exact count of a given input). Terms are per nucleotide token."""
    out = FlopTerms()
    widths, S = cfg.widths, cfg.n_stages
    if stage_lengths is None:
        stage_lengths = [float(L)]
        for r in cfg.target_ratios:
            stage_lengths.append(stage_lengths[-1] / r)
    if len(stage_lengths) != S + 1:
        raise ValueError(f"stage_lengths needs {S + 1} entries (nucleotides, then each stage), got {len(stage_lengths)}")

    def stack(layout: str, level: int) -> None:
        d, Ls = widths[level], max(float(stage_lengths[level]), 1.0)
        share = Ls / L  # positions at this level per nucleotide
        for kind in parse_layout(layout):
            if kind == "t":
                out.layer_kinds.append("attention")
                attention_layer_flops(out, d, Ls, causal_savings, share)
                out.add("mlp", share * gated_mlp_flops(d, cfg.attn_mlp_hidden(d)))
            else:
                out.layer_kinds.append("mamba")
                E, N = cfg.mamba_expand * d, cfg.d_state
                H = E // cfg.mamba_headdim
                out.add("mamba_in_proj", share * 2 * d * (2 * E + 2 * N + H))
                out.add("mamba_conv", share * 2 * cfg.mamba_d_conv * (E + 2 * N))
                out.add("ssd_scan", share * ssd_flops(int(round(Ls)), cfg.ssd_chunk_size, E, N))
                out.add("mamba_out_proj", share * 2 * E * d)

    for level in range(S):
        d, share = widths[level], stage_lengths[level] / L
        stack(cfg.encoder_layout[level], level)
        out.add("router", share * 4 * d * d)  # q_proj and k_proj
        out.add("residual_proj", share * 2 * d * d)
        M = max(float(stage_lengths[level + 1]), 1.0)  # chunks, smoothed at this level's width
        out.add("dechunk_ema", (M / L) * ssd_flops(int(round(M)), cfg.ssd_chunk_size, d, 1))
        stack(cfg.decoder_layout[level], level)
    stack(cfg.main_layout, S)
    out.add("logits", 2 * cfg.d_model * cfg.vocab_size)
    return out


def activations(cfg: HNetConfig) -> ActivationShape:
    """dnaHNet blocks level by level, each seeing 1 / (product of the target ratios so far) positions."""
    widths, S = cfg.widths, cfg.n_stages
    mamba = (cfg.d_state, cfg.mamba_headdim, cfg.ssd_chunk_size, cfg.mamba_expand)
    share, layers = 1.0, []

    def stack(layout: str, level: int) -> None:
        d = widths[level]
        for kind in parse_layout(layout):
            if kind == "t":
                layers.append(LayerSpec("attention", width=d, mlp_hidden=cfg.attn_mlp_hidden(d), share=share))
            else:
                layers.append(LayerSpec("mamba", width=d, share=share, mamba=mamba, mlp_saved=0))

    for level in range(S + 1):
        if level == S:
            stack(cfg.main_layout, level)
            break
        stack(cfg.encoder_layout[level], level)
        ratio = 1.0 / cfg.target_ratios[level]
        spec = LayerSpec("routing", width=widths[level], share=share, mlp_saved=0)
        spec.chunk, spec.next_share = cfg.ssd_chunk_size, ratio
        layers.append(spec)
        stack(cfg.decoder_layout[level], level)
        share *= ratio
    d_max = max(widths)
    return ActivationShape(
        layers=layers,
        n_layer=sum(1 for spec in layers if spec.kind != "routing"),
        mlp_hidden=cfg.attn_mlp_hidden(cfg.d_model),
        mlp_gated=True,
        largest_layer_params=layer_params_estimate(d_max, cfg.attn_mlp_hidden(d_max), True),
        note="stages at their target ratios",
    )


# ---- presets: 2-stage hierarchies named by their target ratios, (3,2) and (2,2); each stage's encoder/decoder
# is 1 attention + 4 Mamba-2 blocks as in the dnaHNet paper. CPU-sized: nucleotide width 32, stage-1 width 64,
# a 3-block Transformer main network at width 128 (~1.1M parameters), Mamba-2 with d_state 32 and SSD chunks
# of 32 (the paper-scale models use d_state 128 and chunks of 256).


def _dnahnet_tiny(ratios: list[float]):
    inner = [64, 128] if len(ratios) == 2 else [128]
    return lambda: HNetConfig(
        d_model=32, inner_d_model=list(inner), target_ratios=list(ratios),
        encoder_layout=["t1m4"] * len(ratios), decoder_layout=["m4t1"] * len(ratios),
        main_layout="t3", attn_head_dim=32, d_state=32, mamba_headdim=32, ssd_chunk_size=32, max_len=1026,
    )  # fmt: skip


SPEC = ModelSpec(
    family="hnet",
    config=HNetConfig,
    backbone=HNetBackbone,
    final_norm=lambda cfg: nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps),
    count_params=count_params,
    flops=flops,
    activations=activations,
    # the router's cosine does not see the scale of Wq, Wk: weight decay would only shrink them, which raises
    # the optimizer's effective step size on them
    no_weight_decay=lambda name: ".router." in f".{name}",
    presets={
        "dnahnet-tiny-32": _dnahnet_tiny([3.0, 2.0]),
        "dnahnet-tiny-22": _dnahnet_tiny([2.0, 2.0]),
        "dnahnet-tiny-3": _dnahnet_tiny([3.0]),  # 1-stage
    },
)
