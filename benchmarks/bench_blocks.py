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

Two more measurements, each selected with ``--only`` (issue 16, "Blocks" in BENCHMARKS.md):

4. ``--only reference``: dnalm's ``HyenaBlock`` against a reference block written from the published
   HyenaDNA code's math (``benchmarks/hyenadna_reference.py``) holding a copy of the same weights (checked
   equal first), forward + backward, interleaved repeats, thread CPU time; ratio reference / dnalm, and
   each block's fraction of its compute floor; each block's time inside its GEMM kernels (torch.profiler)
   and reference time / dnalm's GEMM time, the ratio dnalm could not exceed even if every non-matmul
   operation were free.
5. ``--only families``: StripedHyena 2's SE, MR and LI blocks, a Mamba-2 block (the SSD scan) and a
   Transformer++ (attention) block of the same width, forward + backward; each block's time against the
   attention block's and against its own floor.

The compute floor of a block is its matmul FLOPs (forward + backward, counted by
``torch.utils.flop_counter.FlopCounterMode``: mm, addmm, bmm, convolutions, attention) at the measured
single-core peak GEMM rate (a 2048^3 float32 matmul); "fraction of floor" = floor time / measured time.
FFTs and elementwise work are not in the floor, so a block with FFT convolutions cannot reach 1.0.

    python benchmarks/bench_blocks.py --only reference --threads 1 --lengths 1024,4096,16384,65536
    python benchmarks/bench_blocks.py --only families --threads 1 --lengths 1024,4096,16384,65536
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


