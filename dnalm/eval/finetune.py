"""Supervised sequence classification on top of a DNA language model, and the k-mer baseline it must beat.

Three ways to train (``mode``):

- ``probe``: linear probe. The backbone is frozen; pooled features of every sequence are computed once,
  standardised with the training set's mean/std, and a linear head is trained on them (full-batch AdamW).
  The standardisation is folded into the saved head, so the saved model takes raw token ids.
- ``full``: full fine-tuning of backbone + head (AdamW, linear warm-up and decay).
- ``lora``: low-rank adapters (dnalm/models/lora.py) on the backbone's projections, attention and MLP; the
  backbone stays frozen in its stored dtype and only the adapters and the head train (AdamW, the same
  schedule as full fine-tuning). The head starts from the linear probe's solution (LP-FT, Kumar et al.
  2022: probe first, then fine-tune); the best dev epoch of the LoRA training is kept, as for full fine-tuning. The result is saved as an adapter directory (``adapter.safetensors`` with the
  adapters and the head, ``adapter.json`` naming the base model), a few percent of the model's size;
  ``load_classifier`` puts it back on the base model, ``dnalm export --merge-lora`` folds it into the weights.
- ``soft_prompt=N``: HyenaDNA-style in-context learning by soft-prompt tuning. ``N`` learned prompt
  embeddings are prepended to a **frozen** model; only the prompt and the linear head are trained.

Common to all: class imbalance is handled by class-weighted cross-entropy (weight ``N / (C * n_c)`` from
the training set); the checkpoint kept is the one with the best dev score (AUROC for two classes,
otherwise MCC), evaluated after every epoch (every 25 steps for the probe); test metrics are accuracy,
MCC and AUROC. Pooling (mean over bases or last base) and right padding follow ``dnalm.models.heads``.

Beside the model, in the same run: logistic regression on k-mer frequencies (k and the regularisation C
chosen on dev, class-balanced), the baseline a language model's features should beat.

A dataset with no given split (``--dev``/``--test`` omitted) gets a stratified, seeded 80/10/10 split,
which is written to ``split.json`` in the output directory.

The fine-tuned model is a directory (``config.json`` with ``format: dnalm-classifier`` + a
``model.safetensors`` holding backbone, prompt and head), written atomically; ``load_classifier`` reads it
and ``predict`` applies it.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_model

from dnalm.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    atomic_dir,
    is_adapter_dir,
    load_weights,
    read_adapter,
    read_checkpoint_meta,
    save_adapter,
)
from dnalm.config import ConfigError, LoRAConfig, to_dict
from dnalm.data.errors import DataError, listing
from dnalm.eval.embed import batch_ids, encode_column, fit_to_context, long_policy, read_sequence_table
from dnalm.eval.metrics import classification_metrics
from dnalm.eval.metrics import progress as bar
from dnalm.eval.scoring import count_scored, window_bases
from dnalm.formats import load_base_model
from dnalm.models import model_config_from_dict
from dnalm.models.heads import SequenceClassifier
from dnalm.models.lm import DNALM
from dnalm.models.lora import LoRAError, add_lora, apply_adapter, count_trainable, fingerprint, lora_state_dict
from dnalm.tokenizer import UNK, A, T, Tokenizer
from dnalm.train.distributed import clip_grad_norm
from dnalm.train.optim import make_optimizer

CLASSIFIER_FORMAT = "dnalm-classifier"
# dnalm finetune --mode lora's recipe (BENCHMARKS.md "LoRA against the linear probe": benchmarks/bench_lora.py)
LORA_DEFAULTS = {"rank": 8, "alpha": 16.0, "lr": 3e-3, "epochs": 5}
EPOCHS_DEFAULT = 3  # full fine-tuning and soft prompts


# ------------------------------------------------------------------------------------------ data


@dataclass
class LabeledData:
    """Token-id sequences with integer class labels (``classes[label]`` is the original label text)."""

    seqs: list[np.ndarray]
    lower: list[np.ndarray]
    labels: np.ndarray
    names: list[str]
    source: str


def read_labeled(
    path: str | Path, seq_column: str | None = None, label_column: str | None = None
) -> tuple[list[str], list[np.ndarray], list[np.ndarray], list[str]]:
    """CSV/TSV -> (raw label strings, token ids, lower masks, row names ``FILE:LINE``). Needs sequence and
    label columns (:func:`dnalm.eval.embed.read_sequence_table`). Numeric labels must be whole numbers
    (a stray ``0.5`` among 0/1 labels is an error, not a third class)."""
    table, sc, lc = read_sequence_table(path, seq_column, label_column, need_label=True)
    labels = table.values(lc)
    numbers = [_as_float(v) for v in labels]
    if all(x is not None for x in numbers):
        odd = [f"line {ln}: {v!r}" for ln, v, x in zip(table.lines, labels, numbers) if not float(x).is_integer()]
        if odd:
            raise DataError(
                f"{table.name}: " + listing(odd, f"labels in column {table.header[lc]!r} that are not whole numbers")
                + " (the other labels are class numbers; fix these rows)"
            )
    seqs, lows = encode_column(table, sc)
    names = [f"{Path(table.name).name}:{ln}" for ln in table.lines]
    return labels, seqs, lows, names


def _as_float(v: str) -> float | None:
    try:
        x = float(v)
    except ValueError:
        return None
    return x if np.isfinite(x) else None


def class_names(*label_lists: Sequence[str]) -> list[str]:
    """Sorted distinct labels (numerically when they are all integers)."""
    values = sorted({v for labels in label_lists for v in labels})
    try:
        return sorted(values, key=lambda v: float(v))
    except ValueError:
        return values


def to_data(labels: Sequence[str], seqs, lows, names, classes: list[str], source: str) -> LabeledData:
    idx = {c: i for i, c in enumerate(classes)}
    unknown = sorted({v for v in labels if v not in idx})
    if unknown:
        raise DataError(f"{source}: label(s) {unknown[:5]} do not occur in the training set (classes: {classes})")
    return LabeledData(list(seqs), list(lows), np.array([idx[v] for v in labels], dtype=np.int64), list(names), source)


def seeded_split(
    labels: np.ndarray, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified train/dev/test indices: each class is shuffled with ``seed`` and cut by ``fractions``."""
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise DataError(f"split fractions must be three positive numbers summing to 1 (got {fractions})")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_train = int(round(fractions[0] * len(idx)))
        n_dev = int(round(fractions[1] * len(idx)))
        parts[0] += idx[:n_train].tolist()
        parts[1] += idx[n_train : n_train + n_dev].tolist()
        parts[2] += idx[n_train + n_dev :].tolist()
    return tuple(np.sort(np.array(p, dtype=np.int64)) for p in parts)  # type: ignore[return-value]


