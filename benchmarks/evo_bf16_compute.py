"""How far bf16 computation moves an Evo model from float32 computation, on the parity fixtures written in the
release dtypes (bf16, poles/residues float32): the weights stay bf16 in memory either way; "float32" computes
each block with a float32 copy of its weights (compared with the same file loaded as float32: must be 0),
"weights" computes the matrix products in bf16. Input: 400 bases of phage lambda, 100 of them lower case
(the input of tests/test_evo_bf16.py).

    python benchmarks/evo_bf16_compute.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import dnalm  # noqa: E402
from dnalm.eval.longcontext import forward_long  # noqa: E402
from dnalm.formats.evo import export_evo1, export_evo2  # noqa: E402
from dnalm.runtime import fast_bf16  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16: {fast_bf16()}")
    data = REPO / "tests" / "data"
    seq = (data / "phage_lambda.fa").read_text().split("\n", 1)[1].replace("\n", "")[5000:5400]
    ids = torch.tensor([list((seq[:100] + seq[100:200].lower() + seq[200:]).encode())])
    tmp = Path(tempfile.mkdtemp())
    for name, export in (("evo2_tiny", export_evo2), ("evo2_rope", export_evo2), ("evo1_tiny", export_evo1),
                         ("evo1_131k", export_evo1)):
        export(dnalm.load(data / "evo" / name), tmp / name, dtype=torch.bfloat16)
        model, ref = dnalm.load(tmp / name), dnalm.load(tmp / name, dtype=torch.float32)
        with torch.no_grad():
            want, got = ref(ids, output_hidden_states=True), model(ids, output_hidden_states=True)
            model.compute = "weights"
            low = model(ids).logits
        exact = max([float((got.logits - want.logits).abs().max())]
                    + [float((a - b).abs().max()) for a, b in zip(got.hidden_states, want.hidden_states)])
        d = (low - want.logits).abs()
        lp_ref = torch.log_softmax(want.logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
        lp_low = torch.log_softmax(low[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
        lp_long = forward_long(model, ids[0], "logprobs", chunk=128)
        print(f"{name}: float32 compute max |diff| {exact:.1e}; bf16 compute: logits max {float(d.max()):.3f}, "
              f"mean {float(d.mean()):.4f}; per-token log-prob mean |diff| {float((lp_ref - lp_low).abs().mean()):.4f} "
              f"(forward_long {float((lp_ref - lp_long).abs().mean()):.4f}); mean log-prob {float(lp_ref.mean()):.4f} "
              f"vs {float(lp_low.mean()):.4f}")


if __name__ == "__main__":
    main()
