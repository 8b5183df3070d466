"""Hyena block vs Transformer++ (causal attention) block, and the FFT long convolution, on CPU.

Three measurements, all in one run so that machine load affects both sides alike:

1. Blocks: forward + backward wall time of one ``HyenaBlock`` and one ``TransformerBlock`` of the same
   width at each length (batch 1 by default), interleaved repeat by repeat; the ratio attention/Hyena
   at each length and the crossover length (where Hyena becomes faster, interpolated on log-log axes).
   Attention lengths whose projected time (quadratic extrapolation from the previous length) exceeds
   ``--attn-budget`` seconds are skipped and reported as such.
2. FFT convolution: ``fft_long_conv`` forward time (no autograd) on (batch, width, L) from 1k to 1M,
   with time / (n log2 n) (n the FFT size) to show the O(L log L) growth.
3. Profile: ``torch.profiler`` tables for ``fft_long_conv`` forward + backward and for the Hyena block.

Usage (the numbers in BENCHMARKS.md come from this command):

    python benchmarks/bench_blocks.py --threads 1 --json bench_blocks.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import torch

from dnalm.models.hyena import HyenaConfig
from dnalm.models.hyena import HyenaBlock
from dnalm.models.transformer import TransformerBlock
from dnalm.ops.fftconv import fft_long_conv, fft_size


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fwd_bwd(block: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) for one forward + backward."""
    x = x.detach().requires_grad_()
    w, c = time.perf_counter(), time.process_time()
    block(x).backward(g)
    return time.perf_counter() - w, time.process_time() - c


def swiglu_hidden(width: int) -> int:
    """SwiGLU hidden width of the Transformer++ presets: 8/3 * width rounded up to a multiple of 64."""
    return int(math.ceil(8 * width / 3 / 64) * 64)


