"""Run commands: prepare a store, the demo, train, evaluate, describe a model."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from dnalm.checkpoint import CheckpointError, atomic_write_text, latest_model_dir
from dnalm.cli.base import RUNTIME_ARGS, UserError, arg, command, positive_float, positive_int
from dnalm.config import ConfigError, LoRAConfig, RunConfig
from dnalm.data.store import TokenStore, default_genome
from dnalm.data.store import prepare as prepare_store
from dnalm.eval.likelihood import markov_report
from dnalm.formats import load
from dnalm.formats import model_config as model_config_of
from dnalm.models import list_presets as all_presets  # info_report's parameter is named list_presets
from dnalm.memory import memory_limit
from dnalm.models.lm import meta_model
from dnalm.scaling.flops import flops_per_token
from dnalm.scaling.lora import LoRAMemory, lora_memory
from dnalm.scaling.memory import check_model_memory
from dnalm.scaling.plan import memory_per_gpu, shape_from_config
from dnalm.train.config import load_run_config, run_config_from_dict
from dnalm.train.demo import DEMO_MARGIN, demo_config
from dnalm.train.evaluate import evaluate_lm
from dnalm.train.trainer import CONFIG_SNAPSHOT, TrainingError, prepare_data, train


@command(
    "prepare",
    "Turn FASTA/GenBank genomes (and GFF3/GTF annotation) into a memory-mapped token store.",
    arg("inputs", nargs="*", metavar="INPUT",
        help="FASTA (.fa/.fasta/.fna; plain, gzip or bgzip) or GenBank (.gb/.gbk/.gbff) files; "
        "with none, the embedded E. coli K-12 MG1655 genome and its GFF3", default=argparse.SUPPRESS),
    arg("--out", required=True, metavar="DIR", default=argparse.SUPPRESS, output="dir",
        help="store directory to write (replaced atomically)"),
    arg("--gff", action="append", default=[], metavar="ANNOTATION",
        help="GFF3 or GTF annotation whose genes feed genic windows (repeatable; .gz ok)"),
    arg("--val-fraction", type=float, default=0.05,
        help="share of each record held out for validation, as one contiguous block near its end"),
    arg("--test-fraction", type=float, default=0.05,
        help="share of each record held out for test, as one contiguous block at its end"),
    arg("--val-records", default=None, metavar="PAT,...",
        help="comma-separated glob patterns: matching records go whole to validation (replaces --val-fraction)"),
    arg("--test-records", default=None, metavar="PAT,...",
        help="comma-separated glob patterns: matching records go whole to test (replaces --test-fraction)"),
    arg("--circular", default=None, metavar="PAT,...",
        help="comma-separated glob patterns of circular records, whose features may cross the origin"),
    arg("--zero-based-gff", action="store_true", help="the annotation's start column is 0-based (e.g. phiX174 ORFs)"),
    arg("--force", action="store_true", help="rebuild even if the store is up to date"),
    arg("--quiet", action="store_true", help="no progress bar"),
)
def prepare(args: argparse.Namespace) -> int:
    """Read genomes into a token store: uint8 tokens + case mask (memory-mapped), an index of records,
    splits and genes, and a manifest with input checksums and counts. A record goes whole to a split
    when it matches --val-records/--test-records; otherwise its end is held out as contiguous blocks.
    Re-running with the same inputs and options does nothing and says "up to date"."""
    inputs, gff = list(getattr(args, "inputs", [])), list(args.gff)
    if not inputs:
        genome, genome_gff = default_genome()
        inputs, gff = [str(genome)], gff or [str(genome_gff)]

    def patterns(text: str | None) -> list[str]:
        return [p.strip() for p in (text or "").split(",") if p.strip()]

    m = prepare_store(
        inputs, args.out, gff, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        val_records=patterns(args.val_records), test_records=patterns(args.test_records),
        zero_based_gff=args.zero_based_gff, circular=patterns(args.circular), force=args.force,
        progress=not args.quiet,
    )
    c, s = m["counts"], m["splits"]
    print(f"{'up to date' if m['up_to_date'] else 'prepared'}: {args.out}")
    print(
        f"records {c['records']:,}  bases {c['bases']:,}  GC {c['gc_fraction']:.2%}  N {c['n_fraction']:.2%}  "
        f"lower case {c['lower_fraction']:.2%}  genes {c['genes']:,}"
    )
    print("splits  " + "  ".join(f"{k} {v['bases']:,} bp" for k, v in s.items()))
    if not m["up_to_date"]:
        print(f"time {m['seconds']:.2f} s  ({m['mb_per_s']:.1f} MB/s of sequence)")
    return 0


@command(
    "demo",
    "Prepare the embedded E. coli genome, train a small StripedHyena 2 on CPU, compare with Markov baselines.",
    arg("--out", default="runs/demo", output="dir", help="run directory to write"),
    arg("--minutes", type=positive_float, default=None,
        help="stop training after this many minutes; None keeps the demo's 9-minute guard"),
    arg("--steps", type=positive_int, default=None, help="override the number of training steps"),
    arg("--restart", action="store_true", help="start over instead of resuming an existing demo run"),
    *RUNTIME_ARGS,
)
def demo(args: argparse.Namespace) -> int:
    """The README's first command: prepare E. coli K-12 MG1655 (last 10% of the genome held out), train
    a small StripedHyena 2 for a few minutes, then report held-out bits/base beside order-k Markov
    baselines fitted on the training split, and whether the model beat the best of them by the promised
    0.02 bits/base. Writes the run directory (config, metrics, loss.png, checkpoints)."""
    run_demo(args.out, minutes=args.minutes, steps=args.steps, restart=args.restart,
             precision=args.precision, threads=args.threads)
    return 0


@command(
    "train",
    "Train (or resume) a model from a YAML run config.",
    arg("--config", required=True, help="YAML run config (see configs/); sections model/data/train"),
    arg("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.lr=3e-4 (repeatable)"),
    arg("--out", default=None, output="dir", help="run directory (overrides out_dir in the config)"),
    arg("--restart", action="store_true", help="ignore existing checkpoints in the run directory and start over"),
    arg("--init-from", default=None,
        help="start from another run's, checkpoint's or imported model's weights (staged context extension, "
        "or LoRA with train.lora); fresh LR schedule; a config without a model section takes this model's"),
)
def train_cmd(args: argparse.Namespace) -> int:
    """Train a DNA language model. Resumes automatically from the newest checkpoint in the run
    directory; a run killed at any point continues the same trajectory. On several processes:
    torchrun --nproc-per-node N -m dnalm train --config run.yaml --set train.parallel=ddp (or fsdp)."""
    overrides = list(args.overrides)
    if args.init_from:  # before the config is read: a config without a model section takes init_from's
        overrides.append(f"train.init_from={json.dumps(str(args.init_from))}")
    config = load_run_config(args.config, overrides)
    if args.out:
        config.out_dir = args.out
    tc = config.train
    if tc.lora is not None and tc.init_from is not None:  # checked before the model is loaded (dnalm.scaling.lora)
        lengths = [s.seq_len for s in config.data.warmup_stages] or [config.data.seq_len]
        check_lora_memory(tc.init_from, tc.lora, max(lengths), tc.batch_size // tc.grad_accum,
                          "cuda" if torch.cuda.is_available() else "cpu", lm_logits=True)  # fmt: skip
    else:
        stages = [(config.data.seq_len, tc.batch_size)] + [(st.seq_len, st.batch_size) for st in config.data.warmup_stages]
        seq_len, batch = max(stages, key=lambda sb: sb[0] * sb[1])
        check_model_memory(config.model, "dnalm train", seq_len, max(1, batch // tc.grad_accum), training=True,
                           activation_checkpointing=tc.activation_checkpointing)
    try:
        result = train(config, resume=not args.restart, init_from=args.init_from)
    except TrainingError as e:
        raise UserError(str(e)) from None
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return 0
    print(f"run: {result.run_dir}  steps: {result.steps}  tokens: {result.tokens:,}")
    if result.val_bits_per_base is not None:
        print(f"validation: loss {result.val_loss:.4f}  bits/base {result.val_bits_per_base:.4f}")
    return 0


@command(
    "eval",
    "Bits per base of a model on a FASTA file or a store split, beside an order-k Markov baseline.",
    arg("model", metavar="RUN_OR_MODEL", help="run directory, checkpoint directory or preset"),
    arg("--fasta", default=None, help="FASTA/GenBank file to score (every base once, in windows)"),
    arg("--store", default=None, help="prepared store to score (default: the run's own store)"),
    arg("--split", default="validation", help="store split(s) to score, comma-separated"),
    arg("--seq-len", type=positive_int, default=None, help="window length (default: the run's seq_len or the model max)"),
    arg("--batch-size", type=positive_int, default=8, help="windows per forward pass"),
    arg("--markov-order", type=int, default=10, help="highest Markov order to fit (0 disables the baseline)"),
    arg("--json", dest="json_out", default=None, output="file", help="also write the results to this JSON file"),
    *RUNTIME_ARGS,
)
def evaluate(args: argparse.Namespace) -> int:
    """Score held-out DNA with a model: loss, perplexity and bits per base, tiled so every base is
    scored once; the Markov baselines are fitted on the training split of the run's store."""
    report = evaluate_command(
        args.model, fasta=args.fasta, store=args.store, split=args.split, seq_len=args.seq_len,
        batch_size=args.batch_size, markov_order=args.markov_order, json_out=args.json_out,
    )
    print(report)
    return 0


