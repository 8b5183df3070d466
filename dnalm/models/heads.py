"""Task heads on a DNA language model (backbone + head, gReLU style): pooling, a classification head,
learned soft prompts, and the ``SequenceClassifier`` that joins them with a ``DNALM``.

Padding and pooling (docs/architectures.md §7, §7.4). Our backbones take no attention mask, so a pad token
*before* a real token would change that token's hidden state (a causal convolution or attention sees it).
Batches are therefore padded on the **right**: in a causal model nothing after a token can affect it, so
every real token's hidden state is exactly what it would be without padding. Pooling then reads only
real positions:

- ``mean``: mean over the sequence's bases (the [BOS], any soft-prompt positions and N are excluded).
- ``last``: the hidden state of the last base (not N), gathered at each row's own length. This is the same value
  that left padding with a perfect mask would put at position -1, without the leak.

Soft prompts (HyenaDNA's in-context-learning experiments; Lester et al. 2021): ``n`` learned vectors
placed in front of the token embeddings of a frozen model; only the prompt and the head are trained.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from dnalm.tokenizer import BOS, A, T

Pool = Literal["mean", "last"]


def pool_hidden(h: torch.Tensor, mask: torch.Tensor, how: Pool) -> torch.Tensor:
    """Pool hidden states ``h`` (B, L, D) over positions where ``mask`` (B, L) is True -> (B, D).

    ``last`` takes the last True position of each row (rows must have at least one)."""
    m = mask.to(h.dtype)  # (B, L)
    if how == "mean":
        return (h * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp_min(1.0)  # (B, D)
    if how == "last":
        pos = torch.arange(h.shape[1], device=h.device).expand_as(mask)  # (B, L)
        last = torch.where(mask, pos, torch.full_like(pos, -1)).max(1).values  # (B,)
        return h[torch.arange(h.shape[0], device=h.device), last.clamp_min(0)]  # (B, D)
    raise ValueError(f"unknown pooling {how!r} (use 'mean' or 'last')")


@torch.no_grad()
def count_hidden_states(lm: nn.Module) -> int:
    """How many hidden states ``lm`` reports (embeddings, one per block or stage tap, final norm).

    Asked of the model with one short forward pass, because families differ (a dnaHNet reports its
    stage taps, not one state per layer)."""
    was = lm.training
    lm.eval()
    try:
        x = torch.tensor([[BOS] + [A + i % 4 for i in range(31)]], device=lm.embed.weight.device)  # (1, 32)
        return len(lm(x, output_hidden_states=True).hidden_states)
    finally:
        lm.train(was)


class SoftPrompt(nn.Module):
    """``n`` trainable embedding vectors prepended to the token embeddings.

    Initialised from randomly chosen rows of the model's own base embeddings (A/C/G/T), so the prompt
    starts inside the distribution the frozen model has seen (Lester et al. 2021's vocabulary init).
    """

    def __init__(self, n_tokens: int, d_model: int, init_from: torch.Tensor | None = None, seed: int = 0):
        super().__init__()
        if n_tokens < 1:
            raise ValueError(f"a soft prompt needs at least 1 token (got {n_tokens})")
        g = torch.Generator().manual_seed(seed)
        if init_from is not None:
            pick = torch.randint(0, init_from.shape[0], (n_tokens,), generator=g)
            w = init_from.detach().float().cpu()[pick].clone()  # (n, D)
        else:
            w = torch.randn(n_tokens, d_model, generator=g) * 0.02
        self.weight = nn.Parameter(w)  # (n, D)

    @property
    def n_tokens(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, D) -> (B, n + L, D)."""
        p = self.weight.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)  # (B, n, D)
        return torch.cat([p, x], dim=1)


class ClassificationHead(nn.Module):
    """Dropout + one linear layer from pooled features (B, D) to class logits (B, C)."""

    def __init__(self, d_model: int, n_classes: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(d_model, n_classes)
        nn.init.zeros_(self.proj.weight)  # start from the class prior (bias), no random projection
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.dropout(x))  # (B, C)


class SequenceClassifier(nn.Module):
    """A DNALM backbone, an optional soft prompt, pooling, and a classification head.

    ``layer`` indexes the hidden states as ``DNALM`` reports them: 0 = embeddings, i = after block i (a
    dnaHNet reports its stage taps instead), -1 = after the final norm. The inputs are token ids from ``lm.tokenizer`` (with [BOS]), right-padded,
    with ``attention_mask`` True at real tokens.
    """

    def __init__(
        self,
        lm: nn.Module,
        n_classes: int,
        pool: Pool = "mean",
        layer: int = -1,
        soft_prompt: int = 0,
        dropout: float = 0.0,
        seed: int = 0,
    ):
        super().__init__()
        self.lm = lm
        self.pool = pool
        self.layer = layer
        self.n_states = count_hidden_states(lm)
        if not -self.n_states <= layer < self.n_states:
            raise ValueError(
                f"layer {layer} out of range: the model has {self.n_states} hidden states (0..{self.n_states - 1})"
            )

        emb = lm.embed.weight[A : T + 1]  # the base rows
        self.prompt = SoftPrompt(soft_prompt, lm.config.d_model, emb, seed) if soft_prompt else None
        self.head = ClassificationHead(lm.config.d_model, n_classes, dropout)

    @property
    def n_prompt(self) -> int:
        return self.prompt.n_tokens if self.prompt is not None else 0

    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Hidden states at ``layer`` (B, n_prompt + L, D)."""
        lm = self.lm
        total = input_ids.shape[1] + self.n_prompt
        if total > lm.config.max_len:
            raise ValueError(
                f"{input_ids.shape[1]} tokens + {self.n_prompt} prompt tokens exceed the model's maximum length "
                f"{lm.config.max_len}"
            )
        with lm.computing():  # weights stored in bf16: blocks in float32 one at a time, or in bf16 (DNALM.compute)
            x = lm.embed_ids(input_ids)  # (B, L, D)
            if self.prompt is not None:
                x = self.prompt(x)  # (B, n + L, D)
            want = self.layer not in (-1, self.n_states - 1)
            out = lm.backbone(x, output_hidden_states=want)
            if not want:
                return lm.final_norm(out.hidden)  # (B, n + L, D)
            states = [x] + list(out.hidden_states) + [lm.final_norm(out.hidden)]
            return states[self.layer]

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, D) over the bases (not [BOS], padding or prompt positions)."""
        h = self.hidden(input_ids)  # (B, n + L, D)

        real = attention_mask & self.lm.tokenizer.scored(input_ids)  # (B, L) bases only, not N
        if self.n_prompt:
            real = torch.cat([torch.zeros_like(real[:, : self.n_prompt]), real], dim=1)  # (B, n + L)
        return pool_hidden(h.float(), real, self.pool)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Class logits (B, C)."""
        return self.head(self.features(input_ids, attention_mask))

    def spec(self) -> dict[str, Any]:
        """What ``load_classifier`` needs to rebuild this module (beside the LM config)."""
        return {
            "n_classes": self.head.proj.out_features,
            "pool": self.pool,
            "layer": self.layer,
            "soft_prompt": self.n_prompt,
            "dropout": self.head.dropout.p,
        }