def subset(d: LabeledData, idx: np.ndarray, source: str) -> LabeledData:
    return LabeledData([d.seqs[i] for i in idx], [d.lower[i] for i in idx], d.labels[idx],
                       [d.names[i] for i in idx], source)


# ------------------------------------------------------------------------------------------ k-mer baseline


def kmer_frequencies(seqs: Sequence[np.ndarray], k: int) -> np.ndarray:
    """(N, 4**k) k-mer frequencies of token-id sequences; k-mers containing N are skipped."""
    out = np.zeros((len(seqs), 4**k), dtype=np.float32)
    for i, s in enumerate(seqs):
        s = np.asarray(s, dtype=np.int64)
        if len(s) < k:
            continue
        base = s - A  # A C G T -> 0..3; N -> 4
        ok = (base >= 0) & (base <= T - A)
        code = np.zeros(len(s) - k + 1, dtype=np.int64)
        good = np.ones(len(s) - k + 1, dtype=bool)
        for j in range(k):
            code = code * 4 + np.where(ok[j : len(s) - k + 1 + j], base[j : len(s) - k + 1 + j], 0)
            good &= ok[j : len(s) - k + 1 + j]
        counts = np.bincount(code[good], minlength=4**k)
        out[i] = counts / max(counts.sum(), 1)
    return out