@command(
    "info",
    "Parameters, FLOPs per token and memory estimate of a run, checkpoint or preset.",
    arg("model", metavar="RUN_OR_PRESET", nargs="?", default=None, help="run/checkpoint directory or preset name"),
    arg("--seq-len", type=positive_int, default=None, help="sequence length for FLOPs and memory (default: model max)"),
    arg("--batch-size", type=positive_int, default=1, help="batch size for the memory estimate"),
    arg("--list", action="store_true", help="list the presets"),
)
def info(args: argparse.Namespace) -> int:
    """Describe a model without training it (7B/40B presets are built on the meta device)."""
    print(info_report(args.model, seq_len=args.seq_len, batch_size=args.batch_size, list_presets=args.list))
    return 0


# ------------------------------------------------------------------------------------------ helpers


def run_config_of(path: str | Path) -> RunConfig | None:
    """The run config snapshot of a run directory (or of the run a checkpoint belongs to)."""
    p = Path(path)
    for cand in (p, p.parent, p.parent.parent):
        snap = cand / CONFIG_SNAPSHOT
        if snap.is_file():
            return run_config_from_dict(yaml.safe_load(snap.read_text()))
    return None


def _store_of(run: RunConfig | None, explicit: str | None):
    if explicit:
        return TokenStore.open(explicit)
    if run is None:
        return None
    path = run.data.store or str(Path(run.out_dir) / "store")
    return TokenStore.open(path) if Path(path).exists() else None


