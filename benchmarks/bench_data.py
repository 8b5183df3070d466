"""Data pipeline benchmark, measured side by side in one run (so machine load affects both sides alike).

1. Random windows: the token store's RandomWindowSampler against pyfaidx random access on the same
   (uncompressed, indexed) FASTA, for the very same windows. pyfaidx returns strings, so it is timed
   twice: fetching only, and fetching + encoding to token ids and the case mask (what a trainer needs and
   what the store hands out). The store side also draws the windows (RNG); the pyfaidx side replays
   precomputed coordinates. The sides alternate batch by batch; throughput is bases per second of this
   thread's CPU time (time.thread_time), so time spent preempted by other processes on a shared machine
   is not counted. Batches hold 262,144 bases (HyenaDNA's 1k x 256, ..., 32k x 8).
2. prepare throughput: MB of sequence per second for ``prepare`` of the genome (gzip input, checksums,
   N runs, index), best and median of a few forced rebuilds.

Usage::

    python benchmarks/bench_data.py                       # the embedded E. coli genome (4.6 Mb)
    python benchmarks/bench_data.py --fasta genome.fa.gz --seq-len 1024 16384 --rounds 5
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


def main() -> int:
    from pyfaidx import Fasta

    from dnalm.data.samplers import RandomWindowSampler
    from dnalm.data.store import TokenStore, default_genome, prepare
    from dnalm.tokenizer import BYTE_IS_LOWER, BYTE_TO_ID

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fasta", default=None, help="FASTA to use (default: the embedded E. coli genome)")
    p.add_argument("--seq-len", type=int, nargs="+", default=[1024, 8192, 32768], help="window lengths")
    p.add_argument("--tokens-per-batch", type=int, default=262_144,
                   help="bases per batch; windows per batch = this / window (HyenaDNA: 1k x 256, ... 32k x 8)")
    p.add_argument("--batches", type=int, default=20, help="batches per round and side")
    p.add_argument("--rounds", type=int, default=3, help="passes over the planned batches")
    p.add_argument("--prepare-repeats", type=int, default=3, help="forced prepare runs to time")
    args = p.parse_args()

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
        rows = []
        for L in args.seq_len:
            sampler = RandomWindowSampler(store, "train", seed=0, max_n_fraction=1.0)
            # Draw the windows once (coordinates), so both sides read exactly the same ones.
            batch = max(1, args.tokens_per_batch // L)
            plan = [sampler.next_batch(batch, L) for _ in range(args.batches)]
            coords = [(b.record.copy(), b.start.copy()) for b in plan]
            sampler = RandomWindowSampler(store, "train", seed=0, max_n_fraction=1.0)
            start_state = sampler.state_dict()
            t_store, t_fetch, t_fetch_enc = 0.0, 0.0, 0.0
            # CPU time of this thread, not wall time: on a loaded machine a short call that gets preempted
            # would otherwise be charged the other processes' time slices.
            clock = time.thread_time
            for _ in range(args.rounds):
                sampler.load_state_dict(start_state)  # replay the planned windows
                # Interleave the sides batch by batch, so bursts of load on the machine hit all of them.
                for recs, starts in coords:
                    t0 = clock()
                    got = sampler.next_batch(batch, L)
                    t1 = clock()
                    for r, s in zip(recs.tolist(), starts.tolist()):
                        fa[names[r]][s : s + L]
                    t2 = clock()
                    out = np.empty((len(recs), L), dtype=np.uint8)
                    low = np.empty((len(recs), L), dtype=bool)
                    for i, (r, s) in enumerate(zip(recs.tolist(), starts.tolist())):
                        raw = fa[names[r]][s : s + L].encode()
                        # ids + case mask, like the store; bytes.translate is the fastest encoder we know
                        out[i] = np.frombuffer(raw.translate(to_id), dtype=np.uint8)
                        low[i] = np.frombuffer(raw.translate(is_lower), dtype=np.bool_)
                    t3 = clock()
                    t_store, t_fetch, t_fetch_enc = t_store + t1 - t0, t_fetch + t2 - t1, t_fetch_enc + t3 - t2
                    assert np.array_equal(got.start, starts)  # the store side read the planned windows too
            # The same windows: check one batch against pyfaidx.
            b = plan[0]
            for i in range(3):
                r, s = int(b.record[i]), int(b.start[i])
                assert BYTE_TO_ID[np.frombuffer(fa[names[r]][s : s + L].encode(), dtype=np.uint8)].tolist() == b.ids[i].tolist()
            bases = args.rounds * args.batches * batch * L
            rows.append((L, batch, bases / t_store, bases / t_fetch, bases / t_fetch_enc))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print("## Data pipeline\n")
    print("`" + " ".join(["python benchmarks/bench_data.py", *sys.argv[1:]]) + "`")
    print(f"on {platform.processor() or platform.machine()}, Python {platform.python_version()}; "
          f"genome {fasta.name} ({mb:.2f} Mb); {args.rounds} rounds x {args.batches} batches of "
          f"{args.tokens_per_batch:,} bases, the sides interleaved batch by batch; thread CPU time.\n")
    print("| window x batch | store (bases/s) | pyfaidx fetch (bases/s) | pyfaidx fetch + encode ids & mask (bases/s) | store / fetch | store / fetch+encode |")
    print("|---:|---:|---:|---:|---:|---:|")
    for L, batch, s, f, fe in rows:
        print(f"| {L:,} x {batch} | {s / 1e6:,.0f} M | {f / 1e6:,.1f} M | {fe / 1e6:,.1f} M | {s / f:,.1f}x | {s / fe:,.1f}x |")
    print(f"\n`prepare` ({fasta.name}, {mb:.2f} Mb): best {mb / min(times):.1f} MB/s, "
          f"median {mb / statistics.median(times):.1f} MB/s of sequence over {len(times)} forced runs "
          "(includes SHA-256 of the input, N runs, index and manifest, atomic rename).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
