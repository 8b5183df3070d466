"""The language-model shell every family shares: token embedding -> backbone -> final norm -> LM head.

A family provides a *backbone*: a module that maps embeddings (B, L, D) to hidden states (B, L, D)
and returns a :class:`BackboneOutput`. The shell adds the embedding, the final norm, the (tied) head,
the weighted loss, and the user-facing inference methods (``score``).

Hidden states (``output_hidden_states=True``) follow the Hugging Face convention:
``[embedding output, after block 0, ..., after the last block, after the final norm]``.

Scoring convention: ``score`` returns the natural-log likelihood of the bases of each sequence.
Native models prepend [BOS], so every base is scored; a model whose tokenizer does not (an imported
HyenaDNA checkpoint) cannot score its first base, and says so through ``Tokenizer.prepend_bos``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dnalm.models.spec import BackboneOutput, spec_of
from dnalm.tokenizer import PAD, UNK, Tokenizer


@dataclass
class LMOutput:
    logits: torch.Tensor  # (B, L, V) float32
    hidden_states: list[torch.Tensor] | None = None
    aux_loss: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def prefill_layers(layers: nn.ModuleList, x: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, list[Any]]:
    """Run a prompt x (B, L, D) through a stack of blocks that support generation; returns (hidden, one
    state per block). Shared by every family's backbone ``prefill``."""
    states = []
    for layer in layers:
        x, state = layer.prefill(x, **kwargs)
        states.append(state)
    return x, states


def step_layers(layers: nn.ModuleList, x_t: torch.Tensor, states: list[Any]) -> tuple[torch.Tensor, list[Any]]:
    """One token x_t (B, D) through the stack; each block's state is replaced by its updated one."""
    for i, layer in enumerate(layers):
        x_t, states[i] = layer.step(x_t, states[i])
    return x_t, states


