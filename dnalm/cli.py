"""The ``dnalm`` command line: one subcommand = one function.

Each subcommand is a function decorated with ``@command(...)`` that lists its arguments next to it.
User mistakes raise :class:`UserError` (or a known ValueError subclass) and become one clear message on
stderr with exit code 2; an interrupt exits with 130. Nothing here holds model or training logic.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, Callable


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


@dataclass
class _Arg:
    flags: tuple[str, ...]
    kwargs: dict[str, Any]


def arg(*flags: str, **kwargs: Any) -> _Arg:
    return _Arg(flags, kwargs)


_COMMANDS: list[tuple[str, Callable[[argparse.Namespace], int | None], str, str, list[_Arg]]] = []


def command(name: str, help: str, *args: _Arg, description: str | None = None):
    """Register the decorated function as subcommand ``name``."""

    def wrap(fn: Callable[[argparse.Namespace], int | None]):
        _COMMANDS.append((name, fn, help, description or fn.__doc__ or help, list(args)))
        return fn

    return wrap


# ------------------------------------------------------------------------------------------ commands
# (subcommands are defined below, each a single function)


@command(
    "prepare",
    "Turn FASTA/GenBank genomes (and GFF3/GTF annotation) into a memory-mapped token store.",
    arg("inputs", nargs="*", metavar="INPUT",
        help="FASTA (.fa/.fasta/.fna; plain, gzip or bgzip) or GenBank (.gb/.gbk/.gbff) files; "
        "with none, the embedded E. coli K-12 MG1655 genome and its GFF3", default=argparse.SUPPRESS),
    arg("--out", required=True, metavar="DIR", default=argparse.SUPPRESS,
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
    from dnalm.data.store import default_genome, prepare as prepare_store

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
    "Prepare the embedded E. coli genome, train a small HyenaDNA on CPU, compare with Markov baselines.",
    arg("--out", default="runs/demo", help="run directory to write"),
    arg("--minutes", type=float, default=None,
        help="stop training after this many minutes; None keeps the demo's 12-minute guard"),
    arg("--steps", type=int, default=None, help="override the number of training steps"),
    arg("--restart", action="store_true", help="start over instead of resuming an existing demo run"),
)
def demo(args: argparse.Namespace) -> int:
    """The README's first command: prepare E. coli K-12 MG1655 (last 10% of the genome held out), train
    a small HyenaDNA for a few minutes, then report held-out bits/base beside order-k Markov baselines
    fitted on the training split. Writes the run directory (config, metrics, loss.png, checkpoints)."""
    from dnalm.train.demo import run_demo

    run_demo(args.out, minutes=args.minutes, steps=args.steps, restart=args.restart)
    return 0


@command(
    "train",
    "Train (or resume) a model from a YAML run config.",
    arg("--config", required=True, help="YAML run config (see configs/); sections model/data/train"),
    arg("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.lr=3e-4 (repeatable)"),
    arg("--out", default=None, help="run directory (overrides out_dir in the config)"),
    arg("--restart", action="store_true", help="ignore existing checkpoints in the run directory and start over"),
    arg("--init-from", default=None,
        help="start from another run's or checkpoint's weights (staged context extension); fresh LR schedule"),
)
def train_cmd(args: argparse.Namespace) -> int:
    """Train a DNA language model. Resumes automatically from the newest checkpoint in the run
    directory; a run killed at any point continues the same trajectory. On several processes:
    torchrun --nproc-per-node N -m dnalm train --config run.yaml --set train.parallel=ddp (or fsdp)."""
    import os

    from dnalm.train.config import load_run_config
    from dnalm.train.trainer import TrainingError, train as run_train

    config = load_run_config(args.config, args.overrides)
    if args.out:
        config.out_dir = args.out
    try:
        result = run_train(config, resume=not args.restart, init_from=args.init_from)
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
    arg("--seq-len", type=int, default=None, help="window length (default: the run's seq_len or the model max)"),
    arg("--batch-size", type=int, default=8, help="windows per forward pass"),
    arg("--markov-order", type=int, default=10, help="highest Markov order to fit (0 disables the baseline)"),
    arg("--json", dest="json_out", default=None, help="also write the results to this JSON file"),
)
def evaluate(args: argparse.Namespace) -> int:
    """Score held-out DNA with a model: loss, perplexity and bits per base, tiled so every base is
    scored once; the Markov baselines are fitted on the training split of the run's store."""
    from dnalm.eval.report import evaluate_command

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
    arg("--seq-len", type=int, default=None, help="sequence length for FLOPs and memory (default: model max)"),
    arg("--batch-size", type=int, default=1, help="batch size for the memory estimate"),
    arg("--list", action="store_true", help="list the presets"),
)
def info(args: argparse.Namespace) -> int:
    """Describe a model without training it (7B/40B presets are built on the meta device)."""
    from dnalm.eval.report import info_report

    print(info_report(args.model, seq_len=args.seq_len, batch_size=args.batch_size, list_presets=args.list))
    return 0