def evaluate_command(
    model_path: str,
    fasta: str | None = None,
    store: str | None = None,
    split: str = "validation",
    seq_len: int | None = None,
    batch_size: int = 8,
    markov_order: int = 10,
    json_out: str | None = None,
    progress: bool = True,
) -> str:
    """Score a FASTA file or a store split with a model, and the Markov baselines beside it."""

    run = run_config_of(model_path) if Path(model_path).exists() else None
    check_model_memory(model_path, "dnalm eval", seq_len or (run.data.seq_len if run else None), batch_size)
    model = load(model_path)
    seq_len = seq_len or (run.data.seq_len if run else min(model.config.max_len, 1024))
    if seq_len > model.config.max_len:
        raise ConfigError(f"--seq-len {seq_len} exceeds the model's maximum length {model.config.max_len}")
    train_store = _store_of(run, store)
    splits = [s.strip() for s in split.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="dnalm-eval-") as tmp:
        if fasta:
            prepare_store([fasta], Path(tmp) / "store", val_fraction=0.0, test_fraction=0.0, progress=False)
            eval_store = TokenStore.open(Path(tmp) / "store")
            eval_splits, target = ["train"], fasta
        elif train_store is not None:
            eval_store, eval_splits, target = train_store, splits, f"{split} split of {train_store.path}"
        else:
            raise CheckpointError(f"{model_path}: no store to evaluate on; pass --fasta or --store")
        lm = evaluate_lm(model, eval_store, eval_splits, seq_len, batch_size, progress=progress)
        result: dict[str, Any] = {"target": target, "seq_len": seq_len, **lm.to_dict()}
        if markov_order > 0 and train_store is not None:
            result["markov_bits_per_base"] = markov_report(train_store, eval_store, eval_splits, markov_order)
    if json_out:
        atomic_write_text(json_out, json.dumps(result, indent=2) + "\n")
    return format_eval(result)


