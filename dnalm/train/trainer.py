"""The training loop: one function, :func:`train`, for every model family.

Each step asks the length schedule for (seq_len, batch_size), draws a batch from the sampler, runs
forward/backward over ``grad_accum`` micro-batches, skips the update if the loss is not finite, clips
gradients and steps AdamW on a warm-up + cosine schedule. Validation (tiled, every base once) runs every
``eval_every`` steps; checkpoints every ``ckpt_every`` steps hold everything resuming needs, so a killed
run continues the same trajectory. Metrics go to ``metrics.jsonl``; ``loss.png`` is drawn from it.

Under torchrun with ``train.parallel`` ddp or fsdp (dnalm/train/distributed.py) every rank runs this same
loop on its share of each global batch; losses, token counts and validation sums are reduced across
ranks, only rank 0 writes files, and checkpoints are sharded (dnalm/train/checkpoint.py).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_file
from tqdm import tqdm

from dnalm.checkpoint import (
    FINAL_MODEL_DIR,
    CheckpointError,
    save_adapter,
    atomic_write_bytes,
    atomic_write_text,
    checkpoint_dirs,
    latest_model_dir,
    read_config_json,
    save_pretrained,
)
from dnalm.config import ConfigError, RunConfig, to_dict, upgrade_legacy_keys
from dnalm.data import samplers as S
from dnalm.data.schedule import LengthSchedule, Stage
from dnalm.data.store import TokenStore, default_genome, prepare
from dnalm.models.lm import DNALM, lm_loss
from dnalm.tokenizer import Tokenizer
from dnalm.models.lora import LoRAError, add_lora, fingerprint, lora_state_dict, merge_lora
from dnalm.models.spec import SPECS, spec_of
from dnalm.outputs import check_output
from dnalm.runtime import (
    Precision,
    ThreadGovernor,
    Threads,
    apply_threads,
    choose_threads,
    matmul_shapes,
    model_step_bench,
    resolve_precision,
)
from dnalm.train import distributed as dist
from dnalm.train.checkpoint import (
    is_sharded_checkpoint,
    load_checkpoint_into,
    load_training_state,
    save_sharded_checkpoint,
    save_training_checkpoint,
)
from dnalm.train.evaluate import EvalResult, evaluate_lm, lm_inputs
from dnalm.train.optim import lr_at, make_optimizer

CONFIG_SNAPSHOT = "config.yaml"
ADAPTER_DIR = "adapter"  # RUN/adapter/: the LoRA adapters of a run with train.lora (RUN/model is merged)
METRICS_FILE = "metrics.jsonl"


class TrainingError(RuntimeError):
    """The run cannot continue (e.g. repeated non-finite losses); no broken checkpoint is written."""


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    tokens: int
    val_loss: float | None = None
    val_bits_per_base: float | None = None
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


def prepare_data(config: RunConfig, progress: bool = True):
    """Open the run's token store, preparing it into RUN/store first if the config names inputs."""
    data = config.data
    if data.store is not None:
        return TokenStore.open(data.store)
    inputs, annotations = list(data.inputs), list(data.annotations)
    if not inputs:
        genome, gff = default_genome()
        inputs, annotations = [str(genome)], annotations or [str(gff)]
    out = Path(config.out_dir) / "store"
    half = data.holdout_fraction / 2
    prepare(inputs, out, annotations, val_fraction=half, test_fraction=half, progress=progress)
    return TokenStore.open(out)


def build_sampler(config: RunConfig, store, rank: int = 0, world_size: int = 1):
    """The training sampler the data section describes (random windows, or a weighted mixture)."""
    data, seed = config.data, config.train.data_seed
    common = dict(seed=seed, rc_augment=data.rc_augment, rank=rank, world_size=world_size)
    if not data.sources:
        return S.RandomWindowSampler(store, "train", max_n_fraction=data.max_n_fraction, **common)
    parts = []
    for i, src in enumerate(data.sources):
        kw = {**common, "seed": seed + 1000 * (i + 1), "exclude": src.exclude}
        if src.kind == "genic":
            sampler = S.GenicWindowSampler(store, "train", flank=src.flank, **kw)
        else:
            sampler = S.RandomWindowSampler(store, "train", max_n_fraction=data.max_n_fraction, **kw)
        parts.append((sampler, src.weight))
    return S.MixtureSampler(parts, seed=seed, rank=rank, world_size=world_size)