def gpt2_init(module: nn.Module, n_layer: int, std: float = 0.02) -> None:
    """GPT-2 style init: Linear/Embedding N(0, std), biases 0, and every Linear flagged
    ``residual_out = True`` (a projection back into the residual stream) scaled by 1/sqrt(2*n_layer)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            scale = 1 / math.sqrt(2 * n_layer) if getattr(m, "residual_out", False) else 1.0
            nn.init.normal_(m.weight, mean=0.0, std=std * scale)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)


def lm_loss(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None, ignore_index: int = PAD
) -> torch.Tensor:
    """Weighted next-token cross-entropy, renormalised: sum(CE * w) / sum(w) over valid positions.

    With ``weights`` None (or all ones) this is the plain mean CE over non-padding targets; with repeat
    weights (lower case 0.1, otherwise 1) the magnitude stays that of a plain mean (SPEC section 3).
    """
    ce = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none", ignore_index=ignore_index
    )  # (B*L,)
    valid = (targets.reshape(-1) != ignore_index).float()
    w = valid if weights is None else weights.reshape(-1).float() * valid
    return (ce * w).sum() / w.sum().clamp_min(1e-8)


class DNALM(nn.Module):
    """A DNA language model of any family: ``DNALM(config)``; see ``dnalm.load`` for checkpoints."""

    def __init__(self, config: Any, tokenizer: Tokenizer | None = None):
        super().__init__()
        self.config = config
        d, v = config.d_model, config.vocab_size
        self.embed = nn.Embedding(v, d)  # (V, D)
        spec = spec_of(config)
        self.backbone = spec.backbone(config)
        self.norm_f = spec.final_norm(config)
        self.lm_head = None if config.tie_embeddings else nn.Linear(d, v, bias=False)
        nn.init.normal_(self.embed.weight, std=0.02)
        if self.lm_head is not None:
            nn.init.normal_(self.lm_head.weight, std=0.02)
        self.tokenizer = tokenizer or Tokenizer(model_max_length=config.max_len)

    @property
    def head_weight(self) -> torch.Tensor:
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, input_ids: torch.Tensor, output_hidden_states: bool = False) -> LMOutput:
        """input_ids (B, L) int64 -> logits (B, L, V) float32 (+ hidden states on request)."""
        if input_ids.shape[1] > self.config.max_len:
            raise ValueError(
                f"input of {input_ids.shape[1]} tokens exceeds the model's maximum length {self.config.max_len}"
            )
        x = self.embed(input_ids)  # (B, L, D)
        out: BackboneOutput = self.backbone(x, output_hidden_states=output_hidden_states)
        h = self.norm_f(out.hidden.to(self.norm_f.weight.dtype))  # (B, L, D); residual may be float32
        logits = F.linear(h, self.head_weight).float()  # (B, L, V)
        hidden_states = None
        if output_hidden_states:
            hidden_states = [x] + list(out.hidden_states or []) + [h]
        return LMOutput(logits, hidden_states, out.aux_loss, out.metrics)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if exclude_embeddings else n

    def generate(
        self,
        prompt: str | list[str],
        n_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> str | list[str]:
        """Sample ``n_tokens`` bases after each prompt (prefill once, then recurrent steps); returns the new
        bases. See :func:`dnalm.generation.generate` for the options (num_samples, alphabet, use_cache)."""
        from dnalm.generation import generate

        return generate(self, prompt, n_tokens, temperature, top_k, top_p, seed, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @torch.no_grad()
    def score(
        self,
        seqs: list[str] | str,
        reduce: Literal["sum", "mean", "none"] = "sum",
        batch_size: int = 8,
    ) -> np.ndarray | list[np.ndarray]:
        """Log-likelihood (natural log) of each sequence's bases under the model.

        ``reduce="sum"`` gives the total, ``"mean"`` the per-base mean, ``"none"`` a per-base array for
        each sequence (the first base is scored only if the tokenizer prepends [BOS]). Batches are
        right-padded, which leaves a causal model's outputs for the real tokens unchanged.
        """
        single = isinstance(seqs, str)
        seqs = [seqs] if single else list(seqs)
        was_training = self.training
        self.eval()
        tok = Tokenizer(**{**self.tokenizer.to_dict(), "padding_side": "right"})
        order = np.argsort([-len(s) for s in seqs])
        results: list[Any] = [None] * len(seqs)
        try:
            for start in range(0, len(seqs), batch_size):
                idx = order[start : start + batch_size]
                batch = tok.batch([seqs[i] for i in idx], names=[f"sequence {i}" for i in idx])
                ids = batch["input_ids"].to(self.device)
                logp = torch.log_softmax(self(ids).logits[:, :-1], dim=-1)  # (B, L-1, V)
                tgt = ids[:, 1:]
                ll = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)  # (B, L-1)
                scored = batch["attention_mask"][:, 1:].to(self.device) & (tgt >= UNK)  # bases (and [UNK])
                for row, i in enumerate(idx):
                    per_base = ll[row][scored[row]].double().cpu().numpy()
                    if reduce == "sum":
                        results[i] = per_base.sum()
                    elif reduce == "mean":
                        results[i] = per_base.mean() if per_base.size else float("nan")
                    else:
                        results[i] = per_base
        finally:
            self.train(was_training)
        if reduce == "none":
            return results[0] if single else results
        arr = np.asarray(results, dtype=np.float64)
        return arr[0] if single else arr

    # ---- applications: thin delegates to dnalm/eval/ (the CLI calls the same functions) ----

    def score_variants(self, fasta: Any, variants: Any, **kwargs: Any) -> Any:
        """Zero-shot variant effects: delta log-likelihood (alt - ref) of a window centred on each variant;
        returns a ``VariantResults``. See :func:`dnalm.eval.variants.score_variants` for the options."""
        from dnalm.eval.variants import score_variants

        return score_variants(self, fasta, variants, **kwargs)

    def embed_sequences(
        self, seqs: list[str] | list[np.ndarray], layer: int = -1, pool: str = "mean", **kwargs: Any
    ) -> np.ndarray:
        """Embeddings (N, D) (or (total bases, D) for ``pool="none"``) from the hidden state at ``layer``;
        see :func:`dnalm.eval.embed.embed_sequences` (long sequences are embedded in windows). Not named
        ``embed``: that attribute is the token-embedding layer."""
        from dnalm.eval.embed import embed_sequences

        return embed_sequences(self, seqs, layer=layer, pool=pool, **kwargs).array

    def score_essentiality(self, fasta: Any, gff: Any, labels: Any = None, **kwargs: Any) -> dict[str, Any]:
        """Zero-shot gene essentiality (stop-cassette insertion); see
        :func:`dnalm.eval.essentiality.score_essentiality`."""
        from dnalm.eval.essentiality import score_essentiality

        return score_essentiality(self, fasta, gff, labels, **kwargs)

    def score_dms(self, cds: Any, variants: Any, **kwargs: Any) -> dict[str, Any]:
        """Zero-shot protein fitness from DNA (closest codon change); see :func:`dnalm.eval.dms.score_dms`."""
        from dnalm.eval.dms import score_dms

        return score_dms(self, cds, variants, **kwargs)

    def finetune(self, train: Any, dev: Any = None, test: Any = None, **kwargs: Any) -> tuple[nn.Module, dict]:
        """Train a classifier on CSV files (linear probe, ``mode="full"`` or ``soft_prompt=N``) beside a
        k-mer baseline; returns (SequenceClassifier, report). See :func:`dnalm.eval.finetune.finetune_files`."""
        from dnalm.eval.finetune import finetune_files

        return finetune_files(self, train, dev, test, **kwargs)
