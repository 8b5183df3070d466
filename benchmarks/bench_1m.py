"""Score 1,000,000 real bases in one pass on a CPU: time and peak memory, beside windows.

The sequence is the first 1,000,000 bases of E. coli K-12 MG1655 (dnalm/resources/ecoli_k12_mg1655.fa.gz),
the model the hyenadna-large-1m preset (8 layers, width 256, l_max 1,000,002) with fresh weights
(seed 0): time and memory do not depend on the weight values. Every measurement is the real command
line, ``dnalm score``, run in its own child process; peak resident memory and CPU time come from that
child's rusage (os.wait4), which is what ``/usr/bin/time -v`` reports.

Runs, in this order (the same model each time):

- ``one_pass``: the 1,000,000 bases as one record (1,000,001 tokens with [BOS]): ``forward_long``.
- ``windows``: the first ``--window-bases`` of those bases cut into records of ``--window`` bases, each
  scored by the ordinary forward (``dnalm.score``, batch 1); context does not cross window boundaries.
  Windows are scored one after another, so the peak is that of one window: 8 windows show the same
  peak as all 31 (pass ``--window-bases 0`` to score them all; the time then grows about 4x).
- ``plain@N`` and ``lean@N`` (N = ``--side-length``): one record of N bases through the ordinary forward
  and through ``forward_long``, side by side: the lean path's memory saving at equal length, and a check
  that both give the same log-likelihood.

Reproduce (about half an hour on a shared 2-core machine, most of it the one-pass run)::

    python benchmarks/bench_1m.py --json bench_1m.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GENOME = REPO / "dnalm" / "resources" / "ecoli_k12_mg1655.fa.gz"
PRESET = "hyenadna-large-1m"


def write_fasta(path: Path, records: list[tuple[str, str]]) -> None:
    with open(path, "w") as fh:
        for name, seq in records:
            fh.write(f">{name}\n")
            for i in range(0, len(seq), 80):
                fh.write(seq[i : i + 80] + "\n")


def run_child(label: str, args: list[str], out_tsv: Path) -> dict:
    """Run ``dnalm score`` in a child process; wall time, CPU time and peak RSS from its rusage."""
    cmd = [sys.executable, "-m", "dnalm", "score", PRESET, *args, "--out", str(out_tsv), "--quiet"]
    print(f"[{label}] {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    log = out_tsv.with_suffix(".log")
    with open(log, "w") as fh:  # files, not pipes: a full pipe would block the child
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    out = log.read_text()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"[{label}] failed ({code}):\n{out[-3000:]}")
    rows = [line.split("\t") for line in out_tsv.read_text().splitlines()]
    header, body = rows[0], rows[1:]
    scored = sum(int(r[header.index("scored")]) for r in body)
    loglik = sum(float(r[header.index("loglik_sum")]) for r in body)
    res = {
        "label": label,
        "records": len(body),
        "bases": sum(int(r[header.index("length")]) for r in body),
        "scored": scored,
        "loglik_sum": loglik,
        "modes": sorted({r[header.index("mode")] for r in body}),
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_gib": usage.ru_maxrss * 1024 / 2**30,  # ru_maxrss is in KiB on Linux
        "summary": out.strip(),
    }
    print(f"[{label}] {res['wall_s']:.0f} s wall, {res['cpu_s']:.0f} s CPU, peak RSS {res['peak_rss_gib']:.2f} GiB",
          file=sys.stderr, flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, default=1_000_000, help="bases scored in one pass")
    ap.add_argument("--window", type=int, default=32_768, help="bases per window in the windowed run")
    ap.add_argument("--window-bases", type=int, default=262_144, help="bases scored in windows (0 = all)")
    ap.add_argument("--side-length", type=int, default=131_072, help="length of the plain vs lean comparison")
    ap.add_argument("--skip-windows", action="store_true", help="leave out the windowed run")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    sys.path.insert(0, str(REPO))
    import torch

    from dnalm.data.sequences import read_sequences
    from dnalm.eval.longcontext import estimate_memory
    from dnalm.models.lm import DNALM
    from dnalm.models import get_preset
    from dnalm.tokenizer import decode

    rec = next(read_sequences(GENOME))
    seq = decode(rec.ids[: args.length], rec.lower[: args.length])
    assert len(seq) == args.length, f"the genome has only {len(rec):,} bases"
    with torch.device("meta"):  # parameter count and config only; no memory
        model = DNALM(get_preset(PRESET))
    est = estimate_memory(model, args.length + 1, "logprobs")
    est_side = estimate_memory(model, args.side_length + 1, "logprobs")
    results: dict = {
        "sequence": f"{rec.name} bases 1-{args.length:,} ({GENOME.name})",
        "preset": PRESET,
        "weights": "fresh (seed 0)",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "estimate_gib": est.total / 2**30,
        "estimate_parts_gib": {k: v / 2**30 for k, v in est.parts.items()},
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        one = tmp / "one.fa"
        write_fasta(one, [("ecoli_1_1000000", seq)])
        side = tmp / "side.fa"
        write_fasta(side, [(f"ecoli_1_{args.side_length}", seq[: args.side_length])])
        runs = results["runs"]
        runs.append(run_child("one_pass", ["--fasta", str(one)], tmp / "one.tsv"))
        runs[-1]["estimate_gib"] = est.total / 2**30
        if not args.skip_windows:
            win = tmp / "windows.fa"
            part = seq[: args.window_bases or len(seq)]
            w = args.window
            write_fasta(win, [(f"w{i // w}", part[i : i + w]) for i in range(0, len(part), w)])
            runs.append(run_child(f"windows of {args.window:,}", ["--fasta", str(win), "--batch-size", "1",
                                                                  "--long-from", str(10**9)], tmp / "win.tsv"))
        n = args.side_length
        runs.append(run_child(f"plain@{n:,}", ["--fasta", str(side), "--long-from", str(10**9), "--batch-size", "1"],
                              tmp / "plain.tsv"))
        runs.append(run_child(f"lean@{n:,}", ["--fasta", str(side), "--long-from", "1"], tmp / "lean.tsv"))
        runs[-1]["estimate_gib"] = est_side.total / 2**30
    plain, lean = runs[-2], runs[-1]
    results["side_by_side"] = {
        "length": n,
        "plain_over_lean_peak_rss": plain["peak_rss_gib"] / lean["peak_rss_gib"],
        "loglik_rel_diff": abs(plain["loglik_sum"] - lean["loglik_sum"]) / abs(plain["loglik_sum"]),
    }

    print(f"\n{results['sequence']}, {PRESET} ({results['weights']}), torch {results['torch']}, "
          f"{results['threads']} threads")
    print(f"{'run':<22} {'records':>8} {'bases':>11} {'wall s':>8} {'CPU s':>8} {'peak RSS GiB':>13} {'estimate':>9}"
          f" {'bits/base':>10}")
    for r in runs:
        est_txt = f"{r['estimate_gib']:.2f}" if "estimate_gib" in r else ""
        bpb = -r["loglik_sum"] / r["scored"] / 0.6931471805599453
        print(f"{r['label']:<22} {r['records']:>8} {r['bases']:>11,} {r['wall_s']:>8.0f} {r['cpu_s']:>8.0f} "
              f"{r['peak_rss_gib']:>13.2f} {est_txt:>9} {bpb:>10.4f}")
    sbs = results["side_by_side"]
    print(f"plain / lean peak RSS at {n:,}: {sbs['plain_over_lean_peak_rss']:.2f}x; "
          f"log-likelihood relative difference {sbs['loglik_rel_diff']:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
