"""Mamba-2 block before/after the SSD-scan rewrite of issue 16, side by side in one run.

One ``Mamba2Block`` (width 128, d_state 128, headdim 64, chunk 256: the ``--only families`` block of
``bench_blocks.py``), forward + backward, batch 1, float32, thread CPU time, at each length. "before" runs
the same block with ``dnalm.models.mamba2.ssd_chunked`` and ``_causal_conv`` swapped for the einsum scan
and the ``nn.Conv1d`` call they replaced (``benchmarks/ssd_before.py``); "after" is dnalm's scan. The two alternate repeat by repeat (rotating
order) after a warm-up each; outputs and input gradients are checked equal first. The floor is the
block's matmul FLOPs counted on the "before" form (``FlopCounterMode``: the same count as the families
table) at the measured single-core GEMM peak; both sides are divided by the same floor.

    python benchmarks/bench_ssd.py --threads 1 --lengths 1024,4096,16384,65536

``--hnet PRESET``: instead, one dnaHNet training step (forward, LM loss + the router's aux loss, backward)
of a fresh model of that preset on random A/C/G/T windows (``--batch`` x ``--seq-len``), before and after
(the swap covers the Mamba-2 layers and the dechunk EMA, which runs on the same scan), interleaved.

    python benchmarks/bench_ssd.py --threads 1 --hnet dnahnet-tiny-32 --batch 8 --seq-len 512
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_blocks  # noqa: E402
from ssd_before import causal_conv_before, ssd_chunked_before  # noqa: E402

import dnalm.models.mamba2 as mamba2  # noqa: E402


@contextlib.contextmanager
def before_scan():
    import dnalm.models.hnet as hnet

    saved = mamba2.ssd_chunked, mamba2._causal_conv, hnet.ssd_chunked
    mamba2.ssd_chunked, mamba2._causal_conv, hnet.ssd_chunked = ssd_chunked_before, causal_conv_before, ssd_chunked_before
    try:
        yield
    finally:
        mamba2.ssd_chunked, mamba2._causal_conv, hnet.ssd_chunked = saved


def run(block, x, g, before: bool) -> tuple[float, float]:
    """(forward, backward) thread CPU seconds."""
    with before_scan() if before else contextlib.nullcontext():
        x = x.detach().requires_grad_()
        c = time.thread_time()
        y = block(x)
        f = time.thread_time() - c
        c = time.thread_time()
        y.backward(g)
        return f, time.thread_time() - c


def bench_hnet(preset: str, batch: int, seq_len: int, repeats: int) -> None:
    from dnalm.models import get_preset
    from dnalm.models.lm import DNALM, lm_loss

    torch.manual_seed(0)
    model = DNALM(get_preset(preset)).train()
    ids = torch.randint(7, 11, (batch, seq_len + 1))

    def step(before: bool) -> float:
        with before_scan() if before else contextlib.nullcontext():
            model.zero_grad(set_to_none=True)
            c = time.thread_time()
            out = model(ids[:, :-1])
            (lm_loss(out.logits, ids[:, 1:]) + out.aux_loss).backward()
            return time.thread_time() - c

    grads = []
    for before in (True, False):
        step(before)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    err = (grads[0] - grads[1]).abs().max().item()
    times = {True: [], False: []}
    for r in range(repeats):
        for before in ((True, False) if r % 2 == 0 else (False, True)):
            times[before].append(step(before))
    tb, ta = statistics.median(times[True]), statistics.median(times[False])
    print(f"{preset} training step, batch {batch} x {seq_len}, {torch.get_num_threads()} thread(s), thread CPU time, "
          f"medians of {repeats}: before {tb:.3f} s, after {ta:.3f} s, before / after {tb / ta:.2f}; "
          f"max |grad before - after| {err:.2e}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="1024,4096,16384,65536")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds per length (default 5)")
    ap.add_argument("--slow", type=float, default=10.0,
                    help="after a warm-up slower than this many seconds, one timed round only (default 10)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hnet", default=None, metavar="PRESET", help="time a dnaHNet training step instead")
    ap.add_argument("--batch", type=int, default=8, help="--hnet: batch size (default 8)")
    ap.add_argument("--seq-len", type=int, default=512, help="--hnet: window length (default 512)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.hnet:
        bench_hnet(args.hnet, args.batch, args.seq_len, max(args.repeats, 5))
        return 0
    peak = bench_blocks.peak_gemm_flops()
    print(f"Mamba2Block width {args.width}, batch 1, float32, fwd+bwd, {torch.get_num_threads()} thread(s), torch "
          f"{torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, peak GEMM "
          f"{peak / 1e9:.1f} GFLOP/s; medians of thread CPU time")
    print("| L | before fwd | before bwd | before total (floor) | after fwd | after bwd | after total (floor) | "
          "before / after | rounds |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for L in [int(v) for v in args.lengths.split(",")]:
        torch.manual_seed(0)
        block = mamba2.Mamba2Block(args.width)
        x, g = torch.randn(1, L, args.width), torch.randn(1, L, args.width)
        outs = []
        for before in (True, False):
            xi = x.clone().requires_grad_()
            with before_scan() if before else contextlib.nullcontext():
                y = block(xi)
                y.backward(g)
            outs.append((y.detach(), xi.grad))
            block.zero_grad()
        err = max((outs[0][0] - outs[1][0]).abs().max().item(), (outs[0][1] - outs[1][1]).abs().max().item())
        scale = max(outs[0][0].abs().max().item(), outs[0][1].abs().max().item())
        if err > 1e-4 * scale:
            raise RuntimeError(f"L={L}: before and after disagree by {err} (scale {scale})")
        with before_scan():
            flops = bench_blocks.matmul_flops(block, x, g)
        warm = {True: run(block, x, g, True), False: run(block, x, g, False)}
        times = {True: [], False: []}
        slow = sum(warm[True]) > args.slow
        for r in range(1 if slow else args.repeats):
            for before in ((True, False) if r % 2 == 0 else (False, True)):
                times[before].append(run(block, x, g, before))
        med = {k: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v)) for k, v in times.items()}
        tb, ta = sum(med[True]), sum(med[False])
        floor = flops / peak
        print(f"| {L:,} | {med[True][0]:.3f} | {med[True][1]:.3f} | {tb:.3f} ({floor / tb:.2f}) | {med[False][0]:.3f} | "
              f"{med[False][1]:.3f} | {ta:.3f} ({floor / ta:.2f}) | {tb / ta:.2f} | {len(times[True])} |", flush=True)
        print(f"  L={L}: max |before - after| {err:.2e} (largest value {scale:.2e}); matmul GFLOP "
              f"{flops / 1e9:.2f}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