@command(
    "generate",
    "Sample DNA after a prompt with constant-memory recurrent decoding and write FASTA.",
    arg("model", metavar="MODEL", help="preset name, checkpoint directory or run directory (anything dnalm.load accepts)"),
    arg("--prompt", action="append", default=[], metavar="SEQ",
        help="prompt bases (repeatable); '' starts from [BOS] alone"),
    arg("--prompt-file", default=None, metavar="FASTA", help="FASTA or GenBank file whose records are the prompts"),
    arg("--n-tokens", type=int, default=100, help="bases to generate per sample"),
    arg("--num-samples", type=int, default=1, help="continuations per prompt"),
    arg("--temperature", type=float, default=1.0, help="softmax temperature; 0 means greedy"),
    arg("--top-k", type=int, default=None, help="sample among the k most likely bases only"),
    arg("--top-p", type=float, default=None, help="nucleus sampling: the smallest set of bases with this probability"),
    arg("--seed", type=int, default=0, help="random seed: same seed, model and arguments give the same output"),
    arg("--alphabet", default="ACGT", help="letters that may be generated"),
    arg("--include-prompt", action="store_true", help="write prompt + continuation, not the continuation alone"),
    arg("--recompute", action="store_true", help="recompute the whole prefix for every token (slow; for checking)"),
    arg("--device", default="cpu", help="torch device, e.g. cpu or cuda"),
    arg("-o", "--out", default="-", help="FASTA file to write (atomically); '-' writes to stdout"),
    arg("--quiet", action="store_true", help="no progress bar"),
)
def generate_cmd(args: argparse.Namespace) -> int:
    """Sample continuations of each prompt and write them as FASTA records named
    <prompt>_<sample>, with the sampling settings in the description. The prompt is read once (prefill)
    and each new base costs one recurrent step whose memory does not grow with the length (Hyena
    layers keep FIR and modal states; attention layers a KV cache)."""
    import time

    import torch

    import dnalm
    from dnalm.checkpoint import atomic_write_text
    from dnalm.generation import GenerationError
    from dnalm.tokenizer import decode

    prompts = [(f"prompt{i}", p) for i, p in enumerate(args.prompt)]
    if args.prompt_file:
        from dnalm.data.fasta import read_sequences

        prompts += [(r.name, decode(r.ids, r.lower)) for r in read_sequences(args.prompt_file)]
    if not prompts:
        raise UserError("give at least one --prompt SEQ or a --prompt-file FASTA")
    torch.manual_seed(args.seed)  # a preset is built with fresh weights: make those reproducible too
    model = dnalm.load(args.model, device=args.device)
    start = time.perf_counter()
    try:
        seqs = model.generate(
            [p for _, p in prompts], args.n_tokens, args.temperature, args.top_k, args.top_p, args.seed,
            num_samples=args.num_samples, alphabet=args.alphabet, use_cache=not args.recompute,
            progress=not args.quiet,
        )  # fmt: skip
    except GenerationError as e:
        raise UserError(str(e)) from None
    seconds = time.perf_counter() - start
    if isinstance(seqs, str):
        seqs = [seqs]
    lines = []
    for i, (name, prompt) in enumerate(prompts):
        for j in range(args.num_samples):
            seq = seqs[i * args.num_samples + j]
            seq = prompt + seq if args.include_prompt else seq
            lines.append(
                f">{name}_{j} model={args.model} n_tokens={args.n_tokens} temperature={args.temperature} "
                f"top_k={args.top_k} top_p={args.top_p} seed={args.seed} prompt_len={len(prompt)}"
            )
            lines += [seq[k : k + 80] for k in range(0, len(seq), 80)] or [""]
    text = "\n".join(lines) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
    else:
        atomic_write_text(args.out, text)
    n = len(seqs) * args.n_tokens
    print(f"generated {len(seqs)} sequence(s), {n:,} bases in {seconds:.1f} s"
          + ("" if args.out == "-" else f" -> {args.out}"), file=sys.stderr)  # fmt: skip
    return 0


