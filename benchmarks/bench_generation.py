"""Generation speed: recurrent decoding (prefill once, then one step per token) against naive generation that
recomputes the whole prefix for every token, at contexts of 1k, 8k and 32k tokens, measured side by side.

Models are small (d_model 128, 0.5-0.7M parameters, untrained weights: the timing does not depend on them):

- striped_hyena v1, Hyena blocks only: 4 modal Hyena blocks (the constant-memory path alone);
- striped_hyena v2, Hyena blocks only: SE, MR, LI;
- striped_hyena v2 hybrid: SE, MR, LI, attention (the Evo 2 pattern's first four layers): the attention
  layer's KV cache grows, and every step reads all of it;
- hyena (HyenaDNA, 2 blocks): its implicit filter is stepped as an exact FIR over the whole history, so
  its step cost grows with the position (shown for contrast).

For each model and context the prompt is a real E. coli K-12 window ([BOS] + context-1 bases), prefilled
once (not timed). Each round times ``--steps`` recurrent steps from a copy of that state for every context
back to back (the 32k/1k ratio is taken within a round, so both sides see one machine load); in the first
``--recompute-rounds`` rounds each context then also times ``--recompute-tokens`` full forward passes over
the growing prefix, each followed by another recurrent measurement. Times are process CPU time (all
threads), which on a shared machine is far steadier than wall time; wall-time speedups are printed
beside them. Medians over rounds are reported. The state size after the prefill is reported too:
Hyena-layer state (FIR histories, modal states) and attention KV caches separately.

    python benchmarks/bench_generation.py                 # ~ a few minutes on 2 CPU cores
    python benchmarks/bench_generation.py --contexts 1024 8192 --rounds 2
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dnalm.models.hyena import HyenaConfig
from dnalm.models.striped_hyena import StripedHyenaConfig
from dnalm.generation import prefill_logits, step_logits  # noqa: E402
from dnalm.models.attention import KVCache  # noqa: E402
from dnalm.models.lm import DNALM  # noqa: E402
from dnalm.models.striped_hyena import HyenaState  # noqa: E402
from dnalm.tokenizer import BOS, encode_bytes  # noqa: E402

GENOME = ROOT / "dnalm" / "resources" / "ecoli_k12_mg1655.fa.gz"


def ecoli_ids(n: int) -> torch.Tensor:
    seq = bytearray()
    with gzip.open(GENOME, "rb") as fh:
        fh.readline()
        while len(seq) < n:
            seq += fh.readline().strip()
    ids, _ = encode_bytes(bytes(seq[:n]))
    return torch.from_numpy(ids.astype("int64"))


def models(max_len: int) -> dict[str, DNALM]:
    torch.manual_seed(0)
    def striped(version: int, layers: list[str], hidden: int) -> DNALM:
        cfg = StripedHyenaConfig(version=version, layers=layers, n_layer=len(layers), mlp_hidden=hidden, max_len=max_len)
        return DNALM(cfg)

    return {
        "striped_hyena v1: 4 x hyena": striped(1, ["hyena"] * 4, 256),
        "striped_hyena v2: se, mr, li": striped(2, ["se", "mr", "li"], 192),
        "striped_hyena v2 hybrid: se, mr, li, attn": striped(2, ["se", "mr", "li", "attn"], 192),
        "hyena (HyenaDNA, explicit-FIR step)": DNALM(HyenaConfig(n_layer=2, d_model=128, l_max=max_len)),
    }


def state_bytes(state) -> tuple[int, int]:
    """(bytes held by Hyena-layer states, bytes of attention KV caches, counted at their capacity)."""
    hyena = attn = 0
    for s in state:
        if isinstance(s, KVCache):
            attn += s.k.numel() * s.k.element_size() + s.v.numel() * s.v.element_size()
        elif isinstance(s, HyenaState):
            hyena += sum(t.numel() * t.element_size() for t in (s.fir, s.inner))
        elif isinstance(s, dict):  # HyenaDNA: FIR history + the long-conv input history and filter table
            tensors = [s["fir"], s["h"], *s["hist"]]
            hyena += sum(t.numel() * t.element_size() for t in tensors)
    return hyena, attn


class Clock:
    """Wall time and process CPU time (all threads) of a block, per item."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self) -> "Clock":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = (time.perf_counter() - self.wall) / self.n
        self.cpu = (time.process_time() - self.cpu) / self.n