def build_schedule(config: RunConfig):
    stages = config.data.warmup_stages
    if not stages:
        return LengthSchedule.constant(config.data.seq_len, config.train.batch_size)
    return LengthSchedule([Stage(s.seq_len, s.batch_size, steps=s.steps, tokens=s.tokens) for s in stages])


def extension_stage(config: RunConfig) -> RunConfig:
    """For a context-extension stage (``train.extend_from_len`` = L0), the model config at the new
    length L = ``data.seq_len``, derived in code by the family's ``extend_context`` (for RoPE families,
    Evo 2's recipe: ``max_len = L``, linear position interpolation by L/L0 and the RoPE base multiplied by
    10^log2(L/L0); see ``dnalm.models.attention.extend_context``). Idempotent, so a resumed stage derives
    the same model."""
    base_len = config.train.extend_from_len
    if base_len is None:
        return config
    spec = spec_of(config.model)
    if spec.extend_context is None:
        able = sorted(s.family for s in SPECS.values() if s.extend_context is not None)
        raise ConfigError(
            f"train.extend_from_len: the {spec.family} family has no RoPE to extend; "
            f"context extension applies to {', '.join(able)}"
        )
    return replace(config, model=spec.extend_context(config.model, config.data.seq_len, base_len))


def check_config(config: RunConfig, init_from: str | Path | None = None) -> None:
    """Impossible combinations, reported before any work starts."""
    if config.train.lora is not None:
        if init_from is None and config.train.init_from is None:
            raise ConfigError("train.lora adapts a trained model: set train.init_from (or --init-from) to it")
        if config.train.parallel == "fsdp":
            raise ConfigError("train.lora trains a few adapters; use train.parallel none or ddp, not fsdp")
    lengths = [s.seq_len for s in config.data.warmup_stages] or [config.data.seq_len]
    for length in lengths:
        if length > config.model.max_len:
            field = spec_of(config.model).length_field
            raise ConfigError(
                f"data.seq_len {length} exceeds the model's maximum length {config.model.max_len} "
                f"(raise model.{field} to at least seq_len)"
            )
        if length < 2:
            raise ConfigError(f"data.seq_len must be >= 2 (got {length})")
    for s in config.data.warmup_stages:
        if s.batch_size % config.train.grad_accum:
            raise ConfigError(f"warm-up stage batch_size {s.batch_size} must be divisible by train.grad_accum")
    if not 0 < config.data.repeat_weight <= 1:
        raise ConfigError(f"data.repeat_weight must be in (0, 1] (got {config.data.repeat_weight})")


def _write_snapshot(run_dir: Path, config: RunConfig, resume: bool, write: bool = True) -> None:
    snap = run_dir / CONFIG_SNAPSHOT
    text = yaml.safe_dump(to_dict(config), sort_keys=False)
    if snap.exists() and checkpoint_dirs(run_dir) and resume:
        try:
            old = yaml.safe_load(snap.read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError) as e:
            raise ConfigError(f"{snap}: cannot read the run's config snapshot ({' '.join(str(e).split())})") from None
        if not isinstance(old, dict):
            raise ConfigError(f"{snap}: the run's config snapshot is not a mapping; pass --restart or another out_dir")
        upgrade_legacy_keys(old, announce=False)  # a run written before train.precision said train.bf16
        new = yaml.safe_load(text)
        for section in ("model", "data"):
            if old.get(section) != new.get(section):
                raise ConfigError(
                    f"{run_dir} holds a run with a different {section} section; resume it with the same config, "
                    "or choose a new out_dir (or pass --restart to start over there)"
                )
        changed = [f"{k} {v!r} -> {new['train'].get(k)!r}" for k, v in (old.get("train") or {}).items()
                   if new["train"].get(k) != v]
        if changed and write:  # allowed (a lower lr after a spike, more steps), but never silently
            tqdm.write(f"warning: resuming {run_dir} with changed train settings: {'; '.join(changed)}", file=sys.stderr)
    if write:
        atomic_write_text(snap, text)


