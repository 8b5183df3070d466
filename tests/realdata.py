"""Shared test helpers: real sequence from the embedded genome, and non-trivial weights."""

import gzip
from pathlib import Path

import torch

from dnalm.tokenizer import encode_bytes

GENOME = Path(__file__).resolve().parents[1] / "dnalm" / "resources" / "ecoli_k12_mg1655.fa.gz"


def ecoli_ids(n: int, start: int = 0) -> torch.Tensor:
    """Token ids of E. coli K-12 MG1655 (NC_000913.3, the package's embedded genome) bases [start, start+n)."""
    seq = b""
    with gzip.open(GENOME, "rb") as fh:
        fh.readline()  # header
        while len(seq) < start + n:
            seq += fh.readline().strip()
    ids, _ = encode_bytes(seq[start : start + n])
    return torch.from_numpy(ids.astype("int64"))


def perturbed(module: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Add noise to every parameter so no weight keeps a trivial init value (zero biases, unit norms)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return module
