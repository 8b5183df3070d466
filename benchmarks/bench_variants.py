"""Variant-scoring throughput on CPU: variants per second at window 1,024 and 8,192, measured side by side in
one run (the two window sizes alternate round by round, so machine load affects both alike).

What is timed: ``dnalm.eval.variants.score_variants`` end to end (reading the variant table, placing and
building windows, batched forward passes, deltas), with a fresh window cache each call, on real BRCA1
SNVs (Findlay et al. 2018) in GRCh38. Each variant costs one alt window; reference windows are shared
only where several variants sit at one position.

Prefix sharing (``dnalm.eval.scoring``): a causal model scores the positions before a variant once for
the reference and alternative windows. ``--sharing both`` (the default) times the shared path and the
plain path (every window in full, as before prefix sharing) side by side in the same rounds and checks
that their deltas agree; ``on`` / ``off`` time one of them. Besides wall time the script reports process CPU time,
which on a shared machine is closer to what an idle core would take (with ``--threads 1``).

Model: by default a freshly initialised HyenaDNA of the demo's shape (2 layers, width 128) with
``l_max`` 8,194 so that both windows fit (weights do not change the speed); ``--model`` takes any run,
checkpoint or preset whose context holds the largest window.

Usage::

    python benchmarks/bench_variants.py                          # 40 BRCA1 SNVs (tests/data), shared region
    python benchmarks/bench_variants.py --windows 1024 8192 --rounds 3 --threads 1 --json bench_variants.json
    python benchmarks/bench_variants.py --fasta ../shared/data/variants/brca1_region_grch38.fa.gz \\
        --variants ../shared/data/variants/brca1_findlay2018_demo200.tsv --n-variants 200
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared/data/variants/brca1_region_grch38.fa.gz"
# The 20 kb test slice makes 8 kb windows pile up at its ends (and share reference windows), which
# flatters the long window; the whole 1.18 Mb region keeps every window centred on its variant.
FASTA = SHARED if SHARED.is_file() else REPO / "tests/data/brca1_chr17_43044001-43064000.fa"


def main() -> int:
    import dnalm
    from dnalm.models.hyena import HyenaConfig
    from dnalm.eval.variants import read_variants, score_variants
    from dnalm.models.lm import DNALM

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="run/checkpoint/preset (default: fresh 2 x 128 HyenaDNA, l_max 8194)")
    p.add_argument("--fasta", default=str(FASTA), help="reference (default: the shared 1.18 Mb BRCA1 region if present)")
    p.add_argument("--variants", default=str(REPO / "tests/data/brca1_findlay2018_demo40.tsv"))
    p.add_argument("--n-variants", type=int, default=40, help="first N variants of the table")
    p.add_argument("--windows", type=int, nargs="+", default=[1024, 8192])
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per window (after one warm-up call each)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--sharing", choices=["both", "on", "off"], default="both",
                   help="prefix sharing: time the shared and the plain path side by side (both), or one of them")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    if args.model:
        model = dnalm.load(args.model)
        name = args.model
    else:
        torch.manual_seed(0)
        model = DNALM(HyenaConfig(n_layer=2, d_model=128, l_max=max(args.windows) + 2))
        name = "HyenaDNA 2 x 128, l_max %d (fresh weights)" % (max(args.windows) + 2)
    model.eval()
    variants, _ = read_variants(args.variants)
    variants = variants[: args.n_variants]

    import dnalm.eval.scoring as scoring

    min_prefix = getattr(scoring, "MIN_SHARED_PREFIX", None)  # None: a dnalm without prefix sharing
    modes = {"both": ["shared", "plain"], "on": ["shared"], "off": ["plain"]}[args.sharing]
    if min_prefix is None:
        modes = ["plain"]

    def run(w: int, mode: str) -> tuple[float, float, int, list[float]]:
        if min_prefix is not None:  # the plain path: no prefix is long enough to share
            scoring.MIN_SHARED_PREFIX = min_prefix if mode == "shared" else 10**12
        t0, c0 = time.perf_counter(), time.thread_time()
        res = score_variants(model, args.fasta, variants, window=w, batch_size=args.batch_size, progress=False)
        deltas = [r["delta_sum"] for r in res.rows]
        return time.perf_counter() - t0, time.thread_time() - c0, res.n_windows_scored, deltas

    cases = [(w, m) for w in args.windows for m in modes]
    for w, m in cases:  # warm-up (allocator, FFT plans, filter caches)
        run(w, m)
    times: dict[tuple, list[tuple[float, float]]] = {c: [] for c in cases}
    n_windows: dict[tuple, int] = {}
    deltas: dict[tuple, list[float]] = {}
    for r in range(args.rounds):
        order = cases if r % 2 == 0 else list(reversed(cases))
        for c in order:
            wall, cpu, nw, d = run(*c)
            times[c].append((wall, cpu))
            n_windows[c], deltas[c] = nw, d
            print(f"round {r + 1} window {c[0]} {c[1]}: {wall:.2f} s wall, {cpu:.2f} s CPU", flush=True)

    n = len(variants)
    rows = []
    for w, m in cases:
        wall = statistics.median(t[0] for t in times[(w, m)])
        cpu = statistics.median(t[1] for t in times[(w, m)])
        row = {"window": w, "path": m, "variants": n, "windows_scored": n_windows[(w, m)], "wall_s": wall,
               "cpu_s": cpu, "variants_per_s_wall": n / wall, "variants_per_s_cpu": n / cpu}
        if m == "shared" and (w, "plain") in deltas:
            row["max_abs_delta_diff"] = max(abs(a - b) for a, b in zip(deltas[(w, m)], deltas[(w, "plain")]))
            row["max_abs_delta"] = max(abs(b) for b in deltas[(w, "plain")])
        rows.append(row)
    print(f"\nreference: {args.fasta}")
    print(f"model: {name}; {n} variants; batch {args.batch_size}; {args.threads} thread(s); "
          f"torch {torch.__version__}; {platform.processor() or platform.machine()}; CPU = thread CPU time")
    print(f"{'window':>7} {'path':>7} {'windows':>8} {'wall s':>8} {'CPU s':>8} {'var/s (wall)':>13} "
          f"{'var/s (CPU)':>12}")
    for r in rows:
        print(f"{r['window']:>7} {r['path']:>7} {r['windows_scored']:>8} {r['wall_s']:>8.2f} {r['cpu_s']:>8.2f} "
              f"{r['variants_per_s_wall']:>13.2f} {r['variants_per_s_cpu']:>12.2f}")
    for w in args.windows:
        if (w, "shared") in times and (w, "plain") in times:
            a = next(r for r in rows if r["window"] == w and r["path"] == "shared")
            b = next(r for r in rows if r["window"] == w and r["path"] == "plain")
            print(f"window {w}: shared / plain throughput {b['cpu_s'] / a['cpu_s']:.2f}x (CPU), "
                  f"{b['wall_s'] / a['wall_s']:.2f}x (wall); max |delta_sum difference| "
                  f"{a['max_abs_delta_diff']:.2e} (largest |delta_sum| {a['max_abs_delta']:.3g})")
    if args.json:
        out = {"model": name, "threads": args.threads, "batch_size": args.batch_size, "rounds": args.rounds,
               "torch": torch.__version__, "results": rows,
               # to compare runs of different checkouts: the same weights give the same checksum
               "weights_checksum": float(sum(p.double().abs().sum() for p in model.state_dict().values())),
               "delta_sum": {f"{w} {m}": deltas[(w, m)] for w, m in cases}}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