def fwd_bwd_thread(block: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> float:
    """Thread CPU seconds of one forward + backward (not counting time the thread was preempted)."""
    x = x.detach().requires_grad_()
    c = time.thread_time()
    block(x).backward(g)
    return time.thread_time() - c


def peak_gemm_flops(repeats: int = 5) -> float:
    """Measured single-core float32 GEMM rate (FLOP/s, best of ``repeats``) on a 2048^3 matmul."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * 2048**3 / best


def _timed(f) -> float:
    c = time.thread_time()
    f()
    return time.thread_time() - c


def matmul_flops(block: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> int:
    """Matmul-type FLOPs (mm, addmm, bmm, convolutions, causal attention) of one forward + backward.

    FlopCounterMode's count for ``convolution_backward`` of grouped (depthwise) convolutions is far too
    large, so convolutions count as 3x their forward; the CPU attention kernel is not counted by it, so
    causal attention adds 6 L^2 D per attention layer (QK^T and AV over the causal half, forward 2 L^2 D,
    backward twice that)."""
    from torch.utils.flop_counter import FlopCounterMode

    from dnalm.models.attention import CausalSelfAttention

    x = x.detach().requires_grad_()
    with FlopCounterMode(display=False) as fc:
        block(x).backward(g)
    counts = {str(k): v for k, v in fc.get_flop_counts().get("Global", {}).items()}
    total = sum(v for k, v in counts.items() if "convolution" not in k) + 3 * counts.get("aten.convolution", 0)
    n_attn = sum(isinstance(m, CausalSelfAttention) for m in block.modules())
    return int(total + n_attn * 6 * x.shape[1] ** 2 * x.shape[2])


GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def gemm_seconds(block: torch.nn.Module, x: torch.Tensor, g: torch.Tensor, runs: int = 3) -> float:
    """Seconds per forward + backward spent inside the block's GEMM kernels (mm, addmm, bmm, baddbmm),
    from torch.profiler's self CPU time, median over ``runs``. The ratio reference time / this is the
    most dnalm could gain if everything besides its matmuls took no time at all."""
    from torch.profiler import ProfilerActivity, profile

    per_run = []
    for _ in range(runs):
        with profile(activities=[ProfilerActivity.CPU]) as p:
            fwd_bwd_thread(block, x, g)
        per_run.append(sum(e.self_cpu_time_total for e in p.key_averages() if e.key in GEMM_OPS) / 1e6)
    return statistics.median(per_run)


def interleaved(blocks: dict[str, torch.nn.Module], x: torch.Tensor, g: torch.Tensor, repeats: int,
                slow: float) -> dict[str, list[float]]:
    """Thread CPU seconds per block: a warm-up each, then ``repeats`` rounds in rotating order."""
    first = {name: fwd_bwd_thread(b, x, g) for name, b in blocks.items()}
    times = {name: [] for name in blocks}
    names = list(blocks)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            if first[name] > slow and times[name]:
                continue  # a slow block: one timed run beyond the warm-up is enough
            times[name].append(fwd_bwd_thread(blocks[name], x, g))
    return times


def bench_reference(width: int, lengths: list[int], repeats: int, slow: float, peak: float) -> list[dict]:
    """dnalm's HyenaBlock against the published-math reference block with the same weights."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
    import hyenadna_reference

    rows = []
    for L in lengths:
        torch.manual_seed(0)
        dn = HyenaBlock(HyenaConfig(d_model=width, l_max=L)).train()
        ref = hyenadna_reference.from_dnalm(dn).train()
        x, g = torch.randn(1, L, width), torch.randn(1, L, width)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = dn(xa), ref(xb)
        ya.backward(g)
        yb.backward(g)
        err = max((ya - yb).abs().max().item(), (xa.grad - xb.grad).abs().max().item())
        if err > 1e-3:
            raise RuntimeError(f"L={L}: dnalm and the reference block disagree by {err}")
        flops = {"dnalm": matmul_flops(dn, x, g), "reference": matmul_flops(ref, x, g)}
        times = interleaved({"dnalm": dn, "reference": ref}, x, g, repeats, slow)
        row: dict = {"L": L, "max_abs_diff": err}
        for name, ts in times.items():
            t = statistics.median(ts)
            row[f"{name}_s"], row[f"{name}_runs"] = t, len(ts)
            row[f"{name}_matmul_gflop"] = flops[name] / 1e9
            row[f"{name}_floor_fraction"] = flops[name] / peak / t
            row[f"{name}_gemm_s"] = gemm_seconds(dn if name == "dnalm" else ref, x, g)
        row["ratio"] = row["reference_s"] / row["dnalm_s"]
        row["ratio_bound"] = row["reference_s"] / row["dnalm_gemm_s"]  # dnalm with everything but GEMMs free
        rows.append(row)
        log(f"reference L={L}: {row}")
    return rows


def family_blocks(width: int, L: int) -> dict[str, torch.nn.Module]:
    """Same-width blocks of the other families: StripedHyena 2 SE/MR/LI, Mamba-2, attention."""
    from dnalm.models.mamba2 import Mamba2Block
    from dnalm.models.striped_hyena import StripedHyenaBackbone, StripedHyenaConfig

    sh2 = StripedHyenaBackbone(StripedHyenaConfig(version=2, n_layer=3, d_model=width, layers=["se", "mr", "li"],
                                                  n_head=max(1, width // 32), max_len=L))
    blocks = {f"SH2 {k.upper()}": sh2.layers[i] for i, k in enumerate(["se", "mr", "li"])}
    blocks["Mamba-2"] = Mamba2Block(width)
    blocks["attention"] = TransformerBlock(width, max(1, width // 32), swiglu_hidden(width), L)
    return blocks


def bench_families(width: int, lengths: list[int], repeats: int, slow: float, peak: float,
                   attn_budget: float) -> list[dict]:
    rows = []
    attn_prev: tuple[int, float] | None = None
    for L in lengths:
        torch.manual_seed(0)
        blocks = family_blocks(width, L)
        projected = None if attn_prev is None else attn_prev[1] * (L / attn_prev[0]) ** 2
        if projected is not None and projected > attn_budget:
            del blocks["attention"]
        x, g = torch.randn(1, L, width), torch.randn(1, L, width)
        flops = {name: matmul_flops(b, x, g) for name, b in blocks.items()}
        times = interleaved(blocks, x, g, repeats, slow)
        row: dict = {"L": L}
        for name, ts in times.items():
            t = statistics.median(ts)
            row[name] = {"s": t, "runs": len(ts), "matmul_gflop": flops[name] / 1e9,
                         "floor_fraction": flops[name] / peak / t}
        if "attention" in row:
            attn_prev = (L, row["attention"]["s"])
            for name in times:
                row[name]["vs_attention"] = row["attention"]["s"] / row[name]["s"]
        else:
            row["attention_skipped"] = f"projected {projected:.0f} s > budget {attn_budget:.0f} s"
        rows.append(row)
        log(f"families L={L}: {row}")
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
    ap.add_argument("--only", choices=["reference", "families"], default=None,
                    help="run only the reference-block comparison or the families table (default: the "
                         "Hyena/attention, FFT and profile measurements)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.only:
        lengths = [int(x) for x in args.lengths.split(",")]
        peak = peak_gemm_flops()
        cap = torch.backends.cpu.get_cpu_capability()
        head = (f"width {args.width}, batch 1, float32, forward + backward, {torch.get_num_threads()} thread(s), "
                f"torch {torch.__version__}, CPU capability {cap}, peak GEMM {peak / 1e9:.1f} GFLOP/s; "
                "medians of thread CPU time")
        if args.only == "reference":
            rows = bench_reference(args.width, lengths, args.repeats, args.slow, peak)
            print(head)
            print("| L | dnalm (s) | reference (s) | reference / dnalm | dnalm floor fraction | "
                  "reference floor fraction | matmul GFLOP | dnalm GEMMs (s) | reference GEMMs (s) | "
                  "reference / dnalm GEMMs |")
            print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for r in rows:
                print(f"| {r['L']:,} | {r['dnalm_s']:.3f} | {r['reference_s']:.3f} | {r['ratio']:.2f} | "
                      f"{r['dnalm_floor_fraction']:.2f} | {r['reference_floor_fraction']:.2f} | "
                      f"{r['dnalm_matmul_gflop']:.2f} | {r['dnalm_gemm_s']:.3f} | {r['reference_gemm_s']:.3f} | "
                      f"{r['ratio_bound']:.2f} |")
        else:
            rows = bench_families(args.width, lengths, args.repeats, args.slow, peak, args.attn_budget)
            print(head)
            names = [n for n in rows[0] if n not in ("L", "attention_skipped")]
            print("| L | " + " | ".join(f"{n} s (floor frac, attn/it)" for n in names) + " |")
            print("|---:|" + "---:|" * len(names))
            for r in rows:
                cells = []
                for n in names:
                    if n not in r:
                        cells.append("skipped")
                        continue
                    c = r[n]
                    va = f", {c['vs_attention']:.2f}x" if "vs_attention" in c else ""
                    cells.append(f"{c['s']:.3f} ({c['floor_fraction']:.2f}{va})")
                print(f"| {r['L']:,} | " + " | ".join(cells) + " |")
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"args": vars(args), "peak_gemm_flops": peak, "cpu_capability": cap, "rows": rows},
                          fh, indent=1)
        return 0
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