def kmer_baseline(
    train: LabeledData, dev: LabeledData, test: LabeledData,
    ks: Sequence[int] = (3, 4, 5, 6), cs: Sequence[float] = (0.01, 0.1, 1.0), seed: int = 0,
) -> dict[str, Any]:
    """Class-balanced logistic regression on standardised k-mer frequencies; k and C chosen on dev."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    best: dict[str, Any] | None = None
    for k in ks:
        xs = [kmer_frequencies(d.seqs, k) for d in (train, dev, test)]
        scaler = StandardScaler().fit(xs[0])
        xs = [scaler.transform(x) for x in xs]
        for c in cs:
            clf = LogisticRegression(C=c, class_weight="balanced", max_iter=2000, random_state=seed)
            clf.fit(xs[0], train.labels)
            dev_m = classification_metrics(dev.labels, _full_proba(clf, xs[1]))
            score = _selection_score(dev_m)
            if best is None or score > best["score"]:
                best = {"score": score, "k": k, "C": c, "dev": dev_m,
                        "test": classification_metrics(test.labels, _full_proba(clf, xs[2]))}
    assert best is not None
    return {"k": best["k"], "C": best["C"], "dev": best["dev"], "test": best["test"]}


def _full_proba(clf: Any, x: np.ndarray) -> np.ndarray:
    return clf.predict_proba(x)


def _selection_score(m: dict[str, float]) -> float:
    """Dev score used to pick checkpoints and baselines: AUROC if defined, else MCC."""
    return m["auroc"] if not math.isnan(m.get("auroc", float("nan"))) else m["mcc"]


# ------------------------------------------------------------------------------------------ model training


def _model_inputs(model: Any, seqs: Sequence[np.ndarray], lows: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Apply the tokenizer's case rule (imported HyenaDNA checkpoints map lower case to [UNK])."""
    if model.tokenizer.lowercase == "unk":
        return [np.where(lo, UNK, s).astype(np.uint8) for s, lo in zip(seqs, lows)]
    return list(seqs)


def _fit(
    model: Any, data: LabeledData, n_prompt: int, crop: str | None, windows: bool
) -> tuple[list[list[np.ndarray]], int]:
    """The sequences of ``data`` as lists of windows that fit the model (after the prompt); a longer
    sequence is an error unless ``crop`` or ``windows`` says what to do (:func:`dnalm.eval.embed.fit_to_context`)."""
    seqs = _model_inputs(model, data.seqs, data.lower)
    what = f"the model's (after {n_prompt} prompt tokens)" if n_prompt else "the model's"
    return fit_to_context(seqs, window_bases(model) - n_prompt, crop=crop, windows=windows, names=data.names,
                          source=data.source, what=what)


