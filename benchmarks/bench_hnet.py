"""dnaHNet benchmarks, each measured side by side in one run (machine load affects both sides alike).

``speed``: forward time (inference, batch 1, float32) of a dnaHNet preset against a Transformer++
(family "transformer") of equal parameter count, at lengths 1k to 16k, on real E. coli sequence. The two
models alternate repeat by repeat; the table gives medians of wall time and of process CPU time (with one
thread, close to the time on an idle core), their ratio, and the compression each dnaHNet stage reached
on that input (the router decides the chunk counts, so the speed depends on it: pass ``--model`` with a
trained checkpoint to time a router that has learned its ratios).

``train``: a plain PyTorch loop, ``DNALM(cfg)`` + ``lm_loss`` + ``out.aux_loss`` with AdamW, on random
windows of the embedded E. coli genome (first 90%; the last 5% is held out for the validation NLL),
logging the per-stage compression (positions per chunk) and boundary probability against the targets.
``--save DIR`` writes the trained model (safetensors) for ``speed --model DIR`` and ``dnalm boundaries``.

Usage::

    python benchmarks/bench_hnet.py speed --threads 1 --json bench_hnet_speed.json
    python benchmarks/bench_hnet.py train --steps 200 --save runs/bench_hnet --json bench_hnet_train.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import platform
import statistics
import sys
import time
from importlib import resources

import numpy as np
import torch


def ecoli_ids() -> np.ndarray:
    """The embedded E. coli K-12 MG1655 genome (NC_000913.3) as token ids."""
    from dnalm.tokenizer import encode_bytes

    path = resources.files("dnalm") / "resources" / "ecoli_k12_mg1655.fa.gz"
    with gzip.open(str(path), "rb") as f:
        f.readline()
        return encode_bytes(f.read().replace(b"\n", b""))[0]


def matched_transformer(n_params: int, max_len: int, d_model: int = 128):
    """A Transformer++ of width ``d_model`` (head size 32) with ``n_params`` parameters: the depth whose
    exact-match SwiGLU width is closest to the standard 8/3 * d_model, that width rounded to 8."""
    from dnalm.models.transformer import TransformerConfig
    from dnalm.models.lm import DNALM

    def count(n_layer: int, mlp: int) -> int:
        cfg = TransformerConfig(n_layer=n_layer, d_model=d_model, n_head=d_model // 32, max_len=max_len, mlp_hidden=mlp)
        with torch.device("meta"):
            return cfg, DNALM(cfg).num_parameters()

    best = None
    for n_layer in range(1, 25):
        _, base = count(n_layer, 8)
        _, more = count(n_layer, 16)
        per8 = more - base  # parameters per 8 SwiGLU units across all layers
        mlp = 8 + round((n_params - base) / per8) * 8
        if mlp < 8:
            continue
        score = abs(math.log(mlp / (8 * d_model / 3)))
        if best is None or score < best[0]:
            best = (score, *count(n_layer, mlp))
    return best[1], best[2]


def _stage_metrics(model, ids: torch.Tensor) -> dict[str, float]:
    out = model(ids)
    return {k: v for k, v in out.metrics.items() if k.endswith("compression")}


def speed(args: argparse.Namespace) -> dict:
    import dnalm
    from dnalm.models.lm import DNALM
    from dnalm.models import get_preset

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    top = max(args.lengths) + 2
    if args.model:
        hnet = dnalm.load(args.model)
    else:
        hnet = DNALM(get_preset(args.preset))
    hnet.config.max_len = max(hnet.config.max_len, top)  # RoPE tables grow lazily; only the guard reads it
    hnet.eval()
    n_h = hnet.num_parameters()
    t_cfg, n_t = matched_transformer(n_h, top, args.transformer_width)
    torch.manual_seed(0)
    trans = DNALM(t_cfg).eval()
    genome = ecoli_ids()
    rows = []
    print(
        f"dnaHNet {args.model or args.preset}: {n_h:,} params | Transformer++ {t_cfg.n_layer} layers x "
        f"{t_cfg.d_model} (SwiGLU {t_cfg.mlp_hidden}): {n_t:,} params | threads {torch.get_num_threads()}",
        flush=True,
    )
    skip_transformer = False
    for L in args.lengths:
        ids = torch.from_numpy(genome[1_000_000 : 1_000_000 + L].astype(np.int64))[None]
        times: dict[str, list[tuple[float, float]]] = {"hnet": [], "transformer": []}
        with torch.inference_mode():
            comp = _stage_metrics(hnet, ids)  # also the warm-up of the dnaHNet
            sides = [("hnet", hnet)] + ([] if skip_transformer else [("transformer", trans)])
            if not skip_transformer:
                trans(ids)  # warm-up
            for _ in range(args.repeats):
                for name, m in sides:
                    w0, c0 = time.perf_counter(), time.process_time()
                    m(ids)
                    times[name].append((time.perf_counter() - w0, time.process_time() - c0))
        row = {"L": L, **{f"hnet_{k.replace('/', '_')}": round(v, 3) for k, v in comp.items()}}
        for name in times:
            if times[name]:
                row[f"{name}_wall_s"] = statistics.median(t[0] for t in times[name])
                row[f"{name}_cpu_s"] = statistics.median(t[1] for t in times[name])
        if "transformer_wall_s" in row:
            row["ratio_wall"] = row["transformer_wall_s"] / row["hnet_wall_s"]
            row["ratio_cpu"] = row["transformer_cpu_s"] / row["hnet_cpu_s"]
            # attention is ~quadratic: stop before one forward would exceed the budget
            skip_transformer = row["transformer_wall_s"] * 4 > args.budget_s
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {
        "bench": "hnet_speed",
        "hnet": args.model or args.preset,
        "hnet_params": n_h,
        "transformer": {
            "n_layer": t_cfg.n_layer, "d_model": t_cfg.d_model, "n_head": t_cfg.n_head, "mlp_hidden": t_cfg.mlp_hidden,
            "params": n_t,
        },
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
    }


@torch.no_grad()
def _validation_nll(model, genome: np.ndarray, seq_len: int, n_windows: int) -> float:
    from dnalm.models.lm import lm_loss
    from dnalm.tokenizer import BOS

    model.eval()
    start = int(len(genome) * 0.95)
    starts = np.linspace(start, len(genome) - seq_len - 1, n_windows).astype(int)
    ids = np.stack([np.concatenate([[BOS], genome[s : s + seq_len]]) for s in starts]).astype(np.int64)
    ids = torch.from_numpy(ids)
    losses = [float(lm_loss(model(ids[i : i + 4, :-1]).logits, ids[i : i + 4, 1:])) for i in range(0, n_windows, 4)]
    model.train()
    return float(np.mean(losses))


def train(args: argparse.Namespace) -> dict:
    from dnalm.models.lm import DNALM, lm_loss
    from dnalm.models import get_preset
    from dnalm.tokenizer import BOS
    from dnalm.train.optim import param_groups

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = get_preset(args.preset)
    model = DNALM(cfg)
    # the trainer's weight-decay groups: none on vectors, the embedding, and the (scale-free) router
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=args.lr, betas=(0.9, 0.95))
    genome = ecoli_ids()
    train_end = int(len(genome) * 0.9)
    rng = np.random.default_rng(args.seed)
    S = cfg.n_stages
    log, t0 = [], time.perf_counter()
    val0 = _validation_nll(model, genome, args.seq_len, 16)
    print(f"{args.preset}: {model.num_parameters():,} params, targets {cfg.target_ratios}; val NLL at init {val0:.4f}")
    window: list[dict] = []
    for step in range(1, args.steps + 1):
        warm = min(1.0, step / args.warmup)
        cos = 0.5 * (1 + math.cos(math.pi * min(1.0, step / args.steps)))
        for g in opt.param_groups:
            g["lr"] = args.lr * warm * (0.1 + 0.9 * cos)
        starts = rng.integers(0, train_end - args.seq_len - 1, size=args.batch_size)
        ids = np.stack([np.concatenate([[BOS], genome[s : s + args.seq_len]]) for s in starts]).astype(np.int64)
        ids = torch.from_numpy(ids)
        out = model(ids[:, :-1])
        nll = lm_loss(out.logits, ids[:, 1:])
        (nll + out.aux_loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        window.append({"nll": float(nll.detach()), **out.metrics})
        if step % args.log_every == 0 or step == args.steps:
            # compression is positions per chunk (1/F): average F over the window, then invert, so that a
            # single step with a collapsed router does not dominate the mean
            avg = {
                k: float(1 / np.mean([1 / w[k] for w in window]) if k.endswith("compression") else np.mean([w[k] for w in window]))
                for k in window[0]
            }
            entry = {"step": step, "elapsed_s": round(time.perf_counter() - t0, 1), **avg}
            log.append(entry)
            window = []
            comp = " ".join(
                f"s{s}: x{avg[f'stage{s}/compression']:.2f} (target {cfg.target_ratios[s]:g}) p {avg[f'stage{s}/boundary_prob']:.3f}"
                for s in range(S)
            )
            print(f"step {step:4d}  nll {avg['nll']:.4f}  {comp}  {entry['elapsed_s']:.0f}s", flush=True)
    val = _validation_nll(model, genome, args.seq_len, 16)
    print(f"validation NLL (last 5% of the genome, 16 windows): {val:.4f} nats/base (init {val0:.4f}, uniform 4 bases {math.log(4):.4f})")
    if args.save:
        from dnalm.checkpoint import save_pretrained

        save_pretrained(model, args.save)
        print(f"saved -> {args.save}")
    return {
        "bench": "hnet_train",
        "preset": args.preset,
        "params": model.num_parameters(),
        "targets": cfg.target_ratios,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "lr": args.lr,
        "val_nll_init": val0,
        "val_nll": val,
        "log": log,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed", help="forward time vs a parameter-matched Transformer++")
    s.add_argument("--preset", default="dnahnet-tiny-32")
    s.add_argument("--model", default=None, help="a trained dnaHNet checkpoint or run directory (instead of --preset)")
    s.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--transformer-width", type=int, default=128, help="d_model of the matched Transformer++")
    s.add_argument("--threads", type=int, default=1, help="torch threads (0 = PyTorch default)")
    s.add_argument("--budget-s", type=float, default=120.0, help="skip the Transformer once one forward would exceed this")
    s.add_argument("--json", default=None, help="write the results here")
    t = sub.add_parser("train", help="plain-loop training on E. coli with per-stage compression logs")
    t.add_argument("--preset", default="dnahnet-tiny-32")
    t.add_argument("--steps", type=int, default=200)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--seq-len", type=int, default=512)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--warmup", type=int, default=30)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--log-every", type=int, default=25)
    t.add_argument("--threads", type=int, default=0, help="torch threads (0 = PyTorch default)")
    t.add_argument("--save", default=None, help="save the trained model to this directory")
    t.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    result = speed(args) if args.what == "speed" else train(args)
    if args.json:
        from dnalm.checkpoint import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