def _resume_state(ckpts: list[Path], model: torch.nn.Module, optimizer: torch.optim.Optimizer, sharded: bool) -> dict:
    """Load the newest checkpoint that reads back whole into ``model`` and ``optimizer``; a damaged one (a
    truncated model.safetensors, say) is skipped with a warning, as one without state.json already is."""
    errors = []
    for ckpt in reversed(ckpts):
        try:
            if sharded or is_sharded_checkpoint(ckpt):
                return load_checkpoint_into(ckpt, model, optimizer)
            model_state, optim_state, state = load_training_state(ckpt)
            model.load_state_dict(model_state)
            optimizer.load_state_dict(optim_state)
            return state
        except (CheckpointError, RuntimeError, ValueError, KeyError) as e:
            errors.append(" ".join(str(e).split()))
            tqdm.write(f"warning: skipping a damaged checkpoint: {errors[-1]}", file=sys.stderr)
    raise CheckpointError(f"no checkpoint of {ckpts[0].parent} can be read ({'; '.join(errors)}); pass --restart")


class _Metrics:
    """metrics.jsonl: one JSON line per logged step; on resume, lines past the checkpoint are dropped."""

    def __init__(self, path: Path, resume_step: int | None, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        self.rows: list[dict] = []
        if path.exists() and resume_step is not None:
            self.rows = [r for r in map(json.loads, path.read_text().splitlines()) if r["step"] <= resume_step]
        if enabled:
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in self.rows))

    def log(self, row: dict) -> None:
        self.rows.append(row)
        if self.enabled:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(row) + "\n")


def plot_metrics(metrics_path: Path, out_png: Path) -> None:
    """Training loss (and validation bits/base when present) against tokens seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    tr = [r for r in rows if "loss" in r]
    va = [r for r in rows if "val/bits_per_base" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if tr:
        ax.plot([r["tokens"] for r in tr], [r["loss"] / math.log(2) for r in tr], label="train (bits/base)", lw=1)
    if va:
        ax.plot([r["tokens"] for r in va], [r["val/bits_per_base"] for r in va], "o-", label="validation (bits/base)")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("bits per base")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = out_png.with_name(f".{out_png.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out_png)


def train(
    config: RunConfig,
    resume: bool = True,
    progress: bool = True,
    init_from: str | Path | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train (or resume) the run described by ``config``; returns the final validation numbers.

    ``init_from`` starts from another run's or checkpoint's weights (staged context extension: the
    model may differ in context length and RoPE settings, not in shapes); the optimizer and the
    learning-rate schedule start afresh. ``stop_after`` ends the loop after that many steps of this
    call (used to simulate an interrupted run). With ``train.parallel`` ddp/fsdp every process of a
    torchrun launch calls this.
    """
    config = extension_stage(config)
    check_config(config, init_from)
    tc = config.train
    init_from = init_from if init_from is not None else tc.init_from
    if tc.lora is not None and init_from is not None and tc.init_from != str(init_from):
        config = replace(config, train=replace(tc, init_from=str(init_from)))  # the adapter names its base
    check_output(config.out_dir, "dir", "run directory (out_dir)")
    run_dir = Path(config.out_dir)
    snap = run_dir / CONFIG_SNAPSHOT
    old_snapshot = snap.read_bytes() if snap.is_file() else None
    new_dir = not run_dir.exists()
    before = checkpoint_dirs(run_dir)
    env = dist.setup(tc.parallel)
    try:
        return _train(config, env, resume, progress, init_from, stop_after)
    except BaseException:
        # a run that failed before writing a checkpoint leaves the run directory as it was: config.yaml
        # restored, or the directory removed when this call created it
        if env.is_main and checkpoint_dirs(run_dir) == before:
            if new_dir:
                shutil.rmtree(run_dir, ignore_errors=True)
            elif old_snapshot is not None:
                atomic_write_bytes(snap, old_snapshot)
        raise
    finally:
        dist.teardown(env)