def _batches(n: int, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _pooled(clf: Any, items: Sequence[np.ndarray | list[np.ndarray]]) -> torch.Tensor:
    """Pooled features (B, D) of sequences, each a token-id array or a list of windows of one. Over windows,
    mean pooling takes the base-weighted mean of the window features (the mean over all bases) and last
    pooling the last window's feature, as ``dnalm embed --windows`` does."""
    items = [it if isinstance(it, list) else [it] for it in items]
    flat = [w for it in items for w in it]
    x, m = batch_ids(clf.lm, flat)
    f = clf.features(x.to(clf.lm.device), m.to(clf.lm.device))  # (W, D)
    if len(flat) == len(items):
        return f
    out, k = [], 0
    for it in items:
        fw = f[k : k + len(it)]  # (n_windows, D)
        k += len(it)
        if clf.pool == "mean":
            w = torch.tensor([count_scored(win) for win in it], dtype=fw.dtype, device=fw.device)  # N not pooled
            out.append((fw * w[:, None]).sum(0) / w.sum().clamp_min(1.0))
        else:
            out.append(fw[-1])
    return torch.stack(out)  # (B, D)


def _length(item: np.ndarray | list[np.ndarray]) -> int:
    return sum(len(w) for w in item) if isinstance(item, list) else len(item)


@torch.no_grad()
def predict_proba(
    clf: Any, seqs: Sequence[np.ndarray | list[np.ndarray]], batch_size: int = 32, progress: bool = False
) -> np.ndarray:
    """Class probabilities (N, C) of a ``SequenceClassifier`` for token-id sequences (or lists of windows)."""
    was = clf.training
    clf.eval()
    out = []
    order = np.argsort([-_length(s) for s in seqs], kind="stable")
    try:
        for idx in bar(_batches(len(seqs), batch_size, None), desc="predict", enabled=progress):
            sel = order[idx]
            logits = clf.head(_pooled(clf, [seqs[i] for i in sel]))
            out.append((sel, torch.softmax(logits.float(), -1).cpu().numpy()))
    finally:
        clf.train(was)
    probs = np.zeros((len(seqs), clf.head.proj.out_features), dtype=np.float64)
    for sel, p in out:
        probs[sel] = p
    return probs


@torch.no_grad()
def _features(clf: Any, seqs: Sequence[list[np.ndarray]], batch_size: int, progress: bool, desc: str) -> torch.Tensor:
    feats = torch.zeros(len(seqs), clf.lm.config.d_model)
    for idx in bar(_batches(len(seqs), batch_size, None), desc=desc, enabled=progress):
        feats[torch.from_numpy(idx)] = _pooled(clf, [seqs[i] for i in idx]).float().cpu()
    return feats


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    if np.any(counts == 0):
        raise DataError(f"the training set lacks class(es) {np.flatnonzero(counts == 0).tolist()}")
    return torch.tensor(len(labels) / (n_classes * counts), dtype=torch.float32)


def _optimizer(module: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters with the trainer's weight-decay groups (no decay on biases, norms,
    embeddings and filter coefficients; dnalm.train.optim), and PyTorch's default betas."""
    return make_optimizer(module, lr, weight_decay, betas=(0.9, 0.999))


def _train_probe(
    clf: Any, X: dict, train: LabeledData, dev: LabeledData, cw: torch.Tensor, lr: float, weight_decay: float,
    steps: int, batch_size: int, progress: bool, history: list,
) -> str:
    """Linear probe: features of the frozen model computed once, standardised, a full-batch linear head trained
    on them; the best dev head (checked every 25 steps) is folded into ``clf.head``. Returns where it was."""
    for p in clf.lm.parameters():
        p.requires_grad_(False)
    clf.lm.eval()
    feats = {k: _features(clf, v, batch_size, progress, f"features {k}") for k, v in X.items()}
    mu, sd = feats["train"].mean(0), feats["train"].std(0).clamp_min(1e-6)
    z = {k: (v - mu) / sd for k, v in feats.items()}
    head = torch.nn.Linear(z["train"].shape[1], len(cw))
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = _optimizer(head, lr, weight_decay)
    y = torch.from_numpy(train.labels)
    best = (-math.inf, None, 0)
    for step in bar(range(1, steps + 1), desc="probe", enabled=progress):
        loss = F.cross_entropy(head(z["train"]), y, weight=cw)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == steps:
            with torch.no_grad():
                m = classification_metrics(dev.labels, torch.softmax(head(z["dev"]), -1).numpy())
            history.append({"step": step, "train_loss": float(loss.detach()), **{f"dev_{k}": v for k, v in m.items()}})
            if _selection_score(m) > best[0]:
                best = (_selection_score(m), copy.deepcopy(head.state_dict()), step)
    head.load_state_dict(best[1])
    with torch.no_grad():  # fold the standardisation into the saved head: W' = W / sd, b' = b - W' mu
        w = head.weight / sd
        clf.head.proj.weight.copy_(w)
        clf.head.proj.bias.copy_(head.bias - w @ mu)
    return f"step {best[2]}"


def _train_end_to_end(
    clf: Any, X: dict, train: LabeledData, dev: LabeledData, cw: torch.Tensor, kind: str, lr: float,
    weight_decay: float, epochs: int, batch_size: int, rng: np.random.Generator, progress: bool, history: list,
) -> str:
    """Full fine-tuning, LoRA adapters or a soft prompt on the frozen model (``kind``): mini-batch AdamW with linear warm-up
    over 5% of the steps then linear decay to 0, gradients clipped to norm 1; the best dev epoch is kept."""
    lm = clf.lm
    if kind == "soft_prompt":
        for p in lm.parameters():
            p.requires_grad_(False)
    opt = _optimizer(clf, lr, weight_decay)
    n_steps = epochs * math.ceil(len(X["train"]) / batch_size)
    warm = max(1, n_steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (n_steps - s) / max(n_steps - warm, 1)))
    )
    best = (-math.inf, None, 0)
    trainable = {k for k, v in clf.named_parameters() if v.requires_grad}
    adapters = [v for k, v in clf.named_parameters() if v.requires_grad and k.endswith((".lora_A", ".lora_B"))]
    step = 0
    for epoch in range(1, epochs + 1):
        clf.train()
        if kind == "soft_prompt":
            lm.eval()  # frozen model: no dropout
        losses, norms, a_norms = [], [], []
        for idx in bar(_batches(len(X["train"]), batch_size, rng), desc=f"epoch {epoch}/{epochs}", enabled=progress):
            logits = clf.head(_pooled(clf, [X["train"][i] for i in idx]))  # windows pooled per sequence
            y = torch.from_numpy(train.labels[idx]).to(lm.device)
            loss = F.cross_entropy(logits, y, weight=cw.to(lm.device))
            opt.zero_grad()
            loss.backward()
            if adapters:  # gradient reaching the adapters (a LoRA that does not learn shows ~0 here)
                a_norms.append(float(torch.linalg.vector_norm(torch.stack(
                    [torch.linalg.vector_norm(p.grad) for p in adapters if p.grad is not None] or [loss.new_zeros(())]))))
            norms.append(clip_grad_norm(clf, 1.0))
            opt.step()
            sched.step()
            step += 1
            losses.append(float(loss.detach()))
        m = classification_metrics(dev.labels, predict_proba(clf, X["dev"], batch_size))
        history.append({"epoch": epoch, "step": step, "train_loss": float(np.mean(losses)),
                        "grad_norm": float(np.mean(norms)),
                        **({"adapter_grad_norm": float(np.mean(a_norms))} if adapters else {}),
                        **{f"dev_{k}": v for k, v in m.items()}})  # fmt: skip
        if _selection_score(m) > best[0]:
            state = {k: v.detach().clone() for k, v in clf.state_dict().items() if k in trainable or kind == "full"}
            best = (_selection_score(m), state, epoch)
    clf.load_state_dict(best[1], strict=False)
    return f"epoch {best[2]}"


