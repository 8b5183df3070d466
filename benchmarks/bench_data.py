"""Data pipeline benchmark, measured side by side in one run (so machine load affects every side alike).

1. Random windows: the token store's RandomWindowSampler against pyfaidx random access on the same
   (uncompressed, indexed) FASTA, for the very same windows. pyfaidx returns strings, so it is timed
   twice: fetching only, and fetching + encoding to token ids and the case mask (what the store hands out).
   The store is timed twice too: ids + case mask (the like-for-like comparison) and ids only
   (``case_mask=False``, what the trainer reads when no loss weight uses the mask). The store sides also
   draw their windows (RNG); the pyfaidx sides replay the drawn coordinates. Throughput is bases per
   second of this thread's CPU time (time.thread_time), so time spent preempted by other processes on a
   shared machine is not counted. Batches hold 262,144 bases (HyenaDNA's 1k x 256, ..., 32k x 8).

   Two schedules, each repeated ``--repeats`` times with the sides in rotating order; reported are medians
   over repeats:
   - blocks: each side reads all ``--batches`` planned batches in a row (steady state, as a loader loop);
   - batch by batch: the sides alternate after every batch, so each store call starts with caches the
     pyfaidx side has just filled (as when the trainer calls the sampler between training steps).
2. prepare throughput: MB of sequence per second for ``prepare`` of the genome (gzip input, checksums,
   N runs, index), best and median of a few forced rebuilds.

Usage::

    python benchmarks/bench_data.py                       # the embedded E. coli genome (4.6 Mb)
    python benchmarks/bench_data.py --fasta genome.fa.gz --seq-len 1024 16384 --repeats 9
"""

from __future__ import annotations

import argparse
import gzip
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_plain_fasta(src: Path, dst: Path, width: int = 80) -> None:
    """Decompress (if needed) and rewrap to fixed-width lines, which pyfaidx needs."""
    opener = gzip.open if src.read_bytes()[:2] == b"\x1f\x8b" else open
    with opener(src, "rt") as fh, open(dst, "w") as out:
        seq: list[str] = []
        for line in fh:
            if line.startswith(">"):
                if seq:
                    s = "".join(seq)
                    out.writelines(s[i : i + width] + "\n" for i in range(0, len(s), width))
                    seq = []
                out.write(line)
            else:
                seq.append(line.strip())
        s = "".join(seq)
        out.writelines(s[i : i + width] + "\n" for i in range(0, len(s), width))


# In this cyclic order (rotated every repeat) no side directly follows another that reads the same file
# for the same windows, so no side is timed on data the previous side has just brought into the caches.
SIDES = ("store ids+mask", "pyfaidx fetch", "store ids", "pyfaidx fetch+encode")
COLUMNS = ("store ids+mask", "store ids", "pyfaidx fetch", "pyfaidx fetch+encode")