@dataclass
class TrainState:
    """Where a run stands; ``step``, ``tokens`` and the sampler/schedule/RNG states are what a checkpoint keeps."""

    step: int = 0
    tokens: int = 0
    bad_steps: int = 0  # consecutive non-finite losses
    steps_this_call: int = 0
    last_val: dict[str, float] = field(default_factory=dict)
    window_t: float = 0.0  # start of the current tokens/s window
    window_tokens: int = 0
    eval_s: float = 0.0  # wall and process CPU seconds spent in validation during this call
    eval_cpu_s: float = 0.0


@dataclass
class _Session:
    """Everything one training call works with, built once by :func:`_start`."""

    config: RunConfig
    env: dist.DistEnv
    run_dir: Path
    store: Any
    sampler: Any
    schedule: Any
    model: torch.nn.Module  # wrapped for DDP/FSDP when train.parallel says so
    optimizer: torch.optim.Optimizer
    metrics: _Metrics
    progress: bool
    precision: Precision
    governor: ThreadGovernor
    t_start: float = field(default_factory=time.time)
    cpu_start: float = field(default_factory=time.process_time)


def _start(config: RunConfig, env: dist.DistEnv, resume: bool, progress: bool, init_from) -> tuple[_Session, TrainState]:
    """Prepare the data, build (or resume) the model, optimizer, sampler and schedule."""
    tc = config.train
    dist.check_world(config, env)
    main = env.is_main
    threads = _choose_threads(tc, env)
    apply_threads(threads)
    run_dir = Path(config.out_dir)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    _write_snapshot(run_dir, config, resume, write=main)

    if main:
        store = prepare_data(config, progress=progress and main)
    dist.barrier(env)  # rank 0 prepared the store (if the config names inputs); the others open it
    if not main:
        store = TokenStore.open(config.data.store or run_dir / "store")
    sampler = build_sampler(config, store, env.rank, env.world_size)
    schedule = build_schedule(config)

    torch.manual_seed(tc.seed)
    model = DNALM(config.model)
    stored = None
    if init_from is not None:
        stored, tokenizer = _load_init_weights(model, init_from)
        model.tokenizer = tokenizer or model.tokenizer  # an imported model keeps its own ids (Evo: bytes)
    if tc.lora is not None:
        if stored is not None and stored != torch.float32:
            model.to(stored)  # the frozen base stays in its stored dtype; the adapters are float32
        try:
            add_lora(model, tc.lora)  # freezes everything else
        except LoRAError as e:
            raise ConfigError(f"train.lora: {e}") from None
    if tc.activation_checkpointing:
        dist.apply_activation_checkpointing(model)
    model = dist.wrap_model(model, tc.parallel, env)  # the DNALM itself when parallel is none
    optimizer = make_optimizer(dist.unwrap(model), tc.lr, tc.weight_decay, tc.betas)

    state = TrainState()
    ckpts = checkpoint_dirs(run_dir) if resume else []
    if ckpts:
        saved = _resume_state(ckpts, model, optimizer, tc.parallel != "none")
        sampler.load_state_dict(saved["sampler"])
        schedule.load_state_dict(saved["schedule"])
        torch.set_rng_state(torch.tensor(saved["torch_rng"], dtype=torch.uint8))
        state.step, state.tokens = saved["step"], saved["tokens"]
    metrics = _Metrics(run_dir / METRICS_FILE, state.step if ckpts else None, enabled=main)
    if ckpts and progress and main:
        tqdm.write(f"resuming {run_dir} from step {state.step} ({state.tokens:,} tokens)")
    precision = _choose_precision(config, env, dist.unwrap(model))
    if progress and main:  # also in metrics.jsonl (below)
        for line in (precision.message(), threads.message()):
            tqdm.write(line, file=sys.stderr)
    metrics.log({"step": state.step, "event": "runtime", "precision": precision.name, "precision_reason": precision.reason,
                 "threads": threads.n, "threads_reason": threads.reason})
    session = _Session(config, env, run_dir, store, sampler, schedule, model, optimizer, metrics, progress and main,
                       precision, ThreadGovernor(threads))
    return session, state


