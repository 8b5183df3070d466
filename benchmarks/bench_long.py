"""Lean CPU inference of 7B-class and 1B-class StripedHyena 2 (Evo 2) shapes, and the memory refusal of a 40B.

Random weights of a published shape (a dnalm preset, e.g. evo2-7b-8k, evo2-1b-8k) are built on the meta device
and materialised in bfloat16 (filter poles and residues in float32, as the releases store them): the weights
are never held in float32. One sequence of real DNA (E. coli K-12, the embedded genome) is scored in one pass
with ``dnalm.eval.longcontext.forward_long`` (output "logprobs", or "hidden" for embeddings): blocks compute
their matmuls in bf16 on the weights' dtype and the long convolutions in float32, the residual stream stays
float32, activations are chunked.

``--blocks K`` runs only the first K blocks (all blocks stay materialised, so the resident weights are those
of the whole model) and extrapolates the time of a full pass from the measured block of each kind (SE, MR,
LI, attention): on a shared 2-core machine a full 7B window takes longer than a benchmark slot. The attention
block's time at long lengths can be measured at a shorter ``--attn-length`` and scaled by (L / L')^2.

Prints one JSON line: peak resident memory (ru_maxrss) after building and after the pass, the estimate of
``estimate_memory`` beside it, seconds (wall and thread CPU) per block kind, the extrapolated seconds per
window, and bytes per token.

    nice -n 10 python benchmarks/bench_long.py --preset evo2-7b-8k --length 8192 --blocks 7
    nice -n 10 python benchmarks/bench_long.py --preset evo2-1b-8k --length 131072 --blocks 3 --attn-length 16384
    python benchmarks/bench_long.py --refuse evo2-40b          # time of `dnalm score evo2-40b` refusing
    python benchmarks/bench_long.py --max-length               # longest embeddable length per 7B-class shape
    nice -n 10 python benchmarks/bench_long.py --families --length 32768   # measured one-pass embeddings, 1B-class

``--families`` embeds (output "hidden", as ``dnalm embed`` does from 32,768 tokens on) one sequence of real
E. coli DNA with the 1B-class shape of every family (``SHAPES_1B``), each in its own process so that each
peak RSS is its own, one after the other, and prints a Markdown table: peak RSS beside the estimate checked
before building, KiB of activations per token, wall and CPU seconds of the pass.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dnalm.data.sequences import read_sequences  # noqa: E402
from dnalm.eval import longcontext as LC  # noqa: E402
from dnalm.models import get_preset  # noqa: E402
from dnalm.models.lm import DNALM  # noqa: E402
from dnalm.tokenizer import decode  # noqa: E402

GiB = 2**30


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def random_bf16(config) -> DNALM:
    """DNALM(config) with random weights in bfloat16, never materialised in float32 (meta build + assign)."""
    with torch.device("meta"):
        model = DNALM(config)
    state = {}
    g = torch.Generator().manual_seed(0)
    for name, t in model.state_dict().items():
        leaf = name.rsplit(".", 1)[-1]
        keep32 = leaf in ("poles", "residues", "log_poles")
        x = torch.empty(t.shape, dtype=torch.float32 if keep32 else torch.bfloat16)
        if leaf == "log_poles":
            x.uniform_(-0.5, -1e-3, generator=g)
        elif leaf == "poles":  # Evo 1: (D, S, 2) real/imaginary parts of poles inside the unit circle
            rate, theta = torch.empty(t.shape[:-1]).uniform_(1e-3, 0.5, generator=g), torch.rand(t.shape[:-1], generator=g)
            x.copy_(torch.view_as_real(torch.polar(torch.exp(-rate), theta * math.pi)))
        elif leaf == "residues":
            x.normal_(0, 0.05, generator=g)
        elif "norm" in name and leaf == "weight":
            x.fill_(1.0)
        elif leaf == "bias":
            x.zero_()
        elif leaf in ("short_filter", "h"):
            x.uniform_(-0.3, 0.3, generator=g)
        else:
            x.normal_(0, 0.02, generator=g)
        state[name] = x
    model.load_state_dict(state, assign=True)
    del state
    from dnalm.models.hyena import PositionalEmbedding

    for name, mod in list(model.named_modules()):  # HyenaDNA's position table: computed, not random
        if isinstance(mod, PositionalEmbedding):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, PositionalEmbedding(mod.z.shape[-1], mod.z.shape[1]))
    for mod in model.modules():  # lazily grown tables (RoPE's cos/sin) start empty: nothing to fill
        for key, b in list(mod._buffers.items()):
            if b is not None and b.device.type == "meta" and b.numel() == 0:
                mod._buffers[key] = torch.empty(b.shape, dtype=b.dtype)
    left = [n for n, b in model.named_buffers() if b.device.type == "meta"]
    assert not left, f"buffers left on the meta device: {left[:4]}"
    return model.eval()


def ecoli_tokens(model: DNALM, n: int) -> torch.Tensor:
    """``n`` tokens of the E. coli K-12 genome (repeated if needed) under the model's own tokenizer."""
    from dnalm.data.store import default_genome

    rec = next(read_sequences(default_genome()[0]))
    ids = np.concatenate([rec.ids] * -(-n // len(rec.ids)))[: n - 1]  # + [BOS]
    toks = model.tokenizer.encode(decode(ids, np.zeros(len(ids), dtype=bool)))[0]
    return torch.as_tensor(np.asarray(toks[:n]), dtype=torch.long)


def shapes_1b() -> dict:
    """A 1B-class shape of every family with a one-pass schedule (bf16 weights ~2-2.5 GiB): Evo 2's 1B
    release, Evo 1's layout at width 2048, TinyLlama's Transformer shape, HyenaDNA and dnaHNet at width 2048."""
    from dnalm.models.hnet import HNetConfig
    from dnalm.models.hyena import HyenaConfig
    from dnalm.models.transformer import TransformerConfig

    big = 1 << 24
    sh1 = ["attn" if i in (8, 16) else "hyena" for i in range(24)]
    return {
        "StripedHyena 2 (evo2-1b-8k)": dataclasses.replace(get_preset("evo2-1b-8k"), max_len=big),
        "StripedHyena 1 (evo-1 layout, 24 x 2048)": dataclasses.replace(
            get_preset("evo-1-131k"), n_layer=24, d_model=2048, n_head=16, mlp_hidden=5464, layers=sh1, max_len=big),
        "Transformer++ (22 x 2048, SwiGLU 5632)": TransformerConfig(n_layer=22, d_model=2048, n_head=16,
                                                                     mlp_hidden=5632, max_len=big),
        "HyenaDNA (20 x 2048, order 2)": HyenaConfig(n_layer=20, d_model=2048, l_max=big, d_inner=8192),
        "dnaHNet (widths 512/1024/2048, main t24)": HNetConfig(
            d_model=512, inner_d_model=[1024, 2048], target_ratios=[3.0, 2.0], encoder_layout=["t1m4", "t1m4"],
            decoder_layout=["m4t1", "m4t1"], main_layout="t24", attn_head_dim=128, max_len=big),
    }


def embed_pass(shape: str, length: int) -> dict:
    """One-pass embedding (output "hidden") of ``length`` tokens of E. coli with the 1B-class ``shape``, in
    this process: peak RSS after building and after the pass, the estimate, wall and thread CPU seconds."""
    cfg = shapes_1b()[shape]
    if hasattr(cfg, "l_max"):  # HyenaDNA holds a position table of l_max rows: the input's length, not 16M
        cfg = dataclasses.replace(cfg, l_max=length + 2)
    r0 = peak_rss()
    t0 = time.perf_counter()
    model = random_bf16(cfg)
    build_s = time.perf_counter() - t0
    rss_built = peak_rss()
    ids = ecoli_tokens(model, length)
    est = LC.estimate_memory(model, length, "hidden")
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    w0, c0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
    out = LC.forward_long(model, ids, "hidden")
    wall, cpu, pcpu = time.perf_counter() - w0, time.thread_time() - c0, time.process_time() - p0
    assert torch.isfinite(out).all() and out.shape == (length, cfg.d_model), out.shape
    rss_pass = peak_rss()
    return {
        "shape": shape, "length": length, "params": sum(p.numel() for p in model.parameters()),
        "weights_gib": round(weight_bytes / GiB, 2), "rss_before_build_gib": round(r0 / GiB, 2),
        "peak_rss_after_build_gib": round(rss_built / GiB, 2), "peak_rss_gib": round(rss_pass / GiB, 2),
        "estimate_gib": round(est.total / GiB, 2), "estimate_parts_gib": {k: round(v / GiB, 3) for k, v in est.parts.items()},
        "activation_kib_per_token": round((rss_pass - rss_built) / length / 1024, 1),
        "build_s": round(build_s, 1), "pass_wall_s": round(wall, 1), "pass_thread_cpu_s": round(cpu, 1),
        "pass_process_cpu_s": round(pcpu, 1), "threads": torch.get_num_threads(), "chunk": LC.auto_chunk(model),
    }


def families(length: int, only: list[str] | None) -> list[dict]:
    """``embed_pass`` for every 1B-class shape, each in a fresh process (its own peak RSS); prints a table."""
    rows = []
    for shape in shapes_1b():
        if only and not any(o.lower() in shape.lower() for o in only):
            continue
        run = subprocess.run([sys.executable, __file__, "--embed-shape", shape, "--length", str(length)],
                             capture_output=True, text=True, cwd=REPO)  # fmt: skip
        if run.returncode != 0:
            rows.append({"shape": shape, "length": length, "error": run.stderr.strip().splitlines()[-1:]})
        else:
            rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n| family, 1B-class shape | parameters | weights (bf16) | input | peak RSS | estimate | "
          f"activations per token | pass: wall / CPU s |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['shape']} | | | {r['length']:,} | failed: {r['error']} | | | |")
            continue
        print(f"| {r['shape']} | {r['params'] / 1e9:.2f}B | {r['weights_gib']:.2f} GiB | {r['length']:,} | "
              f"{r['peak_rss_gib']:.2f} GiB | {r['estimate_gib']:.2f} GiB | {r['activation_kib_per_token']:.1f} KiB | "
              f"{r['pass_wall_s']:.0f} / {r['pass_process_cpu_s']:.0f} |")
    return rows


def kind_of(block: nn.Module) -> str:
    return getattr(block, "kind", type(block).__name__)


def run_pass(args) -> dict:
    cfg = get_preset(args.preset)
    if args.length > cfg.max_len:
        cfg = dataclasses.replace(cfg, max_len=args.length)
    t0 = time.perf_counter()
    model = random_bf16(cfg)
    build_s = time.perf_counter() - t0
    rss_built = peak_rss()
    ids = ecoli_tokens(model, args.length)
    chunk = args.chunk or LC.auto_chunk(model)
    est = LC.estimate_memory(model, args.length, args.output, chunk)
    n_params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    full = model.backbone.layers
    K = args.blocks or len(full)
    model.backbone.layers = nn.ModuleList(list(full)[:K])  # the rest stays resident (weights), unused
    times: dict[int, tuple[float, float]] = {}
    orig = LC._block_pass

    def timed(block):
        fn = orig(block)

        def run(b, r, ctx):
            w0, c0 = time.perf_counter(), time.thread_time()
            fn(b, r, ctx)
            times[id(b)] = (time.perf_counter() - w0, time.thread_time() - c0)

        return run

    LC._block_pass = timed
    try:
        w0, c0 = time.perf_counter(), time.thread_time()
        out = LC.forward_long(model, ids, args.output, chunk=chunk)
        wall, cpu = time.perf_counter() - w0, time.thread_time() - c0
    finally:
        LC._block_pass = orig
    assert torch.isfinite(out).all()
    rss_pass = peak_rss()
    per_kind: dict[str, list[float]] = {}
    cpu_kind: dict[str, list[float]] = {}
    for b in model.backbone.layers:
        per_kind.setdefault(kind_of(b), []).append(times[id(b)][0])
        cpu_kind.setdefault(kind_of(b), []).append(times[id(b)][1])
    block_total = sum(t[0] for t in times.values())
    other = wall - block_total  # embedding, head, memory check
    kind_s = {k: min(v) for k, v in per_kind.items()}
    attn_note = None
    if args.attn_length:  # time one attention block at a shorter length, scaled quadratically
        attn = next(b for b in full if kind_of(b) == "attn")
        Ls = args.attn_length
        r = torch.randn(Ls, cfg.d_model) * 0.5
        w0 = time.perf_counter()
        with torch.no_grad():
            orig(attn)(attn, r, LC._Ctx(chunk, None))
        ta = time.perf_counter() - w0
        kind_s["attn"] = ta * (args.length / Ls) ** 2
        attn_note = f"attention block measured at {Ls:,} tokens ({ta:.1f} s), scaled by (L/{Ls:,})^2"
    missing = sorted({kind_of(b) for b in full} - set(kind_s))
    extrapolated = None if missing else other + sum(kind_s[kind_of(b)] for b in full)
    return {
        "preset": args.preset, "length": args.length, "output": args.output, "chunk": chunk,
        "params": n_params, "weights_gib": round(weight_bytes / GiB, 2),
        "blocks_run": K, "blocks_total": len(full), "build_s": round(build_s, 1),
        "peak_rss_after_build_gib": round(rss_built / GiB, 2), "peak_rss_gib": round(rss_pass / GiB, 2),
        "estimate_gib": round(est.total / GiB, 2),
        "estimate_parts_gib": {k: round(v / GiB, 3) for k, v in est.parts.items()},
        "activation_bytes_per_token": round((rss_pass - rss_built) / args.length),
        "pass_wall_s": round(wall, 1), "pass_thread_cpu_s": round(cpu, 1),
        "block_wall_s_by_kind": {k: [round(x, 1) for x in v] for k, v in per_kind.items()},
        "block_thread_cpu_s_by_kind": {k: [round(x, 1) for x in v] for k, v in cpu_kind.items()},
        "seconds_per_full_pass_extrapolated": None if extrapolated is None else round(extrapolated, 1),
        "attention_note": attn_note, "missing_kinds": missing, "threads": torch.get_num_threads(),
    }


def refuse(preset: str, repeats: int = 3) -> dict:
    fa = REPO / "tests" / "data" / "phage_phix174.fa"
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "dnalm", "score", preset, "--fasta", str(fa)], cwd=REPO,
                             capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
        out.append(time.perf_counter() - t0)
        assert run.returncode == 2, run.stderr
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    torch_s = time.perf_counter() - t0
    return {"preset": preset, "refusal_wall_s": [round(x, 2) for x in out], "import_torch_wall_s": round(torch_s, 2),
            "message": run.stderr.strip()}