def format_eval(result: dict[str, Any]) -> str:
    lines = [
        f"evaluated: {result['target']} ({result['bases']:,} bases, windows of {result['seq_len']}"
        + (f"; {result['skipped_n']:,} N bases not scored" if result.get("skipped_n") else "") + ")",
        f"  model            loss {result['loss']:.4f} nats   perplexity {result['perplexity']:.4f}   "
        f"bits/base {result['bits_per_base']:.4f}",
    ]
    markov = result.get("markov_bits_per_base")
    if markov:
        best = min(markov, key=markov.get)
        for k, bpb in markov.items():
            mark = "  <- best" if k == best else ""
            lines.append(f"  Markov order {int(k):2d}                                             bits/base {bpb:.4f}{mark}")
        delta = result["bits_per_base"] - markov[best]
        verdict = "beats" if delta < 0 else "does not beat"
        lines.append(f"  the model {verdict} the best Markov baseline by {abs(delta):.4f} bits/base")
    else:
        lines.append("  (no Markov baseline: no training split available; pass --store)")
    return "\n".join(lines)


def stored_weight_bytes(name: str | Path) -> int:
    """Bytes per parameter of a model's stored weights, read from its safetensors header (no tensors are
    loaded): 4 for a preset (fresh float32 weights), 2 when the format does not say (published checkpoints
    are bf16)."""
    p = Path(name)
    if not p.exists():
        return 4
    model_dir = p if (p / "model.safetensors").is_file() else latest_model_dir(p)
    if model_dir is None or not (model_dir / "model.safetensors").is_file():
        return 2
    from safetensors import safe_open

    try:
        with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
            for key in f.keys():
                t = f.get_slice(key)
                dtype = t.get_dtype()
                if dtype in ("F32", "F64"):
                    return 4 if dtype == "F32" else 8
                if dtype in ("BF16", "F16"):
                    return 2
    except Exception:  # an unreadable file is reported when the model is loaded
        return 2
    return 4


def check_lora_memory(
    model_path: str, lora: LoRAConfig, seq_len: int, batch: int, device: str = "cpu",
    max_memory_gib: float | None = None, lm_logits: bool = False, n_classes: int = 0,
) -> LoRAMemory:
    """Estimate LoRA training memory (dnalm.scaling.lora) for ``model_path`` before loading it, and raise a
    UserError when it exceeds ``max_memory_gib`` or what the device has free. Returns the estimate."""
    config, _ = model_config_of(model_path)
    seq_len = min(seq_len, config.max_len)
    wbytes = stored_weight_bytes(model_path)
    est = lora_memory(config, lora, seq_len, batch, wbytes, lm_logits=lm_logits,
                      trainable_extra=n_classes * (config.d_model + 1))  # fmt: skip
    max_memory = None if max_memory_gib is None else int(max_memory_gib * 2**30)
    if max_memory is None and str(device).startswith("cuda") and torch.cuda.is_available():
        limit, where = torch.cuda.mem_get_info(torch.device(device))[0], f"free on {device}"
    else:  # the limit every other memory check uses (--max-memory, DNALM_MAX_MEMORY, the system's)
        limit, where = memory_limit(max_memory)
    if limit is not None and est.total > limit:
        raise UserError(
            f"LoRA training of {model_path} needs about {est.describe()}, more than the {limit / 2**30:.1f} GiB "
            f"{where}; use a smaller --batch-size, shorter sequences, fewer --lora-targets, or more memory"
        )
    return est


def info_report(name: str | None, seq_len: int | None = None, batch_size: int = 1, list_presets: bool = False) -> str:
    """Parameters, FLOPs per token and memory of a model (built on the meta device: no allocation)."""
    if list_presets or name is None:
        return "presets:\n" + "\n".join(f"  {p}" for p in all_presets())
    config, what = model_config_of(name)
    model = meta_model(config)
    n_params = model.num_parameters()
    n_embed = model.embed.weight.numel()
    seq_len = seq_len or config.max_len
    lines = [
        f"{what}: family {config.family}, {getattr(config, 'n_layer', '?')} layers, d_model {config.d_model}, "
        f"max length {config.max_len:,}",
        f"  parameters        {n_params:,} ({n_params / 1e6:.2f}M; {n_params - n_embed:,} without the embedding)",
    ]
    lines += _flops_and_memory_lines(config, n_params, seq_len, batch_size)
    return "\n".join(lines)