def finetune(
    model: Any,
    train: LabeledData,
    dev: LabeledData,
    test: LabeledData,
    classes: list[str],
    *,
    mode: str = "probe",
    soft_prompt: int = 0,
    pool: str = "mean",
    layer: int = -1,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int = 32,
    weight_decay: float = 0.01,
    probe_steps: int = 500,
    seed: int = 0,
    kmer_ks: Sequence[int] = (3, 4, 5, 6),
    crop: str | None = None,
    windows: bool = False,
    progress: bool = True,
    lora: LoRAConfig | None = None,
    copy_model: bool = True,
    baseline: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """Train a classifier (see the module docstring); returns (SequenceClassifier, report dict).

    A sequence longer than the model's context is an error unless ``crop`` (center, left or right: keep one
    window) or ``windows`` (pool over tiled windows) says what to do (:func:`dnalm.eval.embed.fit_to_context`).

    ``lr`` defaults: probe 1e-2, soft prompt 1e-2, LoRA ``LORA_DEFAULTS["lr"]``, full fine-tuning 3e-4;
    ``epochs``: ``LORA_DEFAULTS["epochs"]`` for LoRA, 3 otherwise. ``lora`` sets the adapters of
    ``mode="lora"`` (default: ``LORA_DEFAULTS``' rank and alpha, the default targets). ``copy_model=False`` adapts ``model``
    itself instead of a copy (no second copy of a large model in memory). ``baseline=False`` skips the k-mer
    baseline (``report["kmer_baseline"]`` is then None), for callers that fit it once for several runs.
    """
    if mode not in ("probe", "full", "lora"):
        raise DataError(f"--mode must be probe, full or lora (got {mode!r})")
    if soft_prompt and mode != "probe":
        raise DataError("--soft-prompt trains a prompt for a frozen model; use it with --mode probe (the default)")
    if lora is not None and mode != "lora":
        raise DataError("LoRA settings (--lora-rank, --lora-alpha, --lora-targets) need --mode lora")
    if soft_prompt < 0:
        raise DataError(f"--soft-prompt must be >= 0 (got {soft_prompt})")
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n_classes = len(classes)
    if n_classes < 2:
        raise DataError(f"{train.source}: needs at least two classes (found {classes})")
    fits = {name: _fit(model, d, soft_prompt, crop, windows) for name, d in (("train", train), ("dev", dev), ("test", test))}
    X = {name: f[0] for name, f in fits.items()}
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise DataError(f"--lr must be a finite number > 0 (got {lr})")
    if epochs is None:
        epochs = LORA_DEFAULTS["epochs"] if mode == "lora" else EPOCHS_DEFAULT
    if epochs < 1 or probe_steps < 1 or batch_size < 1:
        raise DataError(f"--epochs, --probe-steps and --batch-size must be >= 1 (got {epochs}, {probe_steps}, {batch_size})")
    lm = copy.deepcopy(model) if copy_model else model
    if mode != "lora":
        lm = lm.float()  # LoRA keeps the frozen base in its stored dtype
    try:
        clf = SequenceClassifier(lm, n_classes, pool=pool, layer=layer, soft_prompt=soft_prompt, seed=seed)
    except ValueError as e:  # --layer out of range, an unknown pooling
        raise DataError(f"--layer/--pool: {e}") from None
    cw = class_weights(train.labels, n_classes)
    adapted: list[str] = []
    if mode == "lora":
        lora = lora or LoRAConfig(rank=LORA_DEFAULTS["rank"], alpha=LORA_DEFAULTS["alpha"])
        # LP-FT (Kumar et al. 2022): the head starts from the linear probe's solution, so the adapters start
        # from a model that already classifies and refine the features instead of fighting a random head
        history_probe: list[dict[str, Any]] = []
        _train_probe(clf, X, train, dev, cw, 1e-2, weight_decay, probe_steps, batch_size, progress, history_probe)
        try:
            adapted = add_lora(clf.lm, lora)  # freezes the backbone; the head stays trainable
        except LoRAError as e:
            raise DataError(f"--lora-targets: {e}") from None
    kind = mode if mode in ("full", "lora") else ("soft_prompt" if soft_prompt else "probe")
    history: list[dict[str, Any]] = []

    if kind == "probe":
        best_at = _train_probe(clf, X, train, dev, cw, lr or 1e-2, weight_decay, probe_steps, batch_size, progress,
                               history)  # fmt: skip
    else:
        base_lr = lr or {"soft_prompt": 1e-2, "lora": LORA_DEFAULTS["lr"]}.get(kind, 3e-4)
        best_at = _train_end_to_end(clf, X, train, dev, cw, kind, base_lr, weight_decay, epochs, batch_size, rng,
                                    progress, history)  # fmt: skip

    clf.eval()
    test_m = classification_metrics(test.labels, predict_proba(clf, X["test"], batch_size))
    dev_m = classification_metrics(dev.labels, predict_proba(clf, X["dev"], batch_size))
    t_model = time.perf_counter() - t0
    t1 = time.perf_counter()
    base = kmer_baseline(train, dev, test, ks=kmer_ks, seed=seed) if baseline else None
    report = {
        "mode": kind,
        "pool": pool,
        "layer": layer,
        "soft_prompt": soft_prompt,
        "long_inputs": long_policy(crop, windows),
        "longer_than_context": sum(f[1] for f in fits.values()),
        "classes": classes,
        "sizes": {"train": len(train.labels), "dev": len(dev.labels), "test": len(test.labels)},
        "train_class_counts": np.bincount(train.labels, minlength=n_classes).tolist(),
        "class_weights": [round(float(w), 4) for w in cw],
        "trainable_parameters": int(count_trainable(clf))
        if kind != "probe" else int(clf.head.proj.weight.numel() + clf.head.proj.bias.numel()),
        "model_parameters": int(sum(p.numel() for p in clf.lm.parameters()) - sum(
            p.numel() for n, p in clf.lm.named_parameters() if n.endswith((".lora_A", ".lora_B")))),
        "best_checkpoint": best_at,
        "dev": dev_m,
        "test": test_m,
        "kmer_baseline": base,
        "history": history,
        "seconds_model": round(t_model, 1),
        "seconds_baseline": round(time.perf_counter() - t1, 1),
        "seed": seed,
        "sources": {"train": train.source, "dev": dev.source, "test": test.source},
    }
    if kind == "lora":
        report["lora"] = {**lora.to_dict(), "adapted_layers": len(adapted), "adapted": adapted}
        report["learning_rate"] = base_lr
    else:
        for p in clf.parameters():
            p.requires_grad_(True)
    return clf, report


# ------------------------------------------------------------------------------------------ save / load


def save_classifier(
    clf: Any, path: str | Path, classes: list[str], extra_files: dict[str, str] | None = None,
    info: dict | None = None,
) -> Path:
    """Write ``path/config.json`` + ``path/model.safetensors`` (+ ``extra_files`` name -> text), atomically."""
    meta = {
        "format": CLASSIFIER_FORMAT,
        "model": to_dict(clf.lm.config),
        "tokenizer": clf.lm.tokenizer.to_dict(),
        "classifier": clf.spec(),
        "classes": classes,
        **({"info": info} if info else {}),
    }
    with atomic_dir(path) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        save_model(clf, str(tmp / WEIGHTS_FILE))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return Path(path)


def save_lora_classifier(
    clf: Any, path: str | Path, classes: list[str], base_model: str, lora: LoRAConfig,
    extra_files: dict[str, str] | None = None, info: dict | None = None,
) -> Path:
    """Write a LoRA classifier as an adapter directory: ``adapter.safetensors`` (adapters, head, prompt; not
    the frozen base) and ``adapter.json`` (the base model's path, config and weight fingerprint, rank,
    alpha, adapted layers, the head's settings and the classes), atomically."""
    tensors = lora_state_dict(clf.lm, prefix="lm.")
    tensors.update({k: v for k, v in clf.state_dict().items() if k.startswith(("head.", "prompt."))})
    adapted = sorted(k[3:].rsplit(".", 1)[0] for k in tensors if k.endswith(".lora_A"))
    meta = {
        "kind": "classifier",
        "base_model": base_model,
        "base_config": to_dict(clf.lm.config),
        "base_fingerprint": fingerprint(clf.lm),
        "tokenizer": clf.lm.tokenizer.to_dict(),
        "lora": lora.to_dict(),
        "adapted": adapted,
        "classifier": clf.spec(),
        "classes": classes,
        **({"info": info} if info else {}),
    }
    return save_adapter(path, tensors, meta, extra_files)


def _load_lora_classifier(path: Path, device: str, base: str | Path | None) -> tuple[Any, list[str]]:
    meta, tensors = read_adapter(path)
    if meta.get("kind") != "classifier":
        raise CheckpointError(f"{path}: a language-model adapter, not a classifier (dnalm.load reads it)")
    lm = load_base_model(meta, path, device, base)
    try:
        clf = SequenceClassifier(lm, **meta["classifier"])
        lm_state = {k[3:]: v for k, v in tensors.items() if k.startswith("lm.")}
        apply_adapter(clf.lm, meta["lora"], meta["adapted"], lm_state, str(path), meta.get("base_fingerprint"))
        rest = {k: v for k, v in tensors.items() if not k.startswith("lm.")}
        clf.load_state_dict({**clf.state_dict(), **rest})
    except (LoRAError, TypeError, KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    return clf.to(device).eval(), list(meta["classes"])


def load_classifier(path: str | Path, device: str = "cpu", base: str | Path | None = None) -> tuple[Any, list[str]]:
    """Load a directory written by ``save_classifier`` (or ``save_lora_classifier``: the base model is read
    from where the adapter says, or ``base``) -> (SequenceClassifier in eval mode, class names)."""
    path = Path(path)
    if is_adapter_dir(path):
        return _load_lora_classifier(path, device, base)
    cfg = path / CONFIG_FILE
    meta = read_checkpoint_meta(
        path, CLASSIFIER_FORMAT, "not a fine-tuned classifier: `dnalm predict` needs the output directory of "
        "`dnalm finetune`"
    )
    try:
        config = model_config_from_dict(meta["model"], where=f"{cfg}:model")
        lm = DNALM(config, tokenizer=Tokenizer(**meta.get("tokenizer", {})))
        clf = SequenceClassifier(lm, **meta["classifier"])
    except (ConfigError, TypeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{cfg}: {e}") from None
    return load_weights(clf, path, device), list(meta["classes"])


def load_sets(
    train: str | Path, dev: str | Path | None = None, test: str | Path | None = None, *,
    seq_column: str | None = None, label_column: str | None = None, split_seed: int = 0,
    max_train: int | None = None, seed: int = 0,
) -> tuple[dict[str, LabeledData], list[str], dict[str, Any] | None]:
    """Read train/dev/test CSVs, or split ``train`` 80/10/10 (stratified, ``split_seed``) when dev and test
    are omitted. Returns ({"train", "dev", "test"} -> LabeledData, class names, split description or None).
    ``max_train`` keeps a random subset (``seed``) of the training set."""
    if (dev is None) != (test is None):
        raise DataError("give both --dev and --test, or neither (then --train is split 80/10/10 with --split-seed)")
    raw = {"train": read_labeled(train, seq_column, label_column)}
    split_info = None
    if dev is not None:
        raw["dev"] = read_labeled(dev, seq_column, label_column)
        raw["test"] = read_labeled(test, seq_column, label_column)
        classes = class_names(raw["train"][0])
        data = {k: to_data(*v, classes, str(p)) for (k, v), p in zip(raw.items(), (train, dev, test))}
    else:
        classes = class_names(raw["train"][0])
        full = to_data(*raw["train"], classes, str(train))
        tr, dv, te = seeded_split(full.labels, seed=split_seed)
        data = {"train": subset(full, tr, f"{train} (seeded split, train)"),
                "dev": subset(full, dv, f"{train} (seeded split, dev)"),
                "test": subset(full, te, f"{train} (seeded split, test)")}
        line = [int(n.rsplit(":", 1)[1]) for n in full.names]  # names are FILE:LINE
        split_info = {"source": str(train), "fractions": [0.8, 0.1, 0.1], "stratified": True, "seed": split_seed,
                      "train_rows": [line[i] for i in tr], "dev_rows": [line[i] for i in dv],
                      "test_rows": [line[i] for i in te],
                      "note": "row numbers are 1-based file lines (the header and any comment lines count)"}
    if max_train is not None and max_train < len(data["train"].labels):
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(data["train"].labels), max_train, replace=False))
        data["train"] = subset(data["train"], keep, data["train"].source + f" (random {max_train})")
    return data, classes, split_info


def finetune_files(
    model: Any, train: str | Path, dev: str | Path | None = None, test: str | Path | None = None, *,
    seq_column: str | None = None, label_column: str | None = None, split_seed: int = 0,
    max_train: int | None = None, **kwargs: Any,
) -> tuple[Any, dict[str, Any]]:
    """``finetune`` on CSV files (see ``load_sets``); returns (SequenceClassifier, report with the classes)."""
    data, classes, split_info = load_sets(train, dev, test, seq_column=seq_column, label_column=label_column,
                                          split_seed=split_seed, max_train=max_train, seed=kwargs.get("seed", 0))
    clf, report = finetune(model, data["train"], data["dev"], data["test"], classes, **kwargs)
    if split_info:
        report["split"] = split_info
    return clf, report


# ------------------------------------------------------------------------------------------ commands
