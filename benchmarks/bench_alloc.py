"""How the memory allocator's settings change a long HyenaDNA block's speed and peak memory (CPU).

At long lengths each forward + backward allocates gigabytes of large tensors. glibc hands every block above
its mmap threshold (at most 32 MiB by default) back to the kernel when it is freed, so the next pass
faults the same pages in again, zero-filled by the kernel. This script runs one ``HyenaBlock`` forward +
backward (width 128, batch 1, one thread) in a fresh process per setting, the settings interleaved round
by round, and reports the median seconds per pass, system time, minor page faults and peak RSS:

- ``default``: nothing set;
- ``glibc``: ``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296`` (freed memory stays in
  the process and is reused);
- ``thp``: ``THP_MEM_ALLOC_ENABLE=1`` (PyTorch aligns large tensors to 2 MB and asks for transparent huge
  pages; needs /sys/kernel/mm/transparent_hugepage/enabled = always or madvise).

    python benchmarks/bench_alloc.py --length 65536 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

SETTINGS = {
    "default": {},
    "glibc": {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "4294967296"},
    "thp": {"THP_MEM_ALLOC_ENABLE": "1"},
}

CHILD = """
import json, resource, sys, time
import torch
torch.set_num_threads(1)
from dnalm.models.hyena import HyenaBlock, HyenaConfig
L, passes = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
block = HyenaBlock(HyenaConfig(d_model=128, l_max=L)).train()
x, g = torch.randn(1, L, 128), torch.randn(1, L, 128)
def step():
    xx = x.clone().requires_grad_()
    block(xx).backward(g)
step()  # warm-up
r0, times = resource.getrusage(resource.RUSAGE_SELF), []
for _ in range(passes):
    c = time.thread_time()
    step()
    times.append(time.thread_time() - c)
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"s": sorted(times)[len(times) // 2], "sys_s": (r1.ru_stime - r0.ru_stime) / passes,
                  "minflt": (r1.ru_minflt - r0.ru_minflt) // passes, "peak_mib": r1.ru_maxrss / 1024}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, default=65536, help="tokens per pass (default 65536)")
    ap.add_argument("--passes", type=int, default=3, help="timed passes per process after a warm-up (default 3)")
    ap.add_argument("--rounds", type=int, default=3, help="processes per setting, interleaved (default 3)")
    args = ap.parse_args()
    results: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for r in range(args.rounds):
        for name, env in SETTINGS.items():
            out = subprocess.run([sys.executable, "-c", CHILD, str(args.length), str(args.passes)],
                                 env={**os.environ, **env}, capture_output=True, text=True, check=True)
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {name}: {results[name][-1]}", file=sys.stderr, flush=True)
    print(f"HyenaBlock width 128, L = {args.length:,}, forward + backward, 1 thread; medians over "
          f"{args.rounds} processes x {args.passes} passes")
    print("| allocator setting | s per pass | system s per pass | minor faults per pass | peak RSS (MiB) |")
    print("|---|---:|---:|---:|---:|")
    for name, rows in results.items():
        med = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
        print(f"| {name} | {med['s']:.3f} | {med['sys_s']:.3f} | {med['minflt']:,.0f} | {med['peak_mib']:,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