@torch.inference_mode()
def time_recurrent(model: DNALM, logits: torch.Tensor, state, steps: int) -> Clock:
    state = copy.deepcopy(state)  # every round starts from the prompt's end
    tok = logits[:, -1].argmax(-1)
    with Clock(steps) as clock:
        for _ in range(steps):
            logits, state = step_logits(model, tok, state)
            tok = logits.argmax(-1)
    return clock


@torch.inference_mode()
def time_recompute(model: DNALM, prompt: torch.Tensor, n: int) -> Clock:
    seq = prompt
    with Clock(n) as clock:
        for _ in range(n):
            tok = model(seq).logits[:, -1].argmax(-1)
            seq = torch.cat([seq, tok[:, None]], dim=1)
    return clock


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", type=int, nargs="+", default=[1024, 8192, 32768], help="prompt lengths (tokens)")
    ap.add_argument("--steps", type=int, default=64, help="recurrent steps timed per round")
    ap.add_argument("--recompute-tokens", type=int, default=1, help="tokens generated by recompute per round")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of recurrent timing; the median is reported")
    ap.add_argument("--recompute-rounds", type=int, default=2, help="rounds that also time recompute (slow at 32k)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()

    max_len = max(args.contexts) + max(args.steps, args.recompute_tokens) + 2
    genome = ecoli_ids(max(args.contexts))
    lo, hi = min(args.contexts), max(args.contexts)
    results, flatness = [], {}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}", file=sys.stderr)
    for name, model in models(max_len).items():
        model.eval()
        prompts, prefilled, sizes = {}, {}, {}
        for L in args.contexts:
            prompts[L] = torch.cat([torch.tensor([BOS]), genome[: L - 1]])[None]  # (1, L)
            with torch.inference_mode():
                prefilled[L] = prefill_logits(model, prompts[L])
            sizes[L] = state_bytes(prefilled[L][1])
        rec = {L: [] for L in args.contexts}
        full = {L: [] for L in args.contexts}
        ratios = []
        for r in range(args.rounds):
            # the contexts back to back, so that their ratio sees one machine load
            for L in args.contexts:
                rec[L].append(time_recurrent(model, *prefilled[L], args.steps))
            ratios.append(rec[hi][-1].cpu / rec[lo][-1].cpu)
            if r < args.recompute_rounds:
                for L in args.contexts:
                    full[L].append(time_recompute(model, prompts[L], args.recompute_tokens))
                    rec[L].append(time_recurrent(model, *prefilled[L], args.steps))  # right beside it
        flatness[name] = statistics.median(ratios)
        for L in args.contexts:
            row = {
                "model": name, "context": L, "params": model.num_parameters(),
                "recurrent_ms": 1e3 * statistics.median(c.cpu for c in rec[L]),
                "recompute_ms": 1e3 * statistics.median(c.cpu for c in full[L]),
                "recurrent_wall_ms": 1e3 * statistics.median(c.wall for c in rec[L]),
                "recompute_wall_ms": 1e3 * statistics.median(c.wall for c in full[L]),
                "hyena_state_kb": sizes[L][0] / 1024, "kv_cache_kb": sizes[L][1] / 1024,
            }  # fmt: skip
            row["speedup"] = row["recompute_ms"] / row["recurrent_ms"]
            row["speedup_wall"] = row["recompute_wall_ms"] / row["recurrent_wall_ms"]
            results.append(row)
            print(
                f"{name:42s} L={L:6d} recurrent {row['recurrent_ms']:7.2f} ms/tok  recompute {row['recompute_ms']:9.1f}"
                f" ms/tok (CPU)  x{row['speedup']:7.1f} (wall x{row['speedup_wall']:.1f})"
                f"  state {row['hyena_state_kb']:.0f} KB + KV {row['kv_cache_kb']:.0f} KB",
                file=sys.stderr,
            )

    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} thread(s); batch 1; CPU time, medians over rounds\n")
    print("| model | params | context | recurrent ms/token | recompute ms/token | speedup | (wall) | Hyena state | KV cache |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['context']:,} | {r['recurrent_ms']:.2f} | "
            f"{r['recompute_ms']:,.1f} | {r['speedup']:,.0f}x | {r['speedup_wall']:,.0f}x | "
            f"{r['hyena_state_kb']:,.0f} KB | {r['kv_cache_kb']:,.0f} KB |"
        )
    print(f"\nrecurrent CPU time per token, {hi // 1024}k / {lo // 1024}k (median of per-round ratios):")
    for name, ratio in flatness.items():
        print(f"- {name}: {ratio:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": results, "flatness": flatness}, indent=2) + "\n")


if __name__ == "__main__":
    main()
