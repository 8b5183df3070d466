"""Low-rank adapters (LoRA; Hu et al. 2021) for the linear layers of any family.

A :class:`LoRALinear` replaces an ``nn.Linear`` in place and computes

    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T        A (r, in), B (out, r)

The frozen base ``W`` and ``b`` stay the very same Parameters, in the dtype they were stored in (an imported
bf16 model stays bf16); ``A`` and ``B`` are float32. ``B`` starts at zero, so an adapted model starts equal
to its base; ``A`` gets nn.Linear's own init (Kaiming uniform), as in the paper and in ``peft``. The module is
still an ``nn.Linear`` with the same ``weight``/``bias`` names, so the base keys of a state dict do not move
(``...mlp.l1.weight``) and the adapter adds ``...mlp.l1.lora_A`` / ``lora_B`` beside them.

Why not ``peft``: it pulls in transformers and accelerate, and it adapts Hugging Face modules; dnalm's
families are plain PyTorch modules whose projections are ``nn.Linear``. This file is what they need:
inject by name pattern, freeze, merge/unmerge, save and load the adapter on its own.

Targets are glob patterns over the names of the ``nn.Linear`` modules inside a ``DNALM``; a pattern matches a
module whose full name matches it or ends with ``.PATTERN``. The default, ``in_proj,out_proj,Wqkv,mlp.*``,
takes every family's sequence-mixer projections (Hyena ``in_proj``/``out_proj``, Mamba-2's, attention's
``Wqkv``/``out_proj``) and every MLP matrix, and leaves out HyenaDNA's implicit filter MLP and dnaHNet's
router (small, position-wise modules whose weights define filters and boundaries, not projections).
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dnalm.config import DEFAULT_LORA_TARGETS as DEFAULT_TARGETS
from dnalm.config import ConfigError, LoRAConfig

__all__ = [
    "DEFAULT_TARGETS", "LoRAConfig", "LoRAError", "LoRALinear", "add_lora", "apply_adapter", "count_trainable",
    "find_targets", "fingerprint", "has_lora", "linear_names", "load_lora_state_dict", "lora_modules",
    "lora_state_dict", "merge_lora", "set_merged",
]  # fmt: skip
ADAPTER_KEYS = ("lora_A", "lora_B")


class LoRAError(ConfigError):
    """A LoRA setting or adapter that does not fit the model (a user error: one line, exit status 2)."""


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` with a low-rank update; built from (and sharing the weights of) an existing one."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        nn.Module.__init__(self)
        for k, v in vars(base).items():  # flags such as residual_out travel along
            if not k.startswith("_") and k != "training":
                setattr(self, k, v)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank, self.alpha, self.scale = rank, float(alpha), float(alpha) / rank
        dev = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, dtype=torch.float32, device=dev))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, dtype=torch.float32, device=dev))  # (out, r)
        if dev.type != "meta":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.train(base.training)  # an adapter added to an evaluating model evaluates too (no dropout)

    def delta(self) -> torch.Tensor:
        """The update ``scale * B A`` (out, in) in float32."""
        return (self.lora_B @ self.lora_A) * self.scale

    def _delta64(self) -> torch.Tensor:
        return (self.lora_B.double() @ self.lora_A.double()) * self.scale

    def effective_weight(self) -> torch.Tensor:
        """``W + scale * B A`` in the weight's dtype, computed in float64 and rounded once: the weight
        :meth:`merge` stores, and the one an evaluating model with a full-precision base uses."""
        return (self.weight.double() + self._delta64()).to(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return F.linear(x, self.weight, self.bias)
        if not self.training and self.weight.dtype in (torch.float32, torch.float64):
            # Evaluating: the same float arithmetic as the merged model, so a merged export reproduces this
            # model's outputs exactly. W x + s B (A x) and (W + s B A) x are equal but round differently in
            # float32 (measured 1.3e-5 on the Evo 2 fixture's logits through 7 blocks, as much as the base's
            # own float32 forward differs from float64). Costs one (out, r) x (r, in) product per call.
            return F.linear(x, self.effective_weight(), self.bias)
        y = F.linear(x, self.weight, self.bias)  # (..., out) in the base's dtype (or autocast's)
        return y + self.adapter_out(x).to(y.dtype)

    def adapter_out(self, x: torch.Tensor) -> torch.Tensor:
        """The low-rank branch alone, ``scale * B A dropout(x)`` (..., out) in float32 (zero when merged), for
        a caller that computes the base product itself (the emulated FP8 input projections of Evo 2)."""
        a = self.lora_dropout(x).to(self.lora_A.dtype)  # (..., in) float32
        u = F.linear(F.linear(a, self.lora_A), self.lora_B)  # (..., out)
        return u * self.scale if not self.merged else torch.zeros_like(u)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into ``weight``: :meth:`effective_weight` (float64 arithmetic, rounded once to the
        weight's dtype)."""
        if not self.merged:
            self.weight.copy_(self.effective_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight.copy_((self.weight.double() - self._delta64()).to(self.weight.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rank={self.rank}, alpha={self.alpha:g}"


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, "*." + pattern)


def linear_names(model: nn.Module) -> list[str]:
    """Names of every ``nn.Linear`` inside ``model`` (adapted ones included)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def find_targets(model: nn.Module, targets: Sequence[str], strict: bool = True) -> list[str]:
    """The ``nn.Linear`` modules of ``model`` matched by ``targets`` (module docstring); the LM head and
    task heads are never targets. With ``strict`` a pattern that matches nothing is an error (a typo would
    otherwise train fewer matrices than asked); the default patterns are not strict."""
    names = [n for n in linear_names(model) if n.split(".")[-1] != "lm_head" and n != "lm_head"]
    found, unused = [], []
    for p in targets:
        hit = [n for n in names if _matches(n, p)]
        if not hit:
            unused.append(p)
        found += [n for n in hit if n not in found]
    if strict and unused:
        short = sorted({".".join("N" if s.isdigit() else s for s in n.split(".")[-3:]) for n in names})
        raise LoRAError(
            f"LoRA target(s) {', '.join(unused)} match no linear layer of this model; its linear layers end in: "
            + ", ".join(short[:30])
        )
    if not found:
        raise LoRAError(f"LoRA targets {', '.join(targets)} match no linear layer of this model")
    return [n for n in names if n in found]  # model order


def add_lora(model: nn.Module, config: LoRAConfig, strict: bool | None = None) -> list[str]:
    """Replace the targeted ``nn.Linear`` modules of ``model`` by :class:`LoRALinear` (in place), and freeze
    every other parameter of ``model``. Returns the adapted module names. ``strict`` defaults to True unless
    the targets are the default ones."""
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise LoRAError("the model already carries LoRA adapters")
    if strict is None:
        strict = list(config.targets) != list(DEFAULT_TARGETS)
    names = find_targets(model, config.targets, strict)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, attr, LoRALinear(getattr(owner, attr), config.rank, config.alpha, config.dropout))
    return names


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def lora_state_dict(model: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """Only the adapter tensors (``NAME.lora_A``, ``NAME.lora_B``), detached, on the CPU."""
    return {
        f"{prefix}{n}.{k}": getattr(m, k).detach().cpu().contiguous()
        for n, m in lora_modules(model).items()
        for k in ADAPTER_KEYS
    }


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor], where: str = "adapter") -> None:
    """Copy adapter tensors into an adapted ``model``; every adapter key must be there with its shape."""
    mods = lora_modules(model)
    expected = {f"{n}.{k}": getattr(m, k) for n, m in mods.items() for k in ADAPTER_KEYS}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]  # fmt: skip
    if missing or unexpected or shapes:
        raise LoRAError(
            f"{where}: the adapter does not fit the model (missing: {', '.join(missing[:4]) or '-'}; "
            f"unexpected: {', '.join(unexpected[:4]) or '-'}; shape differs: {'; '.join(shapes[:4]) or '-'})"
        )
    with torch.no_grad():
        for k, v in expected.items():
            v.copy_(state[k].to(v.device, v.dtype))


def set_merged(model: nn.Module, merged: bool) -> None:
    """Merge (or unmerge) every adapter of ``model`` into its base weight, keeping the adapters."""
    for m in lora_modules(model).values():
        m.merge() if merged else m.unmerge()


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight and put plain ``nn.Linear`` modules back (in place): the model's
    state dict is then the base layout again, with the merged weights. Returns ``model``."""
    for name, m in list(lora_modules(model).items()):
        m.merge()
        lin = nn.Linear.__new__(nn.Linear)
        nn.Module.__init__(lin)
        for k, v in vars(m).items():
            if not k.startswith("_") and k not in ("training", "rank", "alpha", "scale", "merged"):
                setattr(lin, k, v)
        lin.weight, lin.bias = m.weight, m.bias
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, lin)
    return model


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def fingerprint(model: nn.Module, names: Sequence[str] | None = None) -> str:
    """A short digest of the frozen base weights of the adapted layers (or of ``names``' weights): their
    shapes, dtypes, and float64 sums and sums of squares. It tells whether an adapter is applied to the
    model it was trained on without hashing every byte of a 7B model."""
    h = hashlib.sha256()
    mods = dict(model.named_modules())
    for n in names if names is not None else sorted(lora_modules(model)):
        w = mods[n].weight
        if w.device.type == "meta":
            return "meta"
        merged = isinstance(mods[n], LoRALinear) and mods[n].merged
        wf = (w.double() - mods[n].delta().double()) if merged else w.double()
        h.update(f"{n}:{tuple(w.shape)}:{w.dtype}:{float(wf.sum()):.6e}:{float((wf * wf).sum()):.6e};".encode())
    return h.hexdigest()[:16]


def apply_adapter(
    model: nn.Module, lora: dict[str, Any], adapted: Sequence[str], state: dict[str, torch.Tensor],
    where: str = "adapter", expect_fingerprint: str | None = None,
) -> nn.Module:
    """Put the adapters described by an adapter file on ``model`` (in place): the same layers (``adapted``),
    rank, alpha, and the saved tensors (keys relative to ``model``). With ``expect_fingerprint`` the base
    weights must be the ones the adapter was trained on. Returns ``model``."""
    try:
        cfg = LoRAConfig(**{**lora, "targets": list(adapted)})
    except (TypeError, ConfigError) as e:
        raise LoRAError(f"{where}: bad LoRA settings ({e})") from None
    try:
        add_lora(model, cfg, strict=True)
    except LoRAError as e:
        raise LoRAError(f"{where}: the adapter's layers are not in this model ({e})") from None
    load_lora_state_dict(model, state, where)
    if expect_fingerprint and expect_fingerprint != "meta":
        got = fingerprint(model)
        if got not in (expect_fingerprint, "meta"):
            raise LoRAError(
                f"{where}: the base model's weights differ from those the adapter was trained on "
                f"(fingerprint {got} vs {expect_fingerprint}); give the base model it was trained on"
            )
    return model