def max_lengths(limit_gib: float) -> dict:
    """Longest sequence each 7B-class shape can embed (output "hidden") in one pass within ``limit_gib``,
    by the estimate (bisection), weights in bf16."""
    from dnalm.models.hnet import HNetConfig
    from dnalm.models.hyena import HyenaConfig
    from dnalm.models.transformer import TransformerConfig

    big = 1 << 24
    shapes = {
        "StripedHyena 2 (evo2-7b)": dataclasses.replace(get_preset("evo2-7b"), max_len=big),
        "StripedHyena 1 (evo-1-131k)": dataclasses.replace(get_preset("evo-1-131k"), max_len=big),
        "Transformer++ 7B (32 x 4096, SwiGLU 11008)": TransformerConfig(n_layer=32, d_model=4096, n_head=32,
                                                                          mlp_hidden=11008, max_len=big),
        "HyenaDNA 7B-class (32 x 4096, order 2)": HyenaConfig(n_layer=32, d_model=4096, l_max=big, d_inner=16384),
        "dnaHNet 7B-class (widths 1024/2048/4096, main t24)": HNetConfig(
            d_model=1024, inner_d_model=[2048, 4096], target_ratios=[3.0, 2.0], encoder_layout=["t1m4", "t1m4"],
            decoder_layout=["m4t1", "m4t1"], main_layout="t24", attn_head_dim=128, max_len=big),
        "StripedHyena 2 1B (evo2-1b-8k shape)": dataclasses.replace(get_preset("evo2-1b-8k"), max_len=big),
    }
    out = {}
    for name, cfg in shapes.items():
        with torch.device("meta"):
            model = DNALM(cfg).to(torch.bfloat16)
        params = sum(p.numel() for p in model.parameters())

        def fits(L):
            return LC.estimate_memory(model, L, "hidden").total <= limit_gib * GiB

        lo, hi = 0, big
        while hi - lo > 1024:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        out[name] = {"params_b": round(params / 1e9, 2), "longest_tokens": lo,
                     "estimate_gib_at_131072": round(LC.estimate_memory(model, 131072, "hidden").total / GiB, 2),
                     "estimate_gib_at_1000000": round(LC.estimate_memory(model, 1_000_000, "hidden").total / GiB, 2)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="evo2-7b-8k")
    p.add_argument("--length", type=int, default=8192)
    p.add_argument("--output", choices=["logprobs", "hidden"], default="logprobs")
    p.add_argument("--blocks", type=int, default=0, help="run only the first K blocks (0 = all)")
    p.add_argument("--chunk", type=int, default=0, help="positions per chunk (0 = dnalm's automatic choice)")
    p.add_argument("--attn-length", type=int, default=0, help="time the attention block at this length instead")
    p.add_argument("--refuse", default=None, metavar="PRESET", help="time `dnalm score PRESET` refusing")
    p.add_argument("--max-length", action="store_true", help="longest embeddable length per 7B-class shape")
    p.add_argument("--limit-gib", type=float, default=24.0)
    p.add_argument("--families", action="store_true", help="measured one-pass embeddings, every 1B-class shape")
    p.add_argument("--only", nargs="*", default=None, help="with --families: shapes whose name contains one of these")
    p.add_argument("--embed-shape", default=None, help=argparse.SUPPRESS)  # one shape, in this process
    a = p.parse_args()
    if a.embed_shape:
        print(json.dumps(embed_pass(a.embed_shape, a.length)))
    elif a.families:
        families(a.length, a.only)
    elif a.refuse:
        print(json.dumps(refuse(a.refuse)))
    elif a.max_length:
        print(json.dumps(max_lengths(a.limit_gib), indent=1))
    else:
        print(json.dumps(run_pass(a)))


if __name__ == "__main__":
    main()
