"""AdamW with one weight-decay rule for every family, and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from dnalm.models.lm import DNALM
from dnalm.models.spec import spec_of


def no_decay(param_name: str, param: torch.Tensor, family_rule: Callable[[str], bool] | None = None) -> bool:
    """True for a parameter that gets no weight decay: vectors (biases, norm weights, skip terms; ndim < 2),
    the token embedding, and whatever the family's spec excludes (``ModelSpec.no_weight_decay``: implicit
    filter MLPs, modal poles/residues and filter taps, dnaHNet's router). ``param_name`` is relative to the
    DNALM that holds it."""
    if param.ndim < 2 or param_name.startswith("embed."):
        return True
    return bool(family_rule and family_rule(param_name))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups of the trainable parameters: with ``weight_decay`` and without (see :func:`no_decay`).

    ``model`` is a DNALM or any module holding one (a classifier's ``lm``): a parameter inside a DNALM is
    judged by that DNALM's family rule, the others (a task head, a soft prompt) by the shared rule alone.
    """
    lms = [(name, m) for name, m in model.named_modules() if isinstance(m, DNALM)]
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        rel, rule = name, None
        for prefix, lm in lms:
            if not prefix or name.startswith(prefix + "."):
                rel = name[len(prefix) + 1 :] if prefix else name
                rule = spec_of(lm.config).no_weight_decay
                break
        (plain if no_decay(rel, p, rule) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=1e-8)


def lr_at(step: int, total_steps: int, peak_lr: float, warmup_steps: int, min_lr_ratio: float) -> float:
    """Linear warm-up to ``peak_lr`` over ``warmup_steps``, then cosine decay to ``min_lr_ratio * peak_lr``
    at ``total_steps`` (held there afterwards)."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    floor = min_lr_ratio * peak_lr
    return floor + (peak_lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