def main() -> int:
    import torch
    from pyfaidx import Fasta

    from dnalm.data.samplers import RandomWindowSampler
    from dnalm.data.store import TokenStore, default_genome, prepare
    from dnalm.tokenizer import BYTE_IS_LOWER, BYTE_TO_ID

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fasta", default=None, help="FASTA to use (default: the embedded E. coli genome)")
    p.add_argument("--seq-len", type=int, nargs="+", default=[1024, 8192, 32768], help="window lengths")
    p.add_argument("--tokens-per-batch", type=int, default=262_144,
                   help="bases per batch; windows per batch = this / window (HyenaDNA: 1k x 256, ... 32k x 8)")
    p.add_argument("--batches", type=int, default=20, help="planned batches (each side reads all of them per repeat)")
    p.add_argument("--repeats", type=int, default=7, help="repeats of each schedule (medians are reported)")
    p.add_argument("--prepare-repeats", type=int, default=3, help="forced prepare runs to time")
    args = p.parse_args()
    torch.set_num_threads(1)  # thread CPU time must see all the work (torch.flip serves reverse complement)

    fasta = Path(args.fasta) if args.fasta else default_genome()[0]
    tmp = Path(tempfile.mkdtemp(prefix="bench-data-"))
    try:
        # ---- prepare throughput
        times = []
        for _ in range(args.prepare_repeats):
            t0 = time.perf_counter()
            m = prepare([fasta], tmp / "store", val_fraction=0.0, test_fraction=0.0, force=True, progress=False)
            times.append(time.perf_counter() - t0)
        mb = m["counts"]["bases"] / 1e6
        store = TokenStore.open(tmp / "store")

        # ---- random windows: store vs pyfaidx, same windows
        plain = tmp / "genome.fa"
        write_plain_fasta(fasta, plain)
        fa = Fasta(str(plain), as_raw=True, sequence_always_upper=False, rebuild=True)
        names = [r.name for r in store.records]
        to_id, is_lower = BYTE_TO_ID.tobytes(), BYTE_IS_LOWER.astype(np.uint8).tobytes()
        results = {}  # (schedule, L) -> {side: bases/s}
        for L in args.seq_len:
            n = max(1, args.tokens_per_batch // L)
            # Draw the windows once (coordinates); every side reads exactly these.
            sampler = RandomWindowSampler(store, "train", seed=0, max_n_fraction=1.0)
            start_state = sampler.state_dict()
            plan = [sampler.next_batch(n, L) for _ in range(args.batches)]
            coords = [(b.record.tolist(), b.start.tolist()) for b in plan]
            samplers = {side: RandomWindowSampler(store, "train", seed=0, max_n_fraction=1.0)
                        for side in ("store ids+mask", "store ids")}

            def read(side: str, k: int) -> None:
                """Batch k of the plan, as ``side`` reads it."""
                if side.startswith("store"):
                    got = samplers[side].next_batch(n, L, case_mask=side == "store ids+mask")
                    assert got.start[0] == plan[k].start[0]  # the store side replays the plan too
                    return
                recs, starts = coords[k]
                if side == "pyfaidx fetch":
                    for r, s in zip(recs, starts):
                        fa[names[r]][s : s + L]
                    return
                ids = np.empty((n, L), dtype=np.uint8)
                low = np.empty((n, L), dtype=bool)
                for i, (r, s) in enumerate(zip(recs, starts)):
                    raw = fa[names[r]][s : s + L].encode()
                    # ids + case mask, like the store; bytes.translate is the fastest encoder we know
                    ids[i] = np.frombuffer(raw.translate(to_id), dtype=np.uint8)
                    low[i] = np.frombuffer(raw.translate(is_lower), dtype=np.bool_)

            # CPU time of this thread, not wall time: on a loaded machine a short call that gets preempted
            # would otherwise be charged the other processes' time slices.
            clock = time.thread_time
            for schedule in ("blocks", "batch by batch"):
                per_side: dict[str, list[float]] = {side: [] for side in SIDES}
                for rep in range(args.repeats):
                    order = SIDES[rep % len(SIDES):] + SIDES[: rep % len(SIDES)]  # rotate who goes first
                    spent = dict.fromkeys(SIDES, 0.0)
                    for s in samplers.values():
                        s.load_state_dict(start_state)  # replay the planned windows
                    if schedule == "blocks":
                        for side in order:
                            t0 = clock()
                            for k in range(args.batches):
                                read(side, k)
                            spent[side] += clock() - t0
                    else:
                        for k in range(args.batches):
                            for side in order:
                                t0 = clock()
                                read(side, k)
                                spent[side] += clock() - t0
                    for side in SIDES:
                        per_side[side].append(args.batches * n * L / spent[side])
                results[(schedule, L)] = {side: statistics.median(v) for side, v in per_side.items()}
            # The same windows: check some rows against pyfaidx.
            for i in range(min(3, n)):
                r, s = int(plan[0].record[i]), int(plan[0].start[i])
                raw = fa[names[r]][s : s + L].encode()
                assert BYTE_TO_ID[np.frombuffer(raw, dtype=np.uint8)].tolist() == plan[0].ids[i].tolist()
                assert BYTE_IS_LOWER[np.frombuffer(raw, dtype=np.uint8)].tolist() == plan[0].lower[i].tolist()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print("## Data pipeline\n")
    print("`" + " ".join(["python benchmarks/bench_data.py", *sys.argv[1:]]) + "`")
    print(f"on {platform.processor() or platform.machine()}, Python {platform.python_version()}; "
          f"genome {fasta.name} ({mb:.2f} Mb); {args.batches} batches of {args.tokens_per_batch:,} bases per side "
          f"and repeat, medians of {args.repeats} repeats; thread CPU time.")
    for schedule in ("blocks", "batch by batch"):
        print(f"\n{schedule}:\n")
        print("| window x batch | store ids+mask | store ids | pyfaidx fetch | pyfaidx fetch+encode ids & mask "
              "| ids+mask / fetch+encode | ids / fetch+encode |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for L in args.seq_len:
            r = results[(schedule, L)]
            fe = r["pyfaidx fetch+encode"]
            cells = " | ".join(f"{r[side] / 1e6:,.0f} M/s" for side in COLUMNS)
            print(f"| {L:,} x {max(1, args.tokens_per_batch // L)} | {cells} "
                  f"| {r['store ids+mask'] / fe:,.1f}x | {r['store ids'] / fe:,.1f}x |")
    print(f"\n`prepare` ({fasta.name}, {mb:.2f} Mb): best {mb / min(times):.1f} MB/s, "
          f"median {mb / statistics.median(times):.1f} MB/s of sequence over {len(times)} forced runs "
          "(includes SHA-256 of the input, N runs, index and manifest, atomic rename).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
