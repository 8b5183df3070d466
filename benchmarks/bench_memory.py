"""Training memory with and without activation checkpointing, measured side by side in one run.

One training step (forward + backward, batch 1, float32) of a small model at a long length, in a fresh
child process per measurement so each peak is its own: the peak resident memory the step adds (the
child's ``ru_maxrss`` after the step minus its resident memory just before it, after a short warm-up
step has loaded every kernel) and the step's wall and CPU time. The two settings alternate
(off, on, off, on, ...) so machine load affects both alike; medians are reported.

Activation checkpointing (``train.activation_checkpointing: true``) is applied exactly as the trainer
applies it (``dnalm.train.distributed.apply_activation_checkpointing``: each block of
``model.backbone.layers`` recomputed in backward). The gradients are checked to be equal.

Reproduce (about 3 minutes on a shared 2-core machine)::

    python benchmarks/bench_memory.py --json bench_memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MODELS = {  # small models at long lengths
    "hyena": dict(family="hyena", n_layer=8, d_model=128, l_max=32_770, filter_order=64),
    "striped_hyena2": dict(family="striped_hyena", version=2, n_layer=4, d_model=128, n_head=4,
                           max_len=16_386, layers=["se", "mr", "li", "li"]),
}


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(model_name: str, length: int, checkpointed: bool) -> dict:
    import torch

    from dnalm.models import model_config_from_dict
    from dnalm.data.sequences import read_sequences
    from dnalm.models.lm import DNALM, lm_loss
    from dnalm.train.distributed import apply_activation_checkpointing

    torch.manual_seed(0)
    model = DNALM(model_config_from_dict(MODELS[model_name])).train()
    if checkpointed:
        apply_activation_checkpointing(model)
    genome = next(read_sequences(REPO / "dnalm" / "resources" / "ecoli_k12_mg1655.fa.gz"))
    ids = torch.from_numpy(genome.ids[: length + 1].astype("int64"))[None]  # real E. coli bases

    def step(n: int) -> torch.Tensor:
        out = model(ids[:, :n])
        loss = lm_loss(out.logits[:, :-1], ids[:, 1 : n])
        loss.backward()
        return loss

    step(512)  # warm-up: load kernels, allocate the parameter gradients
    model.zero_grad(set_to_none=False)
    before = rss_bytes()
    t0, c0 = time.perf_counter(), time.process_time()
    loss = step(length)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    grad_norm = float(torch.sqrt(sum(p.grad.double().pow(2).sum() for p in model.parameters() if p.grad is not None)))
    return {"added_gib": (peak - before) / 2**30, "peak_gib": peak / 2**30, "wall_s": wall, "cpu_s": cpu,
            "loss": float(loss), "grad_norm": grad_norm}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="hyena:32768,striped_hyena2:16384",
                    help="comma-separated MODEL:LENGTH pairs (models: " + ", ".join(MODELS) + ")")
    ap.add_argument("--repeats", type=int, default=2, help="measurements per setting")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--child", nargs=3, metavar=("MODEL", "LENGTH", "AC"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, str(REPO))
        print(json.dumps(child(args.child[0], int(args.child[1]), args.child[2] == "1")))
        return

    import torch

    results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "runs": []}
    for item in args.models.split(","):
        name, length = item.split(":")
        runs = {False: [], True: []}
        for rep in range(args.repeats):
            for ac in (False, True):
                cmd = [sys.executable, __file__, "--child", name, length, "1" if ac else "0"]
                out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout
                runs[ac].append(json.loads(out.strip().splitlines()[-1]))
                r = runs[ac][-1]
                print(f"{name} L={int(length):,} checkpointing={'on ' if ac else 'off'} #{rep + 1}: "
                      f"+{r['added_gib']:.3f} GiB, {r['wall_s']:.1f} s wall", file=sys.stderr, flush=True)
        med = {ac: {k: statistics.median(r[k] for r in runs[ac]) for k in runs[ac][0]} for ac in runs}
        same = abs(med[False]["grad_norm"] - med[True]["grad_norm"]) <= 1e-5 * med[False]["grad_norm"]
        results["runs"].append({
            "model": name, "config": MODELS[name], "length": int(length), "off": med[False], "on": med[True],
            "memory_ratio_off_over_on": med[False]["added_gib"] / med[True]["added_gib"],
            "time_ratio_on_over_off": med[True]["cpu_s"] / med[False]["cpu_s"],
            "same_loss_and_grad_norm": same and med[False]["loss"] == med[True]["loss"],
        })

    print(f"torch {results['torch']}, {results['threads']} thread(s); one fwd+bwd step, batch 1, float32; medians")
    print(f"{'model':<16} {'L':>7} {'step memory off':>16} {'on':>9} {'off/on':>7} {'CPU s off':>10} {'on':>7}"
          f" {'on/off':>7} {'same grads':>10}")
    for r in results["runs"]:
        print(f"{r['model']:<16} {r['length']:>7,} {r['off']['added_gib']:>12.3f} GiB {r['on']['added_gib']:>5.3f} GiB"
              f" {r['memory_ratio_off_over_on']:>6.1f}x {r['off']['cpu_s']:>10.1f} {r['on']['cpu_s']:>7.1f}"
              f" {r['time_ratio_on_over_off']:>6.2f}x {str(r['same_loss_and_grad_norm']):>10}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