def bench_blocks(
    width: int, batch: int, lengths: list[int], repeats: int, attn_budget: float, slow: float
) -> list[dict]:
    rows = []
    attn_prev: tuple[int, float] | None = None  # (L, wall seconds) of the last attention point
    for L in lengths:
        torch.manual_seed(0)
        hyena = HyenaBlock(HyenaConfig(d_model=width, l_max=L))
        attn = TransformerBlock(width, max(1, width // 32), swiglu_hidden(width), L)
        x, g = torch.randn(batch, L, width), torch.randn(batch, L, width)
        projected = None if attn_prev is None else attn_prev[1] * (L / attn_prev[0]) ** 2  # quadratic in L
        run_attn = projected is None or projected <= attn_budget
        blocks = [("hyena", hyena)] + ([("attention", attn)] if run_attn else [])
        # the first call warms up (allocations, kernels); a slow first call is itself the measurement
        first = {name: fwd_bwd(b, x, g) for name, b in blocks}
        times = {name: [first[name]] if first[name][0] > slow else [] for name, _ in blocks}
        for _ in range(repeats):  # interleaved, so that load changes hit both sides
            for name, b in blocks:
                if first[name][0] <= slow:
                    times[name].append(fwd_bwd(b, x, g))
        row: dict = {"L": L}
        for name in times:
            row[f"{name}_wall_s"] = statistics.median(t[0] for t in times[name])
            row[f"{name}_cpu_s"] = statistics.median(t[1] for t in times[name])
            row[f"{name}_runs"] = len(times[name])
        if run_attn:
            row["ratio_cpu"] = row["attention_cpu_s"] / row["hyena_cpu_s"]
            row["ratio_wall"] = row["attention_wall_s"] / row["hyena_wall_s"]
            attn_prev = (L, row["attention_wall_s"])
        else:
            row["attention_skipped"] = f"projected {projected:.0f} s wall > budget {attn_budget:.0f} s"
        rows.append(row)
        log(f"blocks L={L}: {row}")
    return rows


def crossover(rows: list[dict], key: str = "ratio_cpu") -> str:
    pts = [(r["L"], r[key]) for r in rows if key in r]
    if not pts:
        return "no attention lengths measured"
    if pts[0][1] >= 1:
        return f"Hyena is already faster at the shortest measured length ({pts[0][0]})"
    for (l0, r0), (l1, r1) in zip(pts, pts[1:]):
        if r0 < 1 <= r1:  # interpolate log(ratio) linearly in log(L)
            a = math.log(r0) / (math.log(r0) - math.log(r1))
            est = math.exp(math.log(l0) + a * (math.log(l1) - math.log(l0)))
            return f"between {l0} and {l1} (log-log interpolation: about {est:,.0f})"
    return f"not reached up to {pts[-1][0]}"


def bench_fft(width: int, batch: int, lengths: list[int], repeats: int, slow: float) -> list[dict]:
    rows = []
    for L in lengths:
        g = torch.Generator().manual_seed(0)
        u, h, b = torch.randn(batch, width, L, generator=g), torch.randn(width, L, generator=g), torch.randn(width)
        ts = []
        with torch.no_grad():
            for i in range(repeats + 1):
                w, c = time.perf_counter(), time.process_time()
                fft_long_conv(u, h, b)
                ts.append((time.perf_counter() - w, time.process_time() - c))
                if i == 0 and ts[0][0] > slow:
                    break
        ts = ts if len(ts) == 1 else ts[1:]  # drop the warm-up unless it is the only (slow) run
        n = fft_size(L)
        cpu = statistics.median(t[1] for t in ts)
        rows.append({"L": L, "n": n, "wall_s": statistics.median(t[0] for t in ts), "cpu_s": cpu, "runs": len(ts),
                     "cpu_ns_per_nlogn": cpu / (n * math.log2(n)) * 1e9})
        log(f"fft L={L}: {rows[-1]}")
        del u, h
    return rows


def profile_tables(width: int, batch: int, fft_L: int, block_L: int, rows: int) -> dict[str, str]:
    from torch.profiler import ProfilerActivity, profile

    out = {}
    g = torch.Generator().manual_seed(0)
    u = torch.randn(batch, width, fft_L, generator=g).requires_grad_()
    h = torch.randn(width, fft_L, generator=g).requires_grad_()
    b = torch.randn(width).requires_grad_()
    gy = torch.randn(batch, width, fft_L)
    fft_long_conv(u, h, b).backward(gy)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as p:
        for _ in range(3):  # three runs: less noise per op
            fft_long_conv(u, h, b).backward(gy)
    out[f"fft_long_conv forward+backward, B={batch} C={width} L={fft_L}"] = p.key_averages().table(
        sort_by="self_cpu_time_total", row_limit=rows
    )
    blk = HyenaBlock(HyenaConfig(d_model=width, l_max=block_L))
    x, gx = torch.randn(batch, block_L, width), torch.randn(batch, block_L, width)
    fwd_bwd(blk, x, gx)
    with profile(activities=[ProfilerActivity.CPU]) as p:
        for _ in range(3):
            fwd_bwd(blk, x, gx)
    out[f"HyenaBlock forward+backward, B={batch} D={width} L={block_L}"] = p.key_averages().table(
        sort_by="self_cpu_time_total", row_limit=rows
    )
    return out


def markdown(blocks: list[dict], fft: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"Width {args.width}, batch {args.batch}, float32, {torch.get_num_threads()} thread(s), "
        f"torch {torch.__version__}."
        " Medians; CPU = process CPU time (robust to other jobs on the machine), wall = elapsed time.",
        "",
        "| L | Hyena fwd+bwd CPU (s) | attention fwd+bwd CPU (s) | attention / Hyena (CPU) | (wall) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in blocks:
        if "ratio_cpu" in r:
            lines.append(f"| {r['L']:,} | {r['hyena_cpu_s']:.3f} | {r['attention_cpu_s']:.3f} | "
                         f"{r['ratio_cpu']:.2f} | {r['ratio_wall']:.2f} |")
        else:
            lines.append(f"| {r['L']:,} | {r['hyena_cpu_s']:.3f} | skipped ({r['attention_skipped']}) | | |")
    lines += ["", f"Crossover (CPU time): {crossover(blocks)}. (wall time): {crossover(blocks, 'ratio_wall')}.", ""]
    lines += ["| L | FFT size n | fft_long_conv forward CPU (s) | wall (s) | CPU ns per n log2 n |",
              "|---:|---:|---:|---:|---:|"]
    for r in fft:
        lines.append(
            f"| {r['L']:,} | {r['n']:,} | {r['cpu_s']:.4f} | {r['wall_s']:.4f} | {r['cpu_ns_per_nlogn']:.3f} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=128, help="model width D (default 128)")
    ap.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    ap.add_argument("--lengths", default="256,512,1024,2048,4096,8192,16384,32768,65536",
                    help="block lengths (default 256 ... 65536)")
    ap.add_argument("--fft-lengths", default=",".join(str(2**k) for k in range(10, 21)),
                    help="FFT convolution lengths (default 1024 ... 1048576)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per point after a warm-up (default 3)")
    ap.add_argument("--slow", type=float, default=5.0,
                    help="a warm-up slower than this many seconds is the only run (default 5)")
    ap.add_argument("--attn-budget", type=float, default=90.0,
                    help="skip attention lengths projected to take longer than this many seconds (default 90)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: PyTorch's choice)")
    ap.add_argument("--profile-fft-length", type=int, default=65536, help="length profiled for fft_long_conv")
    ap.add_argument("--profile-block-length", type=int, default=16384, help="length profiled for the Hyena block")
    ap.add_argument("--no-profile", action="store_true", help="skip the profiler tables")
    ap.add_argument("--json", default=None, help="also write the raw numbers to this JSON file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = [int(x) for x in args.lengths.split(",")]
    fft_lengths = [int(x) for x in args.fft_lengths.split(",")]
    t0 = time.perf_counter()
    blocks = bench_blocks(args.width, args.batch, lengths, args.repeats, args.attn_budget, args.slow)
    fft = bench_fft(args.width, args.batch, fft_lengths, args.repeats, args.slow)
    tables = {} if args.no_profile else profile_tables(
        args.width, args.batch, args.profile_fft_length, args.profile_block_length, 14
    )
    print(markdown(blocks, fft, args))
    for title, table in tables.items():
        print(f"\nProfile: {title}\n{table}")
    print(f"\nTotal benchmark time {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "threads": torch.get_num_threads(), "blocks": blocks, "fft": fft,
                       "profiles": tables}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