@command(
    "convert",
    "Convert a downloaded HyenaDNA Hugging Face folder (LongSafari/hyenadna-*-hf) into a native dnalm checkpoint.",
    arg("src", metavar="SRC", help="HyenaDNA -hf folder: config.json + pytorch_model.bin or model.safetensors"),
    arg("--out", required=True, metavar="DST", help="checkpoint directory to write (config.json + model.safetensors)"),
    arg("--lowercase", choices=["unk", "upper"], default="unk",
        help="lower-case bases: 'unk' maps them to [UNK] as the checkpoint's tokenizer does; 'upper' reads them as bases"),
    arg("--no-sep", action="store_true", help="do not append [SEP] to each sequence (the checkpoint's tokenizer does)"),
    arg("--force", action="store_true", help="replace DST if it exists"),
    arg("--no-verify", action="store_true", help="skip reloading DST and comparing its outputs with the import"),
)
def convert_cmd(args: argparse.Namespace) -> int:
    """Read a HyenaDNA Hugging Face checkpoint (causal LM or sequence classification) without transformers
    and without executing pickle code, and write it as config.json + model.safetensors, atomically. The
    tokenizer settings travel with it; by default they reproduce the checkpoint's token ids exactly."""
    from pathlib import Path

    from dnalm.hf import convert, is_hf_folder

    src, dst = Path(args.src), Path(args.out)
    if not src.is_dir():
        raise UserError(f"{src}: no such directory")
    if not is_hf_folder(src):
        raise UserError(f"{src}: not a HyenaDNA -hf folder (its config.json needs model_type 'hyenadna')")
    if dst.exists() and not args.force:
        raise UserError(f"{dst} exists; choose another --out or pass --force to replace it")
    model, diff = convert(src, dst, lowercase=args.lowercase, append_sep=not args.no_sep, verify=not args.no_verify)
    c = model.config
    kind = type(model).__name__
    print(f"wrote {dst}: {kind}, {sum(p.numel() for p in model.parameters()):,} parameters, n_layer {c.n_layer}, "
          f"d_model {c.d_model}, max length {c.max_len}; tokenizer {model.tokenizer.to_dict()}")
    if diff is not None:
        print(f"verified: reloaded outputs differ from the import by {diff:.3g} (max abs) on a 64-base probe")
    return 0


# --- scaling: compute planner, scaling-law fits, sweeps (dnalm/scaling/) ---


@command(
    "plan",
    "Training FLOPs, GPU time, memory per GPU (DDP / ZeRO / FSDP, activation checkpointing) and a layout.",
    arg("--params", type=float, default=None, help="parameters N, e.g. 7e9 (a Transformer++ shape is assumed)"),
    arg("--tokens", type=float, default=None, help="training tokens D, e.g. 300e9"),
    arg("--context", type=int, default=None, help="sequence length (default: the preset's, else 8192)"),
    arg("--gpus", default="8xH100", help="COUNTxGPU; GPUs: A100-40GB, A100-80GB, H100, H100-PCIe, H200"),
    arg("--mfu", type=float, default=0.35, help="model FLOPs utilisation for the time estimate"),
    arg("--preset", default=None, help="plan a named config (e.g. evo-1-131k, evo2-40b) instead of --params"),
    arg("--n-layer", type=int, default=None, help="layers of the --params model (default: inferred from N)"),
    arg("--d-model", type=int, default=None, help="width of the --params model (default: inferred from N)"),
    arg("--vocab", type=int, default=16, help="vocabulary size of the --params model"),
    arg("--micro-batch", type=int, default=1, help="sequences per GPU per forward pass"),
    arg("--usable", type=float, default=0.95, help="fraction of GPU memory a plan may use"),
    arg("--law", default=None, help="fit.json from 'dnalm scaling fit': recommend N and D for --flops"),
    arg("--family", default=None, help="which family of --law to use (when it holds several)"),
    arg("--flops", type=float, default=None, help="compute budget C in FLOPs, with --law"),
    arg("--json", dest="json_out", default=None, help="also write the plan to this JSON file"),
)
def plan_cmd(args: argparse.Namespace) -> int:
    """Plan a large training run before launching it: total training FLOPs (6ND and the per-layer count),
    GPU-days and wall-clock at an MFU, memory per GPU for each parallel strategy, and what fits."""
    import json

    from dnalm.checkpoint import atomic_write_text
    from dnalm.scaling.plan import format_plan, plan_command

    try:
        plan = plan_command(
            params=args.params, tokens=args.tokens, context=args.context, gpus=args.gpus, mfu=args.mfu,
            preset=args.preset, n_layer=args.n_layer, d_model=args.d_model, vocab_size=args.vocab,
            micro_batch=args.micro_batch, usable=args.usable, law=args.law, family=args.family, compute=args.flops,
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    print(format_plan(plan))
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(plan.to_dict(), indent=2) + "\n")
    return 0


