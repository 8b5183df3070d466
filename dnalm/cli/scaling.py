"""Scaling commands: plan a run, fit scaling laws, run a sweep."""

from __future__ import annotations

import argparse
import json

from dnalm.checkpoint import atomic_write_text
from dnalm.cli.base import UserError, arg, command, positive_float, positive_int
from dnalm.scaling.fit import fit_results, format_summary
from dnalm.scaling.plan import format_plan, plan_command
from dnalm.scaling.ablate import run_ablation
from dnalm.scaling.sweep import run_sweep


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
    arg("--json", dest="json_out", default=None, output="file", help="also write the plan to this JSON file"),
)
def plan_cmd(args: argparse.Namespace) -> int:
    """Plan a large training run before launching it: total training FLOPs (6ND and the per-layer count),
    GPU-days and wall-clock at an MFU, memory per GPU for each parallel strategy, and what fits."""
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
    arg("--out", default=None, output="dir",
        help="output directory for fit.json and plots (default: RESULTS' folder/scaling_fit)"),
    arg("--bootstrap", type=int, default=200, help="bootstrap resamples for the intervals"),
    arg("--seed", type=int, default=0, help="bootstrap seed"),
    arg("--loss-column", default="val_loss", help="column holding the held-out loss"),
    arg("--no-plot", action="store_true", help="skip the PNG plots"),
)
def scaling_cmd(args: argparse.Namespace) -> int:
    """Robust parametric fit (Huber loss in log space, several starts, bootstrap intervals) and the
    IsoFLOP method per family; compute-optimal N*(C), D*(C), tokens per parameter; loss-vs-compute plot
    with the frontier; a FLOP-matched comparison when the results hold several families."""
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
    arg("--out", default=None, output="dir", help="output directory (overrides out_dir in the grid)"),
    arg("--dry-run", action="store_true", help="list the points (parameters, tokens, steps, FLOPs) and stop"),
)
def sweep_cmd(args: argparse.Namespace) -> int:
    """Train every point of a scaling grid at matched training FLOPs (or tokens). Finished points are
    never rerun and an interrupted point resumes from its checkpoint, so rerunning the command continues
    the sweep. Then fit the results with 'dnalm scaling fit OUT/results.csv'."""
    results = run_sweep(args.grid, args.out, dry_run=args.dry_run)
    if not args.dry_run:
        print(f"results: {results}\nnext: dnalm scaling fit {results}")
    return 0


@command(
    "ablate",
    "An ablation: one config switch over several arms and seeds at equal tokens; CSV, curves, summary.",
    arg("config", metavar="ABLATION", help="ablation YAML (see configs/ablations/)"),
    arg("--out", default=None, output="dir", help="output directory (overrides out_dir in the file)"),
    arg("--dry-run", action="store_true", help="list the runs (steps, planned tokens, switch value) and stop"),
    arg("--seeds", type=positive_int, default=None, metavar="N",
        help="train only the first N seeds of the file for now (rerun without it to add the rest)"),
    arg("--tokens", type=positive_float, default=None,
        help="training tokens per run instead of the file's 'tokens' (train.steps follows; use another --out)"),
)
def ablate_cmd(args: argparse.Namespace) -> int:
    """Train every (arm, seed) of an ablation: the base run config with one dotted key (the switch) set
    to each arm's value, seeds setting init and data order, all arms checked to differ only in the switch
    and to plan the same training tokens. Finished runs are never rerun, so rerunning continues it.
    Writes OUT/results.csv (every validation point: tokens, training wall and CPU seconds, bits/base,
    per-case bits/base on soft-masked data, essentiality AUROC at the end when asked), OUT/curves.png
    (mean and min-max over seeds against tokens, wall and CPU time) and OUT/summary.md (paired
    differences to the first arm with seed-bootstrap 95% intervals, tokens and time to a target loss)."""
    out = run_ablation(
        args.config, args.out, dry_run=args.dry_run, max_seeds=args.seeds, tokens=args.tokens, essentiality=_essentiality_columns
    )
    if not args.dry_run:
        print((out / "summary.md").read_text(), end="")
        print(f"results: {out / 'results.csv'}; curves: {out / 'curves.png'}")
    return 0


# ------------------------------------------------------------------------------------------ helpers


def _essentiality_columns(model_dir, settings: dict) -> dict:
    """The ablation's essentiality columns: AUROC (95% interval) of a model and the gene-length baseline."""
    from dnalm.checkpoint import load_pretrained
    from dnalm.data.store import default_genome
    from dnalm.eval.essentiality import essentiality_report, score_essentiality

    genome, gff = default_genome()
    cols = [settings["label_column"]] if settings.get("label_column") else None
    res = score_essentiality(
        load_pretrained(model_dir), settings.get("fasta", genome), settings.get("gff", gff), settings["labels"],
        label_columns=cols, window=settings.get("window"), max_genes=settings.get("max_genes"),
        batch_size=settings.get("batch_size", 8), progress=False, need_both_classes=True,
    )  # fmt: skip
    rep = essentiality_report(res)[0]
    return {
        "ess_auroc": rep["auroc"], "ess_auroc_lo": rep["ci95"][0], "ess_auroc_hi": rep["ci95"][1],
        "ess_gene_length_auroc": rep["auroc_gene_length"], "ess_genes": rep["n"],
    }  # fmt: skip