def _flops_and_memory_lines(config: Any, n_params: int, seq_len: int, batch_size: int) -> list[str]:
    """FLOPs per token (analytic, docs/architectures.md §4 terms) and the planner's single-process memory model."""
    flops = flops_per_token(config, seq_len, batch_size)
    lines = [
        f"  FLOPs per token   forward {flops.forward:.4g} (matmul {flops.matmul:.4g}, FFT {flops.fft:.4g}), "
        f"training {flops.training:.4g}  [6N = {flops.six_n:.4g}] at seq_len {seq_len:,}",
        f"  inference weights {4 * n_params / 2**30:.3f} GiB (fp32)",
    ]
    shape = shape_from_config(config)
    for ckpt in (False, True):
        mem = memory_per_gpu(shape, seq_len, "DDP", activation_checkpointing=ckpt, micro_batch=batch_size)
        what = "with" if ckpt else "without"
        lines.append(
            f"  training memory   {mem.total / 2**30:.2f} GiB {what} activation checkpointing (batch {batch_size}, "
            f"seq_len {seq_len:,}, bf16 activations + fp32 AdamW state; see `dnalm plan`)"
        )
    return lines


def run_demo(out_dir: str = "runs/demo", minutes: float | None = None, steps: int | None = None,
             restart: bool = False, precision: str | None = None, threads: int | None = None) -> dict:
    """Train the demo model, then score the held-out 10% (validation + test) with it and with
    order-0..10 Markov chains fitted on the training 90%. Prints and writes RUN/eval.json, and a verdict:
    the promised result (at least DEMO_MARGIN bits/base under the best Markov chain), or plainly why not."""
    config = demo_config(out_dir)
    if minutes is not None:
        config.train.max_time_minutes = minutes
    if steps is not None:
        config.train.steps = steps
        config.train.warmup_steps = max(1, min(config.train.warmup_steps, steps // 10))
    if precision is not None and precision != "auto":
        config.train.precision = precision
    if threads is not None:
        config.train.threads = threads
    t0, c0 = time.time(), time.process_time()
    result = train(config, resume=not restart)
    store = prepare_data(config, progress=False)

    model = load(result.run_dir)
    held_out = ["validation", "test"]
    print("scoring the held-out 10% of the genome ...", flush=True)
    lm = evaluate_lm(model, store, held_out, config.data.seq_len, batch_size=64, progress=True)
    report = {
        "target": "E. coli K-12 MG1655, last 10% of the genome (validation + test)",
        "seq_len": config.data.seq_len,
        **lm.to_dict(),
        "markov_bits_per_base": markov_report(store, store, held_out, max_order=10),
        "train_steps": result.steps,
        "planned_steps": config.train.steps,
        "stopped_by_time_guard": bool(result.stopped_early),
        "train_tokens": result.tokens,
        "wall_time_s": time.time() - t0,
        "cpu_time_s": time.process_time() - c0,
    }
    atomic_write_text(Path(out_dir) / "eval.json", json.dumps(report, indent=2) + "\n")
    print(format_eval(report))
    print(demo_verdict(report, config.train.max_time_minutes))
    print(f"run directory: {out_dir} (config.yaml, metrics.jsonl, loss.png, checkpoints/, model/, eval.json)")
    return report


def demo_verdict(report: dict, guard_minutes: float | None) -> str:
    """The demo's last word: the promised result, or what fell short and what to do."""
    markov = report["markov_bits_per_base"]
    best = min(markov, key=markov.get)
    margin = markov[best] - report["bits_per_base"]
    minutes = report["wall_time_s"] / 60
    figures = (f"{report['bits_per_base']:.4f} bits/base against {markov[best]:.4f} for the best Markov chain "
               f"(order {int(best)}), {margin:+.4f} in the model's favour, in {minutes:.1f} min")
    if margin >= DEMO_MARGIN and not report["stopped_by_time_guard"]:
        return f"demo result: {figures}: the model beats the best Markov chain by more than {DEMO_MARGIN} bits/base, as promised."
    lines = []
    if report["stopped_by_time_guard"]:
        lines.append(
            f"NOTE: the time guard ({guard_minutes:g} min) stopped training at step {report['train_steps']:,} of "
            f"{report['planned_steps']:,}: this machine trained more slowly than the demo is sized for (busy, or "
            f"slow). Run `dnalm demo` again to continue the same run from there, or `dnalm demo --minutes 30`.")
    if margin >= DEMO_MARGIN:
        lines.append(f"result so far: {figures}; already more than {DEMO_MARGIN} bits/base under the best Markov chain.")
    else:
        lines.append(f"NOT the promised result: {figures}; the demo promises at least {DEMO_MARGIN} bits/base under "
                     "the best Markov chain" + (", which needs the full training run." if report["stopped_by_time_guard"]
                                                  else ". Please report this with eval.json and metrics.jsonl."))
    return "\n".join(lines)
