"""AdamW with HyenaDNA's weight-decay rules, and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


def no_decay(module: nn.Module, param_name: str, param: torch.Tensor) -> bool:
    """True for parameters that get no weight decay: biases, norms and other vectors (ndim < 2), the
    token embedding, and anything inside a module flagged ``no_weight_decay = True`` (implicit filter
    MLPs, modal poles/residues) or named like a Hyena filter (``filter_fn``)."""
    return param.ndim < 2 or "filter_fn" in param_name or param_name.startswith("embed.")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    flagged: set[str] = set()
    for mname, m in model.named_modules():
        if getattr(m, "no_weight_decay", False):
            flagged.update(f"{mname}.{p}" if mname else p for p, _ in m.named_parameters())
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (plain if name in flagged or no_decay(model, name, p) else decay).append(p)
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