def _choose_threads(tc: Any, env: dist.DistEnv) -> Threads:
    """train.threads, else OMP_NUM_THREADS (torchrun sets it), else the free usable cores (dnalm/runtime.py)."""
    threads = choose_threads(tc.threads, "train.threads")
    if not threads.explicit and env.world_size > 1 and env.device.type == "cpu":  # processes share the cores
        n = max(1, threads.n // env.world_size)
        threads = Threads(n, f"{threads.reason}, shared by {env.world_size} processes", False)
    return threads


def _choose_precision(config: RunConfig, env: dist.DistEnv, model: torch.nn.Module) -> Precision:
    """train.precision resolved on rank 0 (auto: per machine, dnalm/runtime.py) and used by every rank."""
    tc = config.train
    precision = None
    if env.is_main:
        tokens = tc.batch_size * config.data.seq_len // (tc.grad_accum * env.world_size)
        try:
            # one process: time the model's own step; several: ranks must not run the model apart (FSDP)
            bench = model_step_bench(model, config.model.vocab_size, config.data.seq_len) if env.world_size == 1 else None
            precision = resolve_precision(tc.precision, env.device, matmul_shapes(model, tokens), bench=bench)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return dist.broadcast_object(env, precision)


def train_step(s: _Session, state: TrainState, stage: Any) -> dict[str, Any] | None:
    """One optimizer step on a batch of ``stage`` (seq_len, batch_size): forward/backward over grad_accum
    micro-batches, then clip and step. Returns the step's loss, gradient norm, tokens and auxiliary metrics,
    or None when the loss was not finite (the update is skipped and the step consumed)."""
    tc, env, model, optimizer = s.config.train, s.env, s.model, s.optimizer
    for group in optimizer.param_groups:
        group["lr"] = lr_at(state.step, tc.steps, tc.lr, tc.warmup_steps, tc.min_lr_ratio)
    # This rank's rows of the global batch; the case mask is read only when repeats are reweighted.
    reweight_repeats = s.config.data.repeat_weight != 1.0  # the only consumer of the case mask
    batch = s.sampler.next_batch(stage.batch_size, stage.seq_len, case_mask=reweight_repeats)
    lower = batch.lower if reweight_repeats else np.broadcast_to(False, batch.ids.shape)  # a view, no copy
    inputs, targets, weights = lm_inputs(batch.ids, lower, batch.valid, s.config.data.repeat_weight,
                                         tokenizer=dist.unwrap(model).tokenizer)  # fmt: skip
    inputs, targets, weights = inputs.to(env.device), targets.to(env.device), weights.to(env.device)
    autocast = s.precision.autocast(env.device.type)
    optimizer.zero_grad(set_to_none=True)
    micro = inputs.shape[0] // tc.grad_accum
    loss_sum, aux_metrics = 0.0, {}
    for m in range(tc.grad_accum):
        sl = slice(m * micro, (m + 1) * micro)
        with dist.grad_sync(model, m == tc.grad_accum - 1):  # reduce gradients once per step
            with autocast:
                out = model(inputs[sl])
            loss = lm_loss(out.logits, targets[sl], weights[sl])
            if out.aux_loss is not None:
                loss = loss + out.aux_loss
                aux_metrics = out.metrics
            (loss / tc.grad_accum).backward()
        loss_sum += float(loss.detach()) / tc.grad_accum
    n_tokens = int(batch.valid.sum())
    if env.world_size > 1:  # the global batch's mean loss and token count, the same on every rank
        loss_sum, n_tokens = dist.all_reduce(env, [loss_sum, n_tokens])
        loss_sum, n_tokens = loss_sum / env.world_size, int(n_tokens)
    if not math.isfinite(loss_sum):
        _skip_bad_step(s, state)
        return None
    state.bad_steps = 0
    grad_norm = dist.clip_grad_norm(model, tc.grad_clip)
    optimizer.step()
    return {"loss": loss_sum, "grad_norm": grad_norm, "tokens": n_tokens, "aux": aux_metrics}


def _skip_bad_step(s: _Session, state: TrainState) -> None:
    tc = s.config.train
    state.bad_steps += 1
    s.optimizer.zero_grad(set_to_none=True)
    s.metrics.log({"step": state.step + 1, "event": "non_finite_loss", "skipped": True, "consecutive": state.bad_steps})
    if s.env.is_main:
        tqdm.write(f"step {state.step + 1}: non-finite loss, update skipped ({state.bad_steps}/{tc.max_bad_steps})")
    if state.bad_steps >= tc.max_bad_steps:
        raise TrainingError(
            f"{state.bad_steps} consecutive non-finite losses at step {state.step + 1}; stopping without a new "
            f"checkpoint (the last good one is kept). Try a lower train.lr or train.precision=fp32."
        )
    state.step += 1  # the step is consumed: its batch is skipped, the trajectory stays deterministic


def _maybe_log(s: _Session, state: TrainState, stage: Any, out: dict[str, Any], bar: Any) -> None:
    tc = s.config.train
    if not (state.step % tc.log_every == 0 or state.step == tc.steps):
        return
    now = time.time()
    tps = state.window_tokens / max(now - state.window_t, 1e-9)
    state.window_t, state.window_tokens = now, 0
    row = {
        "step": state.step,
        "loss": out["loss"],
        "lr": s.optimizer.param_groups[0]["lr"],
        "grad_norm": out["grad_norm"],
        "tokens": state.tokens,
        "tokens_per_s": tps,
        "seq_len": stage.seq_len,
        "batch_size": stage.batch_size,
        "elapsed_s": now - s.t_start,
        **out["aux"],
    }
    s.metrics.log(row)
    bar.set_postfix(loss=f"{out['loss']:.4f}", tok_s=f"{tps:,.0f}", L=stage.seq_len)


def _govern_threads(s: _Session, state: TrainState, stage: Any, seconds: float) -> None:
    """Fewer threads when steps slow down (a busy machine); every rank decides alike (rank 0's step time)."""
    if not s.governor.active:
        return
    if s.env.world_size > 1:
        seconds = dist.all_reduce(s.env, [seconds], op="max")[0]
    message = s.governor.step(seconds, key=(stage.seq_len, stage.batch_size))
    if message:
        s.metrics.log({"step": state.step + 1, "event": "threads", "threads": s.governor.n, "reason": message})
        if s.progress:
            tqdm.write(message, file=sys.stderr)


def _timed_out(s: _Session) -> bool:
    """train.max_time_minutes has passed (decided together by every rank, so all stop at the same step)."""
    limit = s.config.train.max_time_minutes
    timed_out = limit is not None and (time.time() - s.t_start) > 60 * limit
    if limit is not None and s.env.world_size > 1:
        timed_out = dist.all_reduce(s.env, [float(timed_out)], op="max")[0] > 0
    return timed_out


def validate(s: _Session) -> dict[str, float]:
    """Held-out loss on the validation split (each rank scores its share of the tiling; sums are reduced)."""
    tc, env = s.config.train, s.env
    args = (dist.eval_model(s.model), s.store, "validation", s.config.data.seq_len, tc.eval_batch_size, tc.eval_tokens)
    if env.world_size == 1:
        return evaluate_lm(*args).to_dict("val/")
    try:
        res = evaluate_lm(*args, rank=env.rank, world_size=env.world_size)
        sums = [res.loss * res.n_bases, res.n_bases, res.skipped_n, (res.loss_upper or 0.0) * res.n_upper,
                res.n_upper, (res.loss_lower or 0.0) * res.n_lower, res.n_lower]  # fmt: skip
    except ValueError as e:
        if "no bases" not in str(e):
            raise
        sums = [0.0, 0, 0, 0.0, 0, 0.0, 0]  # this rank's share was padding or N only; the others' is not
    nll, count, skipped, nll_up, n_up, nll_low, n_low = dist.all_reduce(env, sums)
    return EvalResult(
        nll / count, int(count), int(skipped), loss_upper=nll_up / n_up if n_up else None, n_upper=int(n_up),
        loss_lower=nll_low / n_low if n_low else None, n_lower=int(n_low),
    ).to_dict("val/")


def _maybe_evaluate(s: _Session, state: TrainState, force: bool) -> None:
    tc = s.config.train
    if not (force or state.step % tc.eval_every == 0 or state.step == tc.steps):
        return
    t0, c0 = time.time(), time.process_time()
    # training time so far in this call, validation excluded (wall, and process CPU for the ablations)
    spent = {"train_s": t0 - s.t_start - state.eval_s, "train_cpu_s": c0 - s.cpu_start - state.eval_cpu_s}
    state.last_val = validate(s)
    state.eval_s += time.time() - t0
    state.eval_cpu_s += time.process_time() - c0
    s.metrics.log({"step": state.step, "tokens": state.tokens, **spent, **state.last_val})
    if s.env.is_main:
        tqdm.write(
            f"step {state.step}: validation loss {state.last_val['val/loss']:.4f}, "
            f"{state.last_val['val/bits_per_base']:.4f} bits/base"
        )


def _maybe_checkpoint(s: _Session, state: TrainState, force: bool) -> None:
    tc = s.config.train
    if not (force or state.step % tc.ckpt_every == 0 or state.step == tc.steps):
        return
    saved = {
        "step": state.step,
        "tokens": state.tokens,
        "sampler": s.sampler.state_dict(),
        "schedule": s.schedule.state_dict(),
        "torch_rng": torch.get_rng_state().tolist(),
    }
    if tc.parallel != "none":
        save_sharded_checkpoint(s.run_dir, state.step, s.model, s.optimizer, saved, tc.keep_last, s.env)
    else:
        save_training_checkpoint(s.run_dir, state.step, s.model, s.optimizer, saved, tc.keep_last)


def _train(config: RunConfig, env: dist.DistEnv, resume: bool, progress: bool, init_from, stop_after) -> TrainResult:
    tc = config.train
    s, state = _start(config, env, resume, progress, init_from)
    stopped_early = False
    bar = tqdm(total=tc.steps, initial=state.step, desc="train", unit="step", disable=not s.progress, dynamic_ncols=True)
    state.window_t = time.time()
    s.model.train()
    try:
        while state.step < tc.steps:
            stage = s.schedule.at(state.step, state.tokens)
            t_step = time.perf_counter()
            out = train_step(s, state, stage)
            if out is None:
                continue
            _govern_threads(s, state, stage, time.perf_counter() - t_step)
            state.step += 1
            state.steps_this_call += 1
            state.tokens += out["tokens"]
            state.window_tokens += out["tokens"]
            bar.update(1)
            _maybe_log(s, state, stage, out, bar)
            timed_out = _timed_out(s)
            _maybe_evaluate(s, state, force=timed_out)
            _maybe_checkpoint(s, state, force=timed_out)
            if timed_out:
                if env.is_main:
                    tqdm.write(f"stopping after {tc.max_time_minutes} min (train.max_time_minutes) at step {state.step}")
                stopped_early = True
                break
            if stop_after is not None and state.steps_this_call >= stop_after:
                stopped_early = True
                break
    finally:
        bar.close()
        if s.metrics.rows and env.is_main:
            plot_metrics(s.run_dir / METRICS_FILE, s.run_dir / "loss.png")

    if not stopped_early:
        _save_final_model(config, s.model, s.run_dir / FINAL_MODEL_DIR, {"step": state.step, "tokens": state.tokens}, env)
    return TrainResult(
        run_dir=s.run_dir,
        steps=state.step,
        tokens=state.tokens,
        val_loss=state.last_val.get("val/loss"),
        val_bits_per_base=state.last_val.get("val/bits_per_base"),
        stopped_early=stopped_early,
        history=s.metrics.rows,
    )


def _save_final_model(config: RunConfig, model: torch.nn.Module, path: Path, extra: dict, env: dist.DistEnv) -> None:
    """RUN/model as config.json + model.safetensors, written by rank 0 (FSDP shards are gathered first)."""
    inner = dist.unwrap(model)
    if config.train.lora is not None:
        if env.is_main:
            save_adapter(path.parent / ADAPTER_DIR, lora_state_dict(inner), adapter_meta(config, inner, extra))
            merge_lora(inner)  # RUN/model: the base with the adapters folded in, for every other command
            save_pretrained(inner, path, {**extra, "lora_adapter": ADAPTER_DIR})
        dist.barrier(env)
        return
    if config.train.parallel == "fsdp":
        state = dist.full_model_state(model)  # collective; the tensors arrive on rank 0
        if env.is_main:
            inner = DNALM(config.model, tokenizer=inner.tokenizer)
            inner.load_state_dict(state)
    if env.is_main:
        save_pretrained(inner, path, extra)
    dist.barrier(env)


def adapter_meta(config: RunConfig, model: DNALM, extra: dict) -> dict:
    """adapter.json of a run trained with ``train.lora``: the base (``train.init_from``), its config and weight
    fingerprint, the LoRA settings and the adapted layers."""
    base = config.train.init_from
    if base is not None and Path(base).exists():
        base = str(Path(base).resolve())
    from dnalm.models.lora import lora_modules

    return {
        "kind": "lm",
        "base_model": base,
        "base_config": to_dict(config.model),
        "base_fingerprint": fingerprint(model),
        "tokenizer": model.tokenizer.to_dict(),
        "lora": config.train.lora.to_dict(),
        "adapted": sorted(lora_modules(model)),
        "trained": extra,
    }


def _load_init_weights(model: DNALM, source: str | Path) -> tuple[torch.dtype, Any]:
    """Copy weights from a checkpoint or run (or any model ``dnalm.load`` reads, e.g. an imported one) into
    ``model`` (shapes must match; buffers that depend on the context length, such as filter position
    tables, are rebuilt by the model, not copied). Returns the dtype the weights were stored in, and the
    source's tokenizer when it is not dnalm's default one (an imported Evo model reads bytes)."""
    src = Path(source)
    found = latest_model_dir(src) or (src if (src / "model.safetensors").is_file() else None)
    tokenizer = None
    if found is None:
        state, tokenizer = _foreign_state(source)
        found = src
    else:
        state = load_file(str(found / "model.safetensors"))
        try:
            tok = read_config_json(found / "config.json").get("tokenizer")
            tokenizer = Tokenizer(**tok) if isinstance(tok, dict) else None
        except (CheckpointError, TypeError, ValueError):
            tokenizer = None
    own = model.state_dict()
    params = {name for name, _ in model.named_parameters()}
    missing = [k for k in own if k not in state and k in params]
    bad = [k for k in params if k in state and own[k].shape != state[k].shape]
    if missing or bad:
        raise CheckpointError(
            f"init_from {found}: the checkpoint does not fit this model "
            f"(missing: {', '.join(missing[:5]) or '-'}; shape differs: {', '.join(bad[:5]) or '-'})"
        )
    # buffers derived from the context length (position tables, RoPE caches) are rebuilt, not copied
    keep = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(keep, strict=False)
    floats = [v.dtype for k, v in state.items() if k in params and v.is_floating_point()]
    return (max(set(floats), key=floats.count) if floats else torch.float32), tokenizer


def _foreign_state(source: str | Path) -> tuple[dict[str, torch.Tensor], Any]:
    """The weights of a model in a registered foreign format (dnalm.formats), or CheckpointError."""
    from dnalm.formats import detect_format, load

    if not Path(source).exists() or detect_format(source) is None:
        raise CheckpointError(f"init_from {source}: no checkpoint found there")
    m = load(source)
    if not isinstance(m, DNALM):
        raise CheckpointError(f"init_from {source}: a {type(m).__name__}, not a language model")
    return m.state_dict(), m.tokenizer
