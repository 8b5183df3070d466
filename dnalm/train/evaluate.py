"""Held-out loss of a language model on a store split: the trainer's validation and ``dnalm eval``.

Windows are tiled so every base of the split is scored exactly once. Each window is fed as
[BOS] + bases[:-1] and predicts all its bases, so the first base of a window is scored with no context
(the same convention the trainer uses). The loss is the training loss (``dnalm.models.lm.lm_loss``)
without repeat weights, summed over the bases. N bases are read as context but never scored: the loss,
bits/base and perplexity count A/C/G/T targets only, and ``skipped_n`` says how many N were left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from dnalm.data.samplers import TilingSampler
from dnalm.models.lm import lm_loss
from dnalm.tokenizer import BOS, PAD, A, scored

LN2 = math.log(2.0)


def lm_inputs(
    ids: np.ndarray, lower: np.ndarray, valid: np.ndarray, repeat_weight: float = 1.0, tokenizer: Any = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of base windows (B, L) -> (input_ids, targets, weights), all (B, L).

    input = [BOS] + bases[:-1]; target = bases, PAD where invalid or N (N is read, never predicted);
    weight = repeat_weight at lower-case positions, 1 elsewhere, 0 at padding and N. A ``tokenizer`` of another
    scheme (Evo's bytes) gets its own ids, [BOS] and padding in the inputs and targets; ignored targets stay
    PAD, which is never a base in any scheme.
    """
    bases = np.where(valid, ids, PAD).astype(np.int64)  # (B, L)
    counted = valid & scored(ids)
    bos = BOS
    if tokenizer is not None and getattr(tokenizer, "scheme", "dnalm") != "dnalm":
        case = None if tokenizer.lowercase == "upper" else lower
        mapped = tokenizer.model_ids(np.where(valid, ids, A), case).astype(np.int64)
        bases, bos = np.where(valid, mapped, tokenizer.pad_id), tokenizer.bos_id
    inputs = torch.empty(bases.shape, dtype=torch.long)
    inputs[:, 0] = bos
    inputs[:, 1:] = torch.from_numpy(bases[:, :-1])
    targets = torch.from_numpy(np.where(counted, bases, PAD))
    weights = np.where(lower, np.float32(repeat_weight), np.float32(1.0)) * counted
    return inputs, targets, torch.from_numpy(weights.astype(np.float32))


@dataclass
class EvalResult:
    loss: float  # mean cross-entropy, nats per base
    n_bases: int  # bases scored (A/C/G/T)
    skipped_n: int = 0  # N bases in the evaluated region, not scored
    # the same loss split by case (soft-masked repeats are lower case); None when not computed
    loss_upper: float | None = None
    n_upper: int = 0
    loss_lower: float | None = None
    n_lower: int = 0

    @property
    def bits_per_base(self) -> float:
        return self.loss / LN2

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    def to_dict(self, prefix: str = "") -> dict[str, float]:
        out = {
            f"{prefix}loss": self.loss,
            f"{prefix}bits_per_base": self.bits_per_base,
            f"{prefix}perplexity": self.perplexity,
            f"{prefix}bases": self.n_bases,
            f"{prefix}skipped_n": self.skipped_n,
        }
        for case in ("upper", "lower"):  # per-case bits/base, only for cases present in the split
            loss, n = getattr(self, f"loss_{case}"), getattr(self, f"n_{case}")
            if loss is not None and n:
                out[f"{prefix}bits_per_base_{case}"] = loss / LN2
                out[f"{prefix}bases_{case}"] = n
        return out


@torch.no_grad()
def evaluate_lm(
    model: torch.nn.Module,
    store,
    split: str | list[str],
    seq_len: int,
    batch_size: int = 8,
    max_tokens: int | None = None,
    progress: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> EvalResult:
    """Unweighted held-out cross-entropy over the tiled ``split`` of ``store`` (every base once)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tiler = TilingSampler(store, split, seq_len, rank=rank, world_size=world_size)
    total = min(tiler.num_bases(), max_tokens) if max_tokens else tiler.num_bases()
    nll, count, skipped = 0.0, 0, 0
    case_nll, case_n = {"upper": 0.0, "lower": 0.0}, {"upper": 0.0, "lower": 0.0}
    bar = tqdm(total=total, desc="eval", unit="base", disable=not progress, leave=False)
    try:
        for batch in tiler.batches(batch_size, max_tokens=max_tokens):
            inputs, targets, weights = lm_inputs(batch.ids, batch.lower, batch.valid,
                                                 tokenizer=getattr(model, "tokenizer", None))  # fmt: skip
            logits = model(inputs.to(device)).logits  # (B, L, V)
            n = int((targets != PAD).sum())  # scored targets: not padding, not N
            if n:
                nll += float(lm_loss(logits, targets.to(device))) * n  # the training loss, unweighted, summed
            count += n
            skipped += int(batch.valid.sum()) - n
            _case_split(logits, targets.to(device), weights.to(device), batch.lower, case_nll, case_n)
            bar.update(int(batch.valid.sum()))
    finally:
        bar.close()
        model.train(was_training)
    if count == 0:
        what = f" (all {skipped:,} are N)" if skipped else ""
        raise ValueError(f"split {split!r} has no bases to evaluate{what}")
    split_loss = {c: case_nll[c] / case_n[c] if case_n[c] else None for c in case_nll}
    return EvalResult(
        nll / count, count, skipped, split_loss["upper"], int(case_n["upper"]), split_loss["lower"], int(case_n["lower"])
    )


def _case_split(logits, targets, weights, lower: np.ndarray, nll: dict, n: dict) -> None:
    """Add the summed loss of upper-case and lower-case (repeat) target bases to ``nll`` / ``n``: the
    same loss, restricted by weight masks (``weights`` is 1 on scored bases, 0 on padding and N)."""
    low = torch.from_numpy(np.asarray(lower, dtype=np.float32)).to(weights.device)
    for case, mask in (("upper", weights * (1.0 - low)), ("lower", weights * low)):
        m = float(mask.sum())
        if m:
            nll[case] += float(lm_loss(logits, targets, mask)) * m
            n[case] += m