@command(
    "scaling",
    "Fit scaling laws to a sweep's results: L(N, D) = E + A/N^alpha + B/D^beta and IsoFLOP parabolas.",
    arg("action", choices=["fit"], help="what to do (fit)"),
    arg("results", metavar="RESULTS", help="results CSV written by 'dnalm sweep' (params, tokens, val_loss, ...)"),
    arg("--out", default=None, help="output directory for fit.json and plots (default: RESULTS' folder/scaling_fit)"),
    arg("--bootstrap", type=int, default=200, help="bootstrap resamples for the intervals"),
    arg("--seed", type=int, default=0, help="bootstrap seed"),
    arg("--loss-column", default="val_loss", help="column holding the held-out loss"),
    arg("--no-plot", action="store_true", help="skip the PNG plots"),
)
def scaling_cmd(args: argparse.Namespace) -> int:
    """Robust parametric fit (Huber loss in log space, several starts, bootstrap intervals) and the
    IsoFLOP method per family; compute-optimal N*(C), D*(C), tokens per parameter; loss-vs-compute plot
    with the frontier; a FLOP-matched comparison when the results hold several families."""
    from dnalm.scaling.fit import fit_results, format_summary

    try:
        summary = fit_results(
            args.results, args.out, n_boot=args.bootstrap, seed=args.seed, loss_column=args.loss_column,
            plot=not args.no_plot, progress=True,
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    print(format_summary(summary))
    return 0


@command(
    "sweep",
    "Train a grid of model sizes x compute budgets (x families), resumable; results in one CSV.",
    arg("--grid", required=True, help="grid YAML (see configs/sweep_ecoli.yaml)"),
    arg("--out", default=None, help="output directory (overrides out_dir in the grid)"),
    arg("--dry-run", action="store_true", help="list the points (parameters, tokens, steps, FLOPs) and stop"),
)
def sweep_cmd(args: argparse.Namespace) -> int:
    """Train every point of a scaling grid at matched training FLOPs (or tokens). Finished points are
    never rerun and an interrupted point resumes from its checkpoint, so rerunning the command continues
    the sweep. Then fit the results with 'dnalm scaling fit OUT/results.csv'."""
    from dnalm.scaling.sweep import run_sweep

    results = run_sweep(args.grid, args.out, dry_run=args.dry_run)
    if not args.dry_run:
        print(f"results: {results}\nnext: dnalm scaling fit {results}")
    return 0


@command(
    "boundaries",
    "dnaHNet: where the learned chunk boundaries fall (codon positions in CDS, CDS / upstream / intergenic).",
    arg("model", metavar="MODEL", help="dnaHNet run directory, checkpoint directory or preset"),
    arg("--fasta", required=True, help="genome FASTA (or GenBank)"),
    arg("--gff", required=True, help="GFF3/GTF annotation; seqids must match the FASTA record names"),
    arg("-o", "--out", default="boundaries", help="output directory for boundaries.tsv, gene_profile.tsv and PNGs"),
    arg("--window", type=int, default=None, help="bases per window (default: the model's max length - 1, at most 4096)"),
    arg("--context", type=int, default=None, help="bases of overlap between windows, run but not counted (default: window/4)"),
    arg("--upstream", type=int, default=100, help="bases 5' of a gene start that count as 'upstream'"),
    arg("--max-bases", type=int, default=200_000, help="analyse only the first N bases of each record (0 = all)"),
    arg("--forward-only", action="store_true", help="skip the reverse-complement reading (minus-strand CDS then drop out of the codon table)"),
    arg("--zero-based-gff", action="store_true", help="the GFF's start column is 0-based (e.g. the phiX174 file)"),
    arg("--batch-size", type=int, default=8, help="windows per forward pass"),
    arg("--device", default="cpu", help="torch device"),
    arg("--quiet", action="store_true", help="no progress bar"),
)
def boundaries_cmd(args: argparse.Namespace) -> int:
    """Run a dnaHNet model over annotated sequence and report, per stage, the boundary rate by codon
    position (1/2/3) inside CDS read on the coding strand, and by region type (CDS, upstream of a gene,
    intergenic, non-coding gene). Writes a TSV table, the boundary-rate profile around CDS starts, and
    plots (codon-position bars, rate along genes)."""
    from dnalm.eval.boundaries import boundaries_command

    print(boundaries_command(
        args.model, args.fasta, args.gff, out=args.out, window=args.window, context=args.context,
        upstream=args.upstream, max_bases=args.max_bases or None, reverse=not args.forward_only,
        batch_size=args.batch_size, zero_based_gff=args.zero_based_gff, device=args.device, progress=not args.quiet,
    ))  # fmt: skip
    return 0


# --- applications: variant effects, essentiality, DMS, embeddings, fine-tuning (dnalm/eval/) ---


@command(
    "score-variants",
    "Zero-shot variant effects: delta log-likelihood (alt - ref) of a window centred on each variant.",
    arg("model", metavar="MODEL", help="run directory, checkpoint directory or preset"),
    arg("--fasta", required=True, help="reference FASTA; a record named chrom:start-end is placed on chrom at start"),
    arg("--variants", required=True, help="VCF, or TSV/CSV with chromosome/position/ref/alt columns (1-based)"),
    arg("--window", type=int, default=None, help="bases per window (default: 8192, or the model's context if shorter)"),
    arg("--rc-average", action="store_true", help="also score reverse complements and average the strand deltas"),
    arg("--fasta-offset", type=int, default=None, help="1-based chromosome position of the first base of each record"),
    arg("--pos-column", default=None, help="position column of a table (default: pos, position, pos_hg38 or start)"),
    arg("--indels", action="store_true", help="also score simple indels (same-length windows)"),
    arg("--label-column", default=None, help="column with class labels: report AUROC of -delta and plot the ROC"),
    arg("--positive", action="append", default=None, help="label value(s) of the positive class, e.g. LOF (repeatable)"),
    arg("--baseline-column", action="append", default=[], help="numeric column to report as a baseline AUROC"),
    arg("-o", "--out", default=None, help="output TSV (default: <variants>.scores.tsv in the current directory)"),
    arg("--plot", default=None, help="ROC plot PNG (default: next to the TSV)"),
    arg("--batch-size", type=int, default=8, help="windows per forward pass"),
    arg("--device", default="cpu", help="torch device"),
    arg("--quiet", action="store_true", help="no progress bar"),
)
def score_variants_cmd(args: argparse.Namespace) -> int:
    """Score SNVs (and optionally indels) by the change in log-likelihood of a window centred on each,
    ref and alt windows of the same length, each distinct window scored once. Writes a TSV (atomically)
    with delta_sum and delta_mean per variant and the window used."""
    from dnalm.eval.variants import score_variants_command

    print(score_variants_command(
        args.model, args.fasta, args.variants, out=args.out, window=args.window, rc_average=args.rc_average,
        fasta_offset=args.fasta_offset, pos_column=args.pos_column, indels=args.indels,
        label_column=args.label_column, positive=args.positive, baseline_columns=args.baseline_column,
        plot=args.plot, batch_size=args.batch_size, device=args.device, progress=not args.quiet,
    ))  # fmt: skip
    return 0


@command(
    "essentiality",
    "Zero-shot gene essentiality: likelihood change after inserting stop codons early in each gene.",
    arg("model", metavar="MODEL", help="run directory, checkpoint directory or preset"),
    arg("--fasta", required=True, help="genome FASTA"),
    arg("--gff", required=True, help="GFF3/GTF annotation (CDS features define the genes)"),
    arg("--labels", default=None, help="TSV with locus_tag and 0/1 essentiality columns: report AUROC + plot"),
    arg("--label-column", action="append", default=None, help="label column(s) (default: all essential* columns)"),
    arg("--window", type=int, default=None, help="bases per window (default: 8192, or the model's context if shorter)"),
    arg("--cassette", default="TAATAATAATAGTGA", help="sequence inserted in frame (default: 5 stop codons, 15 bp)"),
    arg("--insert-offset", type=int, default=12, help="bases after the first base of the start codon"),
    arg("--zero-based-gff", action="store_true", help="the GFF's start column is 0-based (e.g. the phiX174 file)"),
    arg("--max-genes", type=int, default=None, help="score only the first N genes (for a quick look)"),
    arg("-o", "--out", default=None, help="per-gene TSV (default: essentiality.tsv)"),
    arg("--plot", default=None, help="ROC plot PNG (default: next to the TSV)"),
    arg("--batch-size", type=int, default=8, help="windows per forward pass"),
    arg("--device", default="cpu", help="torch device"),
    arg("--quiet", action="store_true", help="no progress bar"),
)
def essentiality_cmd(args: argparse.Namespace) -> int:
    """Evo's zero-shot essentiality protocol: for each protein-coding gene insert a stop cassette in
    frame near the start codon, score the change in log-likelihood of a window around the gene (read in
    the gene's orientation), and with labels report AUROC beside a gene-length baseline."""
    from dnalm.eval.essentiality import essentiality_command

    print(essentiality_command(
        args.model, args.fasta, args.gff, labels=args.labels, label_columns=args.label_column, out=args.out,
        plot=args.plot, window=args.window, cassette=args.cassette, insert_offset=args.insert_offset,
        zero_based_gff=args.zero_based_gff, max_genes=args.max_genes, batch_size=args.batch_size,
        device=args.device, progress=not args.quiet,
    ))  # fmt: skip
    return 0


@command(
    "dms",
    "Zero-shot protein fitness from DNA: score protein mutants via their closest codon change.",
    arg("model", metavar="MODEL", help="run directory, checkpoint directory or preset"),
    arg("--cds", required=True, help="FASTA with the wild-type coding sequence"),
    arg("--variants", required=True, help="mutant table (';', tab or ',' separated; '#' comments), e.g. G21A"),
    arg("--ties", choices=["first", "mean"], default="first",
        help="equally close codons: first in A<C<G<T order, or the mean delta over all of them"),
    arg("--record", default=None, help="CDS record name (default: the first record)"),
    arg("--variant-column", default=None, help="mutant column (default: variant/mutant/mutation)"),
    arg("--fitness-column", default=None, help="measured fitness column (default: y/fitness/score/DMS_score)"),
    arg("--baseline-column", action="append", default=None,
        help="baseline score column(s) (default: every other numeric column, e.g. dE)"),
    arg("-o", "--out", default=None, help="output TSV (default: <variants>.dms.tsv)"),
    arg("--batch-size", type=int, default=8, help="windows per forward pass"),
    arg("--device", default="cpu", help="torch device"),
    arg("--quiet", action="store_true", help="no progress bar"),
)
def dms_cmd(args: argparse.Namespace) -> int:
    """Map each protein mutant to the codon with the fewest nucleotide changes, score the delta
    log-likelihood of the gene, and report Spearman with measured fitness beside BLOSUM62 and any
    baseline columns."""
    from dnalm.eval.dms import dms_command

    print(dms_command(
        args.model, args.cds, args.variants, out=args.out, ties=args.ties, record=args.record,
        variant_column=args.variant_column, fitness_column=args.fitness_column,
        baseline_columns=args.baseline_column, batch_size=args.batch_size, device=args.device,
        progress=not args.quiet,
    ))  # fmt: skip
    return 0


@command(
    "embed",
    "Sequence embeddings from a model's hidden states -> .npy + .json metadata.",
    arg("model", metavar="MODEL", help="run directory, checkpoint directory or preset"),
    arg("--fasta", default=None, help="FASTA/GenBank file of sequences"),
    arg("--csv", dest="csv_path", default=None, help="CSV/TSV with a sequence column"),
    arg("--column", default=None, help="sequence column of the CSV (default: sequence/seq/seqs)"),
    arg("--layer", type=int, default=-1, help="hidden state: 0 = embeddings, i = after block i, -1 = final norm"),
    arg("--pool", choices=["mean", "last", "none"], default="mean", help="pooling over the bases"),
    arg("-o", "--out", default=None, help="output .npy (default: <input>.emb.npy; metadata next to it)"),
    arg("--batch-size", type=int, default=8, help="windows per forward pass"),
    arg("--device", default="cpu", help="torch device"),
    arg("--quiet", action="store_true", help="no progress bar"),
)
def embed_cmd(args: argparse.Namespace) -> int:
    """Embed sequences; those longer than the model's context are embedded in consecutive windows
    (stated in the metadata)."""
    from dnalm.eval.embed import embed_command

    print(embed_command(
        args.model, fasta=args.fasta, csv_path=args.csv_path, column=args.column, out=args.out,
        layer=args.layer, pool=args.pool, batch_size=args.batch_size, device=args.device, progress=not args.quiet,
    ))  # fmt: skip
    return 0


@command(
    "finetune",
    "Train a classifier on a model (linear probe, full fine-tuning or soft prompt) beside a k-mer baseline.",
    arg("model", metavar="MODEL", help="run directory, checkpoint directory or preset"),
    arg("--train", required=True, help="CSV/TSV with sequence and label columns"),
    arg("--dev", default=None, help="dev set (omit --dev and --test to split --train 80/10/10, seeded)"),
    arg("--test", default=None, help="test set"),
    arg("--seq-column", default=None, help="sequence column (default: sequence/seq/seqs)"),
    arg("--label-column", default=None, help="label column (default: label/labels/class/y)"),
    arg("--mode", choices=["probe", "full"], default="probe", help="frozen backbone + linear head, or train all"),
    arg("--soft-prompt", type=int, default=0, metavar="N", help="learn N prompt embeddings for the frozen model"),
    arg("--pool", choices=["mean", "last"], default="mean", help="pooling of the hidden states over the bases"),
    arg("--layer", type=int, default=-1, help="hidden state to pool (-1 = after the final norm)"),
    arg("--epochs", type=int, default=3, help="epochs (full fine-tuning and soft prompts)"),
    arg("--lr", type=float, default=None, help="learning rate (default: 1e-2 probe/prompt, 3e-4 full)"),
    arg("--batch-size", type=int, default=32, help="sequences per step"),
    arg("--probe-steps", type=int, default=500, help="full-batch steps of the linear probe"),
    arg("--max-train", type=int, default=None, help="use a random subset of this many training sequences"),
    arg("--seed", type=int, default=0, help="seed of the head/prompt init and the data order"),
    arg("--split-seed", type=int, default=0, help="seed of the 80/10/10 split when no --dev/--test is given"),
    arg("-o", "--out", default="finetuned", help="output directory (classifier, report.json, split.json)"),
    arg("--device", default="cpu", help="torch device"),
    arg("--quiet", action="store_true", help="no progress bar"),
)
def finetune_cmd(args: argparse.Namespace) -> int:
    """Add a classification head on pooled hidden states and train it (class-weighted loss, best dev
    checkpoint kept). Reports test accuracy, MCC and AUROC beside a k-mer logistic regression trained in
    the same run, and saves the classifier for `dnalm predict`."""
    from dnalm.eval.finetune import finetune_command

    print(finetune_command(
        args.model, train=args.train, dev=args.dev, test=args.test, out=args.out, seq_column=args.seq_column,
        label_column=args.label_column, mode=args.mode, soft_prompt=args.soft_prompt, pool=args.pool,
        layer=args.layer, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        probe_steps=args.probe_steps, seed=args.seed, split_seed=args.split_seed, max_train=args.max_train,
        device=args.device, progress=not args.quiet,
    ))  # fmt: skip
    return 0


@command(
    "predict",
    "Classify new sequences with a model made by `dnalm finetune` -> TSV of class probabilities.",
    arg("classifier", metavar="CLASSIFIER", help="output directory of dnalm finetune"),
    arg("--fasta", default=None, help="FASTA/GenBank file of sequences"),
    arg("--csv", dest="csv_path", default=None, help="CSV/TSV with a sequence column"),
    arg("--column", default=None, help="sequence column of the CSV (default: sequence/seq/seqs)"),
    arg("-o", "--out", default=None, help="output TSV (default: <input>.predictions.tsv)"),
    arg("--batch-size", type=int, default=32, help="sequences per forward pass"),
    arg("--device", default="cpu", help="torch device"),
    arg("--quiet", action="store_true", help="no progress bar"),
)
def predict_cmd(args: argparse.Namespace) -> int:
    """Apply a fine-tuned classifier: one row per sequence with the predicted class and the probability
    of each class."""
    from dnalm.eval.finetune import predict_command

    print(predict_command(
        args.classifier, fasta=args.fasta, csv_path=args.csv_path, column=args.column, out=args.out,
        batch_size=args.batch_size, device=args.device, progress=not args.quiet,
    ))  # fmt: skip
    return 0


# --- long sequences and distributed checkpoints (dnalm/eval/longcontext.py, dnalm/train/checkpoint.py) ---


@command(
    "score",
    "Log-likelihood of each record of a FASTA file; long records (up to 1M bases) in one pass, not windows.",
    arg("model", metavar="MODEL", help="run directory, checkpoint directory or preset"),
    arg("--fasta", required=True, help="FASTA/GenBank file (plain or gzip); every record is scored whole"),
    arg("--reduce", choices=["sum", "mean"], default="sum", help="sum or per-base mean of the log-likelihood"),
    arg("-o", "--out", default=None, help="output TSV, written atomically; without it the table is printed"),
    arg("--long-from", type=int, default=32768,
        help="records of this many tokens or more go through the one-pass long-context path"),
    arg("--max-memory", type=float, default=None, metavar="GIB",
        help="GiB the one-pass path may use; unset = what the system reports as available"),
    arg("--batch-size", type=int, default=8, help="short records per forward pass"),
    arg("--device", default="cpu", help="torch device"),
    arg("--quiet", action="store_true", help="no progress bar"),
)
def score_cmd(args: argparse.Namespace) -> int:
    """Score whole records: natural-log likelihood of every base (the first one too when the tokenizer
    prepends [BOS]), as a sum or a per-base mean, plus bits per base. A HyenaDNA record of --long-from
    tokens or more runs in one memory-lean pass (1,000,000 bases with hyenadna-large-1m fit in about
    5 GiB); if the estimate exceeds the available memory it stops before allocating. Records longer
    than the model's context are an error (use dnalm eval for windows)."""
    from dnalm.eval.longcontext import score_command

    print(score_command(
        args.model, args.fasta, reduce=args.reduce, out=args.out, long_from=args.long_from,
        batch_size=args.batch_size, device=args.device, max_memory_gib=args.max_memory, progress=not args.quiet,
    ))  # fmt: skip
    return 0


@command(
    "export",
    "Make config.json + model.safetensors from a (sharded) training checkpoint or a run directory.",
    arg("src", metavar="CHECKPOINT_OR_RUN", help="checkpoint directory (sharded or not) or run directory (newest checkpoint)"),
    arg("--out", required=True, metavar="DIR", help="model directory to write (atomically)"),
    arg("--force", action="store_true", help="replace DIR if it exists"),
)
def export_cmd(args: argparse.Namespace) -> int:
    """Runs in one process: the shards written by any number of ranks (torch.distributed.checkpoint) are
    read whole and saved as a single model.safetensors that dnalm.load, eval, score and the other
    commands open."""
    from pathlib import Path

    from dnalm.train.checkpoint import export_checkpoint

    if Path(args.out).exists() and not args.force:
        raise UserError(f"{args.out} exists; choose another --out or pass --force to replace it")
    src, out = export_checkpoint(args.src, args.out)
    print(f"exported {src} -> {out}/model.safetensors")
    return 0


# ------------------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dnalm",
        description="Build DNA language models from scratch and put them to work.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from dnalm import __version__

    parser.add_argument("--version", action="version", version=f"dnalm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, fn, help_, description, args in _COMMANDS:
        p = sub.add_parser(
            name, help=help_, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
        for a in args:
            p.add_argument(*a.flags, **a.kwargs)
        p.set_defaults(_fn=fn)
    return parser


def _user_error_types() -> tuple[type[BaseException], ...]:
    from dnalm.checkpoint import CheckpointError
    from dnalm.config import ConfigError
    from dnalm.tokenizer import InvalidSequenceError

    types: list[type[BaseException]] = [UserError, ConfigError, CheckpointError, InvalidSequenceError]
    try:
        from dnalm.data.errors import DataError

        types.append(DataError)
    except ImportError:
        pass
    return tuple(types)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_fn", None):
        parser.print_help()
        return 2
    try:
        return int(args._fn(args) or 0)
    except KeyboardInterrupt:
        print("dnalm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0
    except _user_error_types() as e:
        print(f"dnalm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"dnalm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
