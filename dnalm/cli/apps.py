"""Application commands: score, variant effects, essentiality, DMS, embeddings, fine-tuning, boundaries."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from dnalm.checkpoint import atomic_write_text
from dnalm.cli.base import LONG_INPUTS, RUNTIME_ARGS, arg, command, positive_float, positive_int
from dnalm.cli.run import check_lora_memory
from dnalm.config import DEFAULT_LORA_TARGETS, LoRAConfig
from dnalm.data.errors import DataError
from dnalm.data.sequences import read_sequences
from dnalm.data.tables import display_name, is_regular_file
from dnalm.eval.boundaries import analyze_boundaries, format_summary, write_report
from dnalm.eval.dms import place_cds, read_mutants, score_dms
from dnalm.eval.embed import (
    embed_sequences,
    embedding_paths,
    fit_to_context,
    is_parquet,
    long_policy,
    parquet_modules,
    read_sequence_file,
)
from dnalm.eval.essentiality import DEFAULT_CASSETTE, essentiality_report, read_labels, score_essentiality
from dnalm.eval.finetune import (
    EPOCHS_DEFAULT,
    LORA_DEFAULTS,
    _model_inputs,
    finetune,
    load_classifier,
    load_sets,
    predict_proba,
    save_classifier,
    save_lora_classifier,
)
from dnalm.eval.longcontext import LONG_FROM, estimate_memory, one_pass_supported, score_records
from dnalm.eval.metrics import MetricError, auroc, auroc_ci, save_roc_plot, write_tsv
from dnalm.eval.scoring import window_bases
from dnalm.eval.variants import binary_labels, read_variants, score_variants
from dnalm.formats import load, model_config
from dnalm.models.lm import DNALM
from dnalm.outputs import check_output, output_group
from dnalm.scaling.memory import check_model_memory, meta_model_as_loaded
from dnalm.tokenizer import UNK


@command(
    "boundaries",
    "dnaHNet: where the learned chunk boundaries fall (codon positions in CDS, CDS / upstream / intergenic).",
    arg("model", metavar="MODEL", help="dnaHNet run directory, checkpoint directory or preset"),
    arg("--fasta", required=True, help="genome FASTA (or GenBank)"),
    arg("--gff", required=True, help="GFF3/GTF annotation; seqids must match the FASTA record names"),
    arg("-o", "--out", default="boundaries", output="dir",
        help="output directory for boundaries.tsv, gene_profile.tsv and PNGs"),
    arg("--window", type=int, default=None, help="bases per window (default: the model's max length - 1, at most 4096)"),
    arg("--context", type=int, default=None, help="bases of overlap between windows, run but not counted (default: window/4)"),
    arg("--upstream", type=int, default=100, help="bases 5' of a gene start that count as 'upstream'"),
    arg("--max-bases", type=int, default=200_000, help="analyse only the first N bases of each record (0 = all)"),
    arg("--forward-only", action="store_true", help="skip the reverse-complement reading (minus-strand CDS then drop out of the codon table)"),
    arg("--zero-based-gff", action="store_true", help="the GFF's start column is 0-based (e.g. the phiX174 file)"),
    arg("--batch-size", type=positive_int, default=8, help="windows per forward pass"),
    arg("--device", default="cpu", help="torch device"),
    arg("--quiet", action="store_true", help="no progress bar"),
)


def boundaries_cmd(args: argparse.Namespace) -> int:
    """Run a dnaHNet model over annotated sequence and report, per stage, the boundary rate by codon
    position (1/2/3) inside CDS read on the coding strand, and by region type (CDS, upstream of a gene,
    intergenic, non-coding gene). Writes a TSV table, the boundary-rate profile around CDS starts, and
    plots (codon-position bars, rate along genes)."""
    print(boundaries_command(
        args.model, args.fasta, args.gff, out=args.out, window=args.window, context=args.context,
        upstream=args.upstream, max_bases=args.max_bases or None, reverse=not args.forward_only,
        batch_size=args.batch_size, zero_based_gff=args.zero_based_gff, device=args.device, progress=not args.quiet,
    ))  # fmt: skip
    return 0


@command(
    "score-variants",
    "Zero-shot variant effects: delta log-likelihood (alt - ref) of a window centred on each variant.",
    arg("model", metavar="MODEL", help="run directory, checkpoint directory or preset"),
    arg("--fasta", required=True, help="reference FASTA; a record named chrom:start-end is placed on chrom at start"),
    arg("--variants", required=True,
        help="VCF, or TSV/CSV with chromosome/position/ref/alt columns (1-based); .gz ok; '-' reads standard input"),
    arg("--window", type=int, default=None, help="bases per window (default: 8192, or the model's context if shorter)"),
    arg("--rc-average", action="store_true", help="also score reverse complements and average the strand deltas"),
    arg("--fasta-offset", type=int, default=None, help="1-based chromosome position of the first base of each record"),
    arg("--pos-column", default=None, help="position column of a table (default: pos, position, pos_hg38 or start)"),
    arg("--indels", action="store_true", help="also score simple indels (same-length windows)"),
    arg("--label-column", default=None, help="column with class labels: report AUROC of -delta and plot the ROC"),
    arg("--positive", action="append", default=None, help="label value(s) of the positive class, e.g. LOF (repeatable)"),
    arg("--baseline-column", action="append", default=[], help="numeric column to report as a baseline AUROC"),
    arg("-o", "--out", default=None, output="file",
        help="output TSV (default: <variants>.scores.tsv in the current directory)"),
    arg("--plot", default=None, output="file", help="ROC plot PNG (default: next to the TSV)"),
    arg("--batch-size", type=positive_int, default=8, help="windows per forward pass"),
    arg("--device", default="cpu", help="torch device"),
    *RUNTIME_ARGS,
    arg("--quiet", action="store_true", help="no progress bar"),
)


def score_variants_cmd(args: argparse.Namespace) -> int:
    """Score SNVs (and optionally indels) by the change in log-likelihood of a window centred on each,
    ref and alt windows of the same length, each distinct window scored once. Writes a TSV (atomically)
    with delta_sum and delta_mean per variant and the window used."""
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
    arg("--circular", default=None, metavar="PAT,...",
        help="comma-separated glob patterns of circular records: genes across their origin are skipped, not an error"),
    arg("--max-genes", type=positive_int, default=None, help="score only the first N genes (for a quick look)"),
    arg("-o", "--out", default=None, output="file", help="per-gene TSV (default: essentiality.tsv)"),
    arg("--plot", default=None, output="file", help="ROC plot PNG (default: next to the TSV)"),
    arg("--batch-size", type=positive_int, default=8, help="windows per forward pass"),
    arg("--device", default="cpu", help="torch device"),
    *RUNTIME_ARGS,
    arg("--quiet", action="store_true", help="no progress bar"),
)


def essentiality_cmd(args: argparse.Namespace) -> int:
    """Evo's zero-shot essentiality protocol: for each protein-coding gene insert a stop cassette in
    frame near the start codon, score the change in log-likelihood of a window around the gene (read in
    the gene's orientation), and with labels report AUROC beside a gene-length baseline."""
    print(essentiality_command(
        args.model, args.fasta, args.gff, labels=args.labels, label_columns=args.label_column, out=args.out,
        plot=args.plot, window=args.window, cassette=args.cassette, insert_offset=args.insert_offset,
        zero_based_gff=args.zero_based_gff, max_genes=args.max_genes, batch_size=args.batch_size,
        circular=[p.strip() for p in (args.circular or "").split(",") if p.strip()], device=args.device,
        progress=not args.quiet,
    ))  # fmt: skip
    return 0


@command(
    "dms",
    "Zero-shot protein fitness from DNA: score protein mutants via their closest codon change.",
    arg("model", metavar="MODEL", help="run directory, checkpoint directory or preset"),
    arg("--cds", required=True, help="FASTA with the wild-type coding sequence"),
    arg("--variants", required=True,
        help="mutant table (';', tab or ',' separated; '#' comments), e.g. G21A; .gz ok; '-' reads standard input"),
    arg("--ties", choices=["first", "mean"], default="first",
        help="equally close codons: first in A<C<G<T order, or the mean delta over all of them"),
    arg("--record", default=None, help="record holding the CDS (default: searched in every record)"),
    arg("--cds-start", type=int, default=None, metavar="POS",
        help="1-based record position of the first base of codon 1 (default: found from the mutants' residues)"),
    arg("--cds-end", type=int, default=None, metavar="POS",
        help="1-based record position of the CDS's last base (default: the first in-frame stop); "
        "an end before the start means the reverse strand"),
    arg("--numbering-offset", type=int, default=0, metavar="K",
        help="the table's residue n is codon n - K of the CDS (e.g. 2 for TEM-1's Ambler numbering)"),
    arg("--variant-column", default=None, help="mutant column (default: variant/mutant/mutation)"),
    arg("--fitness-column", default=None, help="measured fitness column (default: y/fitness/score/DMS_score)"),
    arg("--baseline-column", action="append", default=None,
        help="baseline score column(s) (default: every other numeric column, e.g. dE)"),
    arg("-o", "--out", default=None, output="file", help="output TSV (default: <variants>.dms.tsv)"),
    arg("--batch-size", type=positive_int, default=8, help="windows per forward pass"),
    arg("--device", default="cpu", help="torch device"),
    *RUNTIME_ARGS,
    arg("--quiet", action="store_true", help="no progress bar"),
)


def dms_cmd(args: argparse.Namespace) -> int:
    """Map each protein mutant to the codon with the fewest nucleotide changes, score the delta
    log-likelihood of the gene, and report Spearman with measured fitness beside BLOSUM62 and any
    baseline columns. The CDS may carry flanks (kept as context in the scored window): it is the reading
    frame, on either strand, that encodes every mutant's wild-type residue, or --cds-start/--cds-end;
    the choice is reported. --variants - reads the table from standard input."""
    print(dms_command(
        args.model, args.cds, args.variants, out=args.out, ties=args.ties, record=args.record,
        cds_start=args.cds_start, cds_end=args.cds_end, numbering_offset=args.numbering_offset,
        variant_column=args.variant_column, fitness_column=args.fitness_column,
        baseline_columns=args.baseline_column, batch_size=args.batch_size, device=args.device,
        progress=not args.quiet,
    ))  # fmt: skip
    return 0


@command(
    "embed",
    "Sequence embeddings from a hidden state or any module's output -> .npy + .json metadata, or .parquet.",
    arg("model", metavar="MODEL", help="run directory, checkpoint directory or preset"),
    arg("--fasta", default=None, help="FASTA/GenBank file of sequences"),
    arg("--csv", dest="csv_path", default=None, help="CSV/TSV with a sequence column"),
    arg("--column", default=None, help="sequence column of the CSV (default: sequence/seq/seqs)"),
    arg("--layer", type=int, default=-1, help="hidden state: 0 = embeddings, i = after block i, -1 = final norm"),
    arg("--module", "--tap", dest="module", default=None, metavar="NAME",
        help="embed the output of this submodule instead of a hidden state, e.g. blocks.28.mlp.l3 (Evo 2's "
        "naming; backbone.layers.28.mlp.l3 here) or backbone.layers.28.mlp (the MLP's output before the "
        "residual add)"),
    arg("--pool", choices=["mean", "last", "per-position", "none"], default="mean",
        help="pooling over the bases: mean, last base, or one vector per base (per-position; 'none' is the same)"),
    arg("-o", "--out", default=None, output="file",
        help="output .npy (metadata in a .json next to it) or .parquet (metadata inside; needs pyarrow) "
        "(default: <input>.emb.npy)"),
    *LONG_INPUTS,
    arg("--batch-size", type=positive_int, default=8, help="windows per forward pass"),
    arg("--device", default="cpu", help="torch device"),
    *RUNTIME_ARGS,
    arg("--quiet", action="store_true", help="no progress bar"),
)


def embed_cmd(args: argparse.Namespace) -> int:
    """Embed sequences. One longer than the model's context is an error unless --crop keeps one window of
    it or --windows embeds it in consecutive windows pooled together (stated in the metadata). Sequences
    are batched longest first (little padding) and written back in input order."""
    print(embed_command(
        args.model, fasta=args.fasta, csv_path=args.csv_path, column=args.column, out=args.out,
        layer=args.layer, module=args.module, pool=args.pool, batch_size=args.batch_size, crop=args.crop, windows=args.windows,
        device=args.device, progress=not args.quiet,
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
    arg("--mode", choices=["probe", "full", "lora"], default="probe",
        help="frozen backbone + linear head, train all, or low-rank adapters + head on the frozen backbone"),
    arg("--lora-rank", type=positive_int, default=LORA_DEFAULTS["rank"], help="LoRA rank r (--mode lora)"),
    arg("--lora-alpha", type=positive_float, default=LORA_DEFAULTS["alpha"],
        help="LoRA scale numerator: updates are scaled by alpha / r"),
    arg("--lora-targets", default=",".join(DEFAULT_LORA_TARGETS), metavar="PAT,...",
        help="comma-separated glob patterns of the linear layers to adapt (matched against module names or "
        "their ends, e.g. Wqkv, mlp.*, layers.3.mixer.in_proj)"),
    arg("--lora-dropout", type=float, default=0.0, help="dropout on the adapters' input"),
    arg("--max-memory", type=positive_float, default=None, metavar="GIB",
        help="GiB LoRA training may use (checked before the model is loaded); unset = what the device has free"),
    arg("--soft-prompt", type=int, default=0, metavar="N", help="learn N prompt embeddings for the frozen model"),
    arg("--pool", choices=["mean", "last"], default="mean", help="pooling of the hidden states over the bases"),
    arg("--layer", type=int, default=-1, help="hidden state to pool (-1 = after the final norm)"),
    arg("--epochs", type=positive_int, default=None,
        help=f"epochs of full fine-tuning, soft prompts and LoRA (default: {LORA_DEFAULTS['epochs']} LoRA, "
        f"{EPOCHS_DEFAULT} otherwise)"),
    arg("--lr", type=positive_float, default=None,
        help=f"learning rate (default: 1e-2 probe/prompt, {LORA_DEFAULTS['lr']:g} LoRA, 3e-4 full)"),
    arg("--batch-size", type=positive_int, default=32, help="sequences per step"),
    arg("--probe-steps", type=positive_int, default=500, help="full-batch steps of the linear probe"),
    arg("--max-train", type=positive_int, default=None, help="use a random subset of this many training sequences"),
    arg("--seed", type=int, default=0, help="seed of the head/prompt init and the data order"),
    arg("--split-seed", type=int, default=0, help="seed of the 80/10/10 split when no --dev/--test is given"),
    arg("-o", "--out", default="finetuned", output="dir", help="output directory (classifier, report.json, split.json)"),
    *LONG_INPUTS,
    arg("--device", default="cpu", help="torch device"),
    arg("--quiet", action="store_true", help="no progress bar"),
)


def finetune_cmd(args: argparse.Namespace) -> int:
    """Add a classification head on pooled hidden states and train it (class-weighted loss, best dev
    checkpoint kept). Reports test accuracy, MCC and AUROC beside a k-mer logistic regression trained in
    the same run, and saves the classifier for `dnalm predict`. --mode lora trains low-rank adapters on
    the frozen model (kept in its stored dtype) with the head, after checking the estimated memory, and
    saves only the adapters and the head (adapter.safetensors + adapter.json naming the base model);
    `dnalm export --merge-lora` folds them into a standalone classifier."""
    print(finetune_command(
        args.model, train=args.train, dev=args.dev, test=args.test, out=args.out, seq_column=args.seq_column,
        label_column=args.label_column, mode=args.mode, soft_prompt=args.soft_prompt, pool=args.pool,
        layer=args.layer, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        probe_steps=args.probe_steps, seed=args.seed, split_seed=args.split_seed, max_train=args.max_train,
        crop=args.crop, windows=args.windows, device=args.device, progress=not args.quiet,
        lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, lora_targets=args.lora_targets,
        lora_dropout=args.lora_dropout, max_memory_gib=args.max_memory,
    ))  # fmt: skip
    return 0


@command(
    "predict",
    "Classify new sequences with a model made by `dnalm finetune` -> TSV of class probabilities.",
    arg("classifier", metavar="CLASSIFIER", help="output directory of dnalm finetune"),
    arg("--fasta", default=None, help="FASTA/GenBank file of sequences"),
    arg("--csv", dest="csv_path", default=None, help="CSV/TSV with a sequence column"),
    arg("--column", default=None, help="sequence column of the CSV (default: sequence/seq/seqs)"),
    arg("-o", "--out", default=None, output="file", help="output TSV (default: <input>.predictions.tsv)"),
    *LONG_INPUTS,
    arg("--batch-size", type=positive_int, default=32, help="sequences per forward pass"),
    arg("--device", default="cpu", help="torch device"),
    arg("--quiet", action="store_true", help="no progress bar"),
)


def predict_cmd(args: argparse.Namespace) -> int:
    """Apply a fine-tuned classifier: one row per sequence with the predicted class and the probability
    of each class."""
    print(predict_command(
        args.classifier, fasta=args.fasta, csv_path=args.csv_path, column=args.column, out=args.out,
        batch_size=args.batch_size, crop=args.crop, windows=args.windows, device=args.device,
        progress=not args.quiet,
    ))  # fmt: skip
    return 0


@command(
    "score",
    "Log-likelihood of each record of a FASTA file; long records (up to 1M bases) in one pass, not windows.",
    arg("model", metavar="MODEL", help="run directory, checkpoint directory or preset"),
    arg("--fasta", required=True, help="FASTA/GenBank file (plain or gzip); every record is scored whole"),
    arg("--reduce", choices=["sum", "mean"], default="sum", help="sum or per-base mean of the log-likelihood"),
    arg("-o", "--out", default=None, output="file", help="output TSV, written atomically; without it the table is printed"),
    arg("--long-from", type=positive_int, default=32768,
        help="records of this many tokens or more go through the one-pass long-context path"),
    arg("--max-memory", type=float, default=None, metavar="GIB",
        help="GiB the one-pass path may use; unset = what the system reports as available"),
    arg("--batch-size", type=positive_int, default=8, help="short records per forward pass"),
    arg("--device", default="cpu", help="torch device"),
    *RUNTIME_ARGS,
    arg("--quiet", action="store_true", help="no progress bar"),
)


def score_cmd(args: argparse.Namespace) -> int:
    """Score whole records: natural-log likelihood of every base (the first one too when the tokenizer
    prepends [BOS]), as a sum or a per-base mean, plus bits per base. A record of --long-from tokens
    or more runs in one memory-lean pass, in every family (1,000,000 bases with hyenadna-large-1m fit in
    about 5 GiB, 131,072 with an Evo 2 1B shape in bf16 in about 5 GiB); if the estimate exceeds the
    available memory it stops before allocating. Records longer
    than the model's context are an error (use dnalm eval for windows)."""
    print(score_command(
        args.model, args.fasta, reduce=args.reduce, out=args.out, long_from=args.long_from,
        batch_size=args.batch_size, device=args.device, max_memory_gib=args.max_memory, progress=not args.quiet,
    ))  # fmt: skip
    return 0


# ------------------------------------------------------------------------------------------ helpers


def boundaries_command(
    model_path: str,
    fasta: str,
    gff: str,
    *,
    out: str = "boundaries",
    window: int | None = None,
    context: int | None = None,
    upstream: int = 100,
    max_bases: int | None = None,
    reverse: bool = True,
    batch_size: int = 8,
    zero_based_gff: bool = False,
    device: str = "cpu",
    progress: bool = True,
) -> str:
    """``dnalm boundaries``: analyse, write the TSVs and plots into ``out``, return a summary."""

    check_model_memory(model_path, "dnalm boundaries", window, batch_size, logits=False)
    model = load(model_path, device=device)
    if not callable(getattr(model.backbone, "boundaries", None)):  # a dnaHNet: it routes
        raise DataError(f"{model_path}: boundary analysis needs a dnaHNet model (family 'hnet'), not {model.config.family!r}")
    t0 = time.perf_counter()
    rep = analyze_boundaries(
        model, fasta, gff, window=window, context=context, upstream=upstream, max_bases=max_bases, reverse=reverse,
        batch_size=batch_size, zero_based_starts=zero_based_gff, progress=progress,
    )  # fmt: skip
    secs = time.perf_counter() - t0
    files = write_report(rep, out)
    return "\n".join([format_summary(rep), f"({secs:.1f} s) wrote " + ", ".join(str(f) for f in files)])


def score_variants_command(
    model_path: str, fasta: str, variants: str, *, out: str | None = None, window: int | None = None,
    rc_average: bool = False, fasta_offset: int | None = None, pos_column: str | None = None,
    indels: bool = False, label_column: str | None = None, positive: Sequence[str] | None = None,
    baseline_columns: Sequence[str] = (), plot: str | None = None, batch_size: int = 8,
    device: str = "cpu", progress: bool = True,
) -> str:
    """``dnalm score-variants``: score, write the TSV (and ROC plot with labels), return a summary."""

    # inputs and outputs are checked before the model is loaded: a mistake costs no model time
    vlist, columns = read_variants(variants, allow_indels=indels, pos_column=pos_column)
    for c in ([label_column] if label_column is not None else []) + list(baseline_columns):
        if not any(c in v.fields for v in vlist):
            raise DataError(
                f"{display_name(variants)}: no column {c!r} (columns: {', '.join(vlist[0].fields) or 'none'})"
            )
    y = None
    if label_column is not None:  # check the labels before spending time on the model
        y = binary_labels([(v.row, v.fields.get(label_column)) for v in vlist], label_column, positive,
                          display_name(variants))
    out_path = check_output(Path(out) if out else _default_out(variants, ".scores.tsv"), "file", "output TSV")
    if label_column is not None:
        check_output(Path(plot) if plot else out_path.with_suffix(".roc.png"), "file", "ROC plot")
    check_model_memory(model_path, "dnalm score-variants", window, batch_size)
    model = load(model_path, device=device)
    res = score_variants(model, fasta, vlist, window=window, rc_average=rc_average, fasta_offset=fasta_offset,
                         pos_column=pos_column, allow_indels=indels, batch_size=batch_size, progress=progress,
                         source=str(variants))
    res.columns = columns
    res.notes.append("columns used: " + ", ".join(f"{k}={v}" for k, v in columns.items()))
    extra = [label_column] if label_column else []
    for r in res.rows:
        if label_column:
            r[label_column] = r["_fields"].get(label_column)
        for b in baseline_columns:
            r[b] = r["_fields"].get(b)
    with output_group():  # the TSV and the ROC plot appear together, or neither
        res.write_tsv(out_path, extra + [b for b in baseline_columns if b not in extra])
        lines = [
            f"scored {len(res.rows)} variants ({res.n_windows_scored} distinct windows, {res.notes[0]}) "
            f"in {res.seconds:.1f} s = {len(res.rows) / max(res.seconds, 1e-9):.2f} variants/s -> {out_path}",
        ]
        if y is not None:
            score = -np.array([r["delta_sum"] for r in res.rows])
            try:
                a = auroc(y, score)
                lo, hi = auroc_ci(y, score)
            except MetricError as e:
                raise DataError(f"{display_name(variants)}: label column {label_column!r}: {e}") from None
            pos_name = ",".join(positive) if positive else "1"
            lines.append(f"AUROC ({label_column} = {pos_name} vs the rest, score -delta_sum): {a:.4f} "
                         f"(95% bootstrap CI {lo:.3f}-{hi:.3f}; {int(y.sum())} positive, {int(len(y) - y.sum())} negative)")
            curves = {"model (-delta)": (y, score)}
            for b in baseline_columns:
                vals = np.array([_float_or_nan(r["_fields"].get(b)) for r in res.rows])
                ok = np.isfinite(vals)
                if ok.sum() < len(vals):
                    lines.append(f"baseline {b}: {int((~ok).sum())} rows without a number are left out of its AUROC")
                try:
                    ab = auroc(y[ok], vals[ok])
                except MetricError as e:
                    lines.append(f"baseline {b}: {e}")
                    continue
                lines.append(f"baseline AUROC of {b} (higher = more damaging): {ab:.4f}")
                if ok.all():
                    curves[b] = (y, vals)
            plot_path = Path(plot) if plot else out_path.with_suffix(".roc.png")
            save_roc_plot(plot_path, curves, title=f"{display_name(variants)}: {label_column}")
            lines.append(f"ROC plot -> {plot_path}")
    return "\n".join(lines)


def _default_out(path: str | Path, suffix: str) -> Path:
    name = Path(path).name if is_regular_file(path) else "variants"  # stdin or a pipe: no useful name
    for ext in (".gz", ".vcf", ".tsv", ".csv", ".txt"):
        name = name.removesuffix(ext)
    return Path(f"{name}{suffix}")


def _float_or_nan(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def essentiality_command(
    model_path: str, fasta: str, gff: str, *, labels: str | None = None, label_columns: Sequence[str] | None = None,
    out: str | None = None, plot: str | None = None, window: int | None = None, cassette: str = DEFAULT_CASSETTE,
    insert_offset: int = 12, zero_based_gff: bool = False, max_genes: int | None = None, batch_size: int = 8,
    circular: Sequence[str] = (), device: str = "cpu", progress: bool = True,
) -> str:
    """``dnalm essentiality``: score genes, write the per-gene TSV (+ ROC plot with labels), return a summary."""

    if labels is not None:
        read_labels(labels, label_columns)  # a bad label file fails before the model is loaded
    out_path = check_output(Path(out) if out else Path("essentiality.tsv"), "file", "output TSV")
    plot_path = check_output(Path(plot) if plot else out_path.with_suffix(".roc.png"), "file", "ROC plot")
    check_model_memory(model_path, "dnalm essentiality", window, batch_size)
    model = load(model_path, device=device)
    t0 = time.perf_counter()
    res = score_essentiality(model, fasta, gff, labels, label_columns=label_columns, window=window, cassette=cassette,
                             insert_offset=insert_offset, zero_based_gff=zero_based_gff, max_genes=max_genes,
                             batch_size=batch_size, progress=progress, need_both_classes=True, circular=circular)
    secs = time.perf_counter() - t0
    header = ["locus_tag", "gene", "seqid", "start", "end", "strand", "length", "insert_after", "window_start",
              "window_end", "delta_sum", "delta_mean", *res["label_columns"]]
    with output_group():  # the TSV and the ROC plot appear together, or neither
        write_tsv(out_path, header, ([r[c] for c in header] for r in res["rows"]), res["notes"])
        lines = [f"scored {len(res['rows'])} genes in {secs:.1f} s -> {out_path}", *res["notes"]]
        if res["label_columns"]:
            for r in essentiality_report(res, plot_path):
                lines.append(
                    f"{r['label']}: AUROC {r['auroc']:.4f} (95% CI {r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}; "
                    f"{r['n_pos']} essential of {r['n']}); gene-length baseline AUROC {r['auroc_gene_length']:.4f}"
                )
            lines.append(f"ROC plot -> {plot_path}")
    return "\n".join(lines)


def dms_command(
    model_path: str, cds: str, variants: str, *, out: str | None = None, ties: str = "first",
    record: str | None = None, cds_start: int | None = None, cds_end: int | None = None, numbering_offset: int = 0,
    variant_column: str | None = None, fitness_column: str | None = None,
    baseline_columns: Sequence[str] | None = None, batch_size: int = 8, device: str = "cpu", progress: bool = True,
) -> str:
    """``dnalm dms``: score mutants, write the TSV, return a summary with Spearman correlations."""

    # the table, the CDS and the output are checked before the model is loaded
    mutants = read_mutants(variants, variant_column, fitness_column, baseline_columns)
    place_cds(cds, mutants[0], record=record, cds_start=cds_start, cds_end=cds_end, offset=numbering_offset,
              source=mutants[1]["source"])
    stem = Path(variants).stem if is_regular_file(variants) else "mutants"
    out_path = check_output(Path(out) if out else Path(stem + ".dms.tsv"), "file", "output TSV")
    check_model_memory(model_path, "dnalm dms", None, batch_size)
    model = load(model_path, device=device)
    t0 = time.perf_counter()
    res = score_dms(model, cds, variants, ties=ties, record=record, cds_start=cds_start, cds_end=cds_end,
                    numbering_offset=numbering_offset, batch_size=batch_size, progress=progress, mutants=mutants)
    secs = time.perf_counter() - t0
    header = ["variant", "codons", "nt_changes", "n_choices", "dna", "delta_sum", "delta_mean", "fitness",
              "blosum62", *res["meta"]["baselines"]]
    write_tsv(out_path, header, ([r[c] for c in header] for r in res["rows"]), res["notes"])
    lines = [f"scored {len(res['rows'])} mutants ({res['n_windows']} distinct windows) in {secs:.1f} s -> {out_path}",
             *res["notes"]]
    if res["spearman"]:
        n = sum(np.isfinite(r["fitness"]) for r in res["rows"])
        lines.append(f"Spearman with {res['meta']['fitness']} (n = {n}):")
        lines += [f"  {k:<14} {v:+.4f}" for k, v in res["spearman"].items()]
    return "\n".join(lines)


def embed_command(
    model_path: str, *, fasta: str | None = None, csv_path: str | None = None, column: str | None = None,
    out: str | None = None, layer: int = -1, pool: str = "mean", batch_size: int = 8, crop: str | None = None,
    windows: bool = False, device: str = "cpu", progress: bool = True, module: str | None = None,
) -> str:
    """``dnalm embed``: embed every sequence of a FASTA or CSV and write .npy + .json (or .parquet); return a
    summary."""

    if (fasta is None) == (csv_path is None):
        raise DataError("give exactly one of --fasta or --csv")
    src = fasta or csv_path
    ids, toks, lows = read_sequence_file(src, column=column)
    stem = Path(src).name.split(".")[0] if is_regular_file(src) else "sequences"
    if out is not None and is_parquet(out):
        parquet_modules()  # the optional dependency is there, or a clear error before any work
        npy = meta_path = check_output(Path(out), "file", "embedding table")
    else:
        npy, meta_path = embedding_paths(out or stem + ".emb.npy")
        check_output(npy, "file", "embedding array")
        check_output(meta_path, "file", "embedding metadata")
    lengths = [len(t) + 2 for t in toks] if not (crop or windows) else [0]  # + [BOS] and [SEP]; None: windows
    _check_long_memory(model_path, "dnalm embed", lengths, LONG_FROM, batch_size, None, "hidden")
    model = load(model_path, device=device)
    if model.tokenizer.lowercase == "unk":
        toks = [np.where(lo, UNK, t).astype(np.uint8) for t, lo in zip(toks, lows)]
    emb = embed_sequences(model, toks, ids=ids, layer=layer, pool=pool, batch_size=batch_size, crop=crop,
                          windows=windows, progress=progress, source=str(src), module=module)
    emb.meta.update(model=str(model_path), source=str(src))
    npy, meta = emb.save(npy)
    n_long = emb.meta["longer_than_window"]
    how = "were cropped" if crop else "used several windows"
    where = f"module {emb.meta['module']}" if module else f"layer {layer}"
    return (f"embedded {len(ids)} sequences ({where}, {pool} pooling) -> {npy} {tuple(emb.array.shape)} float32, "
            f"metadata {'inside' if meta == npy else meta}"
            + (f"; {n_long} sequences were longer than {emb.meta['window_bases']} bases and {how}" if n_long else ""))


def finetune_command(
    model_path: str, *, train: str, dev: str | None = None, test: str | None = None, out: str = "finetuned",
    seq_column: str | None = None, label_column: str | None = None, mode: str = "probe", soft_prompt: int = 0,
    pool: str = "mean", layer: int = -1, epochs: int | None = None, lr: float | None = None, batch_size: int = 32,
    probe_steps: int = 500, seed: int = 0, split_seed: int = 0, max_train: int | None = None,
    crop: str | None = None, windows: bool = False, device: str = "cpu", progress: bool = True,
    lora_rank: int = 8, lora_alpha: float = 16.0, lora_targets: str | Sequence[str] = DEFAULT_LORA_TARGETS,
    lora_dropout: float = 0.0, max_memory_gib: float | None = None,
) -> str:
    """``dnalm finetune``: read the sets (or split one seeded), train, compare with k-mers, save; summary."""

    lora = None
    if mode == "lora":
        lora = LoRAConfig(rank=lora_rank, alpha=lora_alpha, targets=lora_targets, dropout=lora_dropout)
    data, classes, split_info = load_sets(train, dev, test, seq_column=seq_column, label_column=label_column,
                                          split_seed=split_seed, max_train=max_train, seed=seed)
    check_output(out, "dir", "classifier directory")
    memory = None
    if lora is not None:  # before the model is loaded: a run that cannot fit stops here
        longest = max(len(s) for d in data.values() for s in d.seqs) + 1  # + [BOS]
        memory = check_lora_memory(model_path, lora, longest, batch_size, device, max_memory_gib,
                                   n_classes=len(classes))  # fmt: skip
    else:
        longest = max((len(s) for part in data.values() for s in part.seqs), default=1) + 2
        check_model_memory(model_path, "dnalm finetune", longest if not (crop or windows) else None, batch_size,
                           hidden_states=mode == "probe" and not soft_prompt,
                           training=mode != "probe" or bool(soft_prompt))
    model = load(model_path, device=device)
    clf, report = finetune(model, data["train"], data["dev"], data["test"], classes, mode=mode,
                           soft_prompt=soft_prompt, pool=pool, layer=layer, epochs=epochs, lr=lr,
                           batch_size=batch_size, probe_steps=probe_steps, seed=seed, crop=crop, windows=windows,
                           progress=progress, lora=lora, copy_model=False)  # fmt: skip
    report["base_model"] = str(model_path)
    if memory is not None:
        report["memory_estimate_gib"] = {k: round(v / 2**30, 3) for k, v in memory.parts.items()}
    files = {"report.json": json.dumps(report, indent=1) + "\n"}
    if split_info:
        files["split.json"] = json.dumps(split_info) + "\n"
    info = {"base_model": str(model_path), "mode": report["mode"]}
    if lora is not None:
        base = str(Path(model_path).resolve()) if Path(model_path).exists() else str(model_path)
        save_lora_classifier(clf, out, classes, base, lora, files, info=info)
    else:
        save_classifier(clf, out, classes, files, info=info)
    t, b = report["test"], report["kmer_baseline"]["test"]
    s = report["sizes"]
    lines = [
        f"{report['mode']} ({pool} pooling, layer {layer}"
        + (f", {soft_prompt} prompt tokens" if soft_prompt else "") + f"): train {s['train']}, dev {s['dev']}, "
        f"test {s['test']}; classes {classes} with train counts {report['train_class_counts']}"
        + (f"; seeded stratified 80/10/10 split (seed {split_seed}) saved to {out}/split.json" if split_info else "")
        + (f"; {report['longer_than_context']} sequences longer than the context: {report['long_inputs']}"
           if report["longer_than_context"] else ""),
        *([f"LoRA rank {lora.rank}, alpha {lora.alpha:g}: {report['lora']['adapted_layers']} adapted layers; "
           f"{report['trainable_parameters']:,} trainable parameters (adapters + head) of "
           f"{report['model_parameters']:,}; adapters saved without the base model"] if lora is not None else []),
        f"{'':<22}{'accuracy':>9}{'MCC':>9}{'AUROC':>9}",
        f"{'model (test)':<22}{t['accuracy']:>9.4f}{t['mcc']:>9.4f}{t['auroc']:>9.4f}",
        f"{'k-mer LR (test)':<22}{b['accuracy']:>9.4f}{b['mcc']:>9.4f}{b['auroc']:>9.4f}"
        f"   (k={report['kmer_baseline']['k']}, C={report['kmer_baseline']['C']})",
        f"best dev checkpoint at {report['best_checkpoint']}; {report['seconds_model']} s model, "
        f"{report['seconds_baseline']} s baseline; saved -> {out}",
    ]
    return "\n".join(lines)


def predict_command(
    classifier: str, *, fasta: str | None = None, csv_path: str | None = None, column: str | None = None,
    out: str | None = None, batch_size: int = 32, crop: str | None = None, windows: bool = False,
    device: str = "cpu", progress: bool = True,
) -> str:
    """``dnalm predict``: class probabilities of new sequences with a fine-tuned classifier -> TSV."""

    if (fasta is None) == (csv_path is None):
        raise DataError("give exactly one of --fasta or --csv")
    src = fasta or csv_path
    stem = Path(src).name.split(".")[0] if is_regular_file(src) else "sequences"
    out_path = check_output(Path(out) if out else Path(stem + ".predictions.tsv"), "file", "output TSV")
    ids, toks, lows = read_sequence_file(src, column=column)
    longest = max((len(t) for t in toks), default=1) + 2
    check_model_memory(classifier, "dnalm predict", longest if not (crop or windows) else None,
                       min(batch_size, len(toks)), hidden_states=True)
    clf, classes = load_classifier(classifier, device)
    toks = _model_inputs(clf.lm, toks, lows)
    fitted, n_long = fit_to_context(toks, window_bases(clf.lm) - clf.n_prompt, crop=crop, windows=windows, names=ids,
                                    source=str(src), what="the classifier's")
    probs = predict_proba(clf, fitted, batch_size, progress)
    header = ["id", "predicted", *[f"prob_{c}" for c in classes]]
    rows = ([i, classes[int(p.argmax())], *p.tolist()] for i, p in zip(ids, probs))
    write_tsv(out_path, header, rows, [f"classifier {classifier}", f"long inputs: {long_policy(crop, windows)}"])
    counts = np.bincount(probs.argmax(1), minlength=len(classes))
    return (f"predicted {len(ids)} sequences -> {out_path} ({', '.join(f'{c}: {n}' for c, n in zip(classes, counts))})"
            + (f"; {n_long} longer than the context: {long_policy(crop, windows)}" if n_long else ""))


def score_command(
    model_path: str, fasta: str, reduce: str = "sum", out: str | None = None, long_from: int = LONG_FROM,
    batch_size: int = 8, device: str = "cpu", max_memory_gib: float | None = None, progress: bool = True,
) -> str:
    """``dnalm score``: per-record log-likelihoods of a FASTA/GenBank file -> TSV; returns a summary."""

    if reduce not in ("sum", "mean"):
        raise DataError(f"--reduce must be sum or mean (got {reduce!r})")
    records = list(read_sequences(fasta))
    if not records:
        raise DataError(f"{fasta}: no sequence records")
    max_memory = None if max_memory_gib is None else int(max_memory_gib * 2**30)
    _check_long_memory(model_path, "dnalm score", [len(r) + 2 for r in records], long_from, batch_size, max_memory)
    torch.manual_seed(0)  # a preset builds fresh weights: make them reproducible
    model = load(model_path, device=device)
    if not isinstance(model, DNALM):
        raise DataError(f"{model_path}: a {type(model).__name__} is not a language model; dnalm score needs one")
    t0 = time.perf_counter()
    scores = score_records(model, records, long_from, batch_size, max_memory, progress)
    seconds = time.perf_counter() - t0
    col = f"loglik_{reduce}"
    lines = ["\t".join(["name", "length", "scored", col, "bits_per_base", "mode"])]
    for s in scores:
        value = s.loglik_sum if reduce == "sum" else s.loglik_mean
        bpb = -s.loglik_mean / math.log(2) if s.scored else float("nan")
        lines.append(f"{s.name}\t{s.length}\t{s.scored}\t{value:.6f}\t{bpb:.6f}\t"
                     f"{'one_pass' if s.one_pass else 'batched'}")
    text = "\n".join(lines) + "\n"
    if out is None or out == "-":
        return text.rstrip("\n")
    atomic_write_text(out, text)
    n_long = sum(s.one_pass for s in scores)
    return (f"scored {len(scores)} record(s), {sum(s.length for s in scores):,} bases in {seconds:.1f} s"
            + (f" ({n_long} in one pass)" if n_long else "") + f" -> {out}")


def _check_long_memory(model_path: str, what: str, lengths: list[int], long_from: int, batch_size: int,
                       max_memory: int | None, output: str = "logprobs") -> None:
    """The memory check of dnalm score and dnalm embed before the model is built: the weights, a batch of the
    inputs shorter than ``long_from`` tokens, and the longest one-pass input (estimated on a meta-device
    model: nothing is allocated). A length 0 stands for context-sized windows."""
    hidden = output == "hidden"
    short = [n for n in lengths if n < long_from]
    check_model_memory(model_path, what, max(short, default=0) or None, max(1, min(batch_size, len(short))),
                       hidden_states=hidden, max_memory=max_memory)
    long = max((n for n in lengths if n >= long_from), default=0)
    if not long:
        return
    try:
        config, _ = model_config(model_path)
    except Exception:  # noqa: BLE001 - loading the model reports the problem
        return
    long = min(long, int(config.max_len))
    meta = meta_model_as_loaded(config, model_path)
    need = estimate_memory(meta, long, output) if one_pass_supported(meta) else None
    check_model_memory(model_path, f"{what} ({long:,} tokens in one pass)", long, 1, hidden_states=hidden,
                       max_memory=max_memory, need=need)
