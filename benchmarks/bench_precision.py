"""CPU precision and threads: training step time of the demo model (and HyenaDNA tiny) in float32 vs bf16
autocast under the native ISA and under ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` (PyTorch and
oneDNN skip their AVX512 / AMX kernels, as on a CPU without native bf16), with what ``precision: auto``
picks in each (the trainer's benchmark of the model's own step, and the inference commands' benchmark of its
matmul shapes); then 1 vs 2 threads with and without a busy neighbour (a process spinning on one core),
and the thread count dnalm's default chooses in each case.

Each ISA setting runs in its own subprocess (the variables must be set before torch loads). Within a
process the settings are interleaved repeat by repeat and the median is reported, so that load from other
processes affects them alike; wall time and process CPU time are both recorded.

Usage (the numbers in BENCHMARKS.md come from this command):

    python benchmarks/bench_precision.py --json bench_precision.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_step(which: str, batch: int | None):
    """(one training step as a function, model description) for the demo model or HyenaDNA tiny."""
    import torch

    from dnalm.models import get_preset
    from dnalm.models.lm import DNALM, lm_loss
    from dnalm.train.demo import demo_config
    from dnalm.train.optim import make_optimizer

    torch.manual_seed(0)
    if which == "demo":
        cfg = demo_config()
        config, L, B = cfg.model, cfg.data.seq_len, batch or cfg.train.batch_size
    else:
        config, L, B = get_preset("hyenadna-tiny-1k"), 1024, batch or 4
    model = DNALM(config)
    opt = make_optimizer(model, 1e-3, 0.1, (0.9, 0.95))
    ids = torch.randint(7, 11, (B, L + 1))
    x, y = ids[:, :-1], ids[:, 1:]
    w = torch.ones(B, L)

    def step(precision) -> None:
        opt.zero_grad(set_to_none=True)
        with precision.autocast("cpu"):
            out = model(x)
        lm_loss(out.logits, y, w).backward()
        opt.step()

    return step, model, (B, L), f"{which} ({model.num_parameters():,} parameters, batch {B} x {L})"


def timed(fn) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def worker_precision(models: list[str], reps: int, threads: int) -> dict:
    """fp32 vs bf16 step times at ``threads`` threads, and auto's pick (fresh cache), in this process's ISA."""
    import torch

    from pathlib import Path

    from dnalm.runtime import Precision, matmul_shapes, model_step_bench, resolve_precision

    torch.set_num_threads(threads)
    out = {"isa": os.environ.get("ATEN_CPU_CAPABILITY", "native"), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "threads": threads, "models": {}}
    for which in models:
        step, model, (B, L), what = make_step(which, None)
        shapes = matmul_shapes(model, B * L)
        with tempfile.TemporaryDirectory() as cache:  # fresh caches: measured now
            t0 = time.perf_counter()
            auto = resolve_precision("auto", "cpu", shapes, cache=Path(cache),
                                     bench=model_step_bench(model, model.config.vocab_size, L))
            bench_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            auto_mm = resolve_precision("auto", "cpu", shapes, cache=Path(cache))
            bench_mm_s = time.perf_counter() - t0
        ps = {"fp32": Precision("fp32", ""), "bf16": Precision("bf16", "")}
        for p in ps.values():
            step(p)  # warm-up
        times = {k: [] for k in ps}
        for r in range(reps):
            for k in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
                times[k].append(timed(lambda: step(ps[k])))
        row = {"what": what, "auto": auto.name, "auto_reason": auto.reason, "auto_benchmark_s": bench_s,
               "auto_matmuls": auto_mm.name, "auto_matmuls_reason": auto_mm.reason, "auto_matmuls_benchmark_s": bench_mm_s}
        for k, ts in times.items():
            row[f"{k}_wall_s"] = statistics.median(t[0] for t in ts)
            row[f"{k}_cpu_s"] = statistics.median(t[1] for t in ts)
        row["bf16_over_fp32"] = row["bf16_wall_s"] / row["fp32_wall_s"]
        out["models"][which] = row
        log(f"  {out['isa']}: {what}: fp32 {row['fp32_wall_s']:.3f} s, bf16 {row['bf16_wall_s']:.3f} s "
            f"({row['bf16_over_fp32']:.2f}x); auto -> {auto.name} (model step, {bench_s:.2f} s: {auto.reason}); "
            f"matmul benchmark -> {auto_mm.name} ({bench_mm_s:.2f} s: {auto_mm.reason})")
    return out


def worker_threads(reps: int) -> dict:
    """Demo-model fp32 step time at 1 and 2 threads, and the default's choice, in this process's situation."""
    import torch

    from dnalm.runtime import Precision, choose_threads

    default = choose_threads(None, environ={})
    step, _, _, what = make_step("demo", None)
    fp32 = Precision("fp32", "")
    times: dict[int, list] = {1: [], 2: []}
    for n in (1, 2):
        torch.set_num_threads(n)
        step(fp32)
    for r in range(reps):
        for n in ((1, 2) if r % 2 == 0 else (2, 1)):
            torch.set_num_threads(n)
            times[n].append(timed(lambda: step(fp32)))
    row = {"what": what, "default_threads": default.n, "default_reason": default.reason}
    for n, ts in times.items():
        row[f"t{n}_wall_s"] = statistics.median(t[0] for t in ts)
        row[f"t{n}_cpu_s"] = statistics.median(t[1] for t in ts)
    best = min(row["t1_wall_s"], row["t2_wall_s"])
    row["default_wall_s"] = row[f"t{default.n}_wall_s"]
    row["default_over_best"] = row["default_wall_s"] / best
    return row


def run_worker(args: list[str], env_extra: dict) -> dict:
    env = {**os.environ, **env_extra}
    env.pop("OMP_NUM_THREADS", None)
    res = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True)
    sys.stderr.write(res.stderr)
    if res.returncode:
        raise SystemExit(f"worker {args} failed")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5, help="timed steps per setting (median reported)")
    ap.add_argument("--models", default="demo,hyenadna", help="comma-separated: demo, hyenadna")
    ap.add_argument("--threads", type=int, default=1, help="threads for the precision comparison")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--worker", choices=["precision", "threads"], default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker == "precision":
        print(json.dumps(worker_precision(a.models.split(","), a.reps, a.threads)))
        return
    if a.worker == "threads":
        print(json.dumps(worker_threads(a.reps)))
        return

    results = {"load_at_start": os.getloadavg(), "cpus": os.cpu_count(), "precision": [], "threads": {}}
    for env in ({}, AVX2):
        log(f"precision, {'ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2' if env else 'native ISA'}:")
        results["precision"].append(run_worker(
            ["--worker", "precision", "--models", a.models, "--reps", str(a.reps), "--threads", str(a.threads)], env))
    for label in ("alone", "with a spinning neighbour"):
        neighbour = None
        if label != "alone":
            neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(1.0)
        try:
            row = run_worker(["--worker", "threads", "--reps", str(a.reps)], {})
        finally:
            if neighbour is not None:
                neighbour.kill()
                neighbour.wait()
        row["load"] = os.getloadavg()
        results["threads"][label] = row
        log(f"threads, {label}: 1 thread {row['t1_wall_s']:.3f} s, 2 threads {row['t2_wall_s']:.3f} s; default "
            f"{row['default_threads']} ({row['default_reason']}) -> {row['default_over_best']:.2f}x the best")
    results["load_at_end"] = os.getloadavg()
    text = json.dumps(results, indent=2)
    if a.json:
        with open(a.json, "w") as fh:
            fh.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
