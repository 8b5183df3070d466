"""A model family defined here, in one file (config, backbone, spec), registered, and used through the
whole package with no other file touched: `dnalm train` trains it, `dnalm.score` scores it,
`dnalm.generate` samples from it, and `dnalm info` / `dnalm plan` describe it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import dnalm
from dnalm.cli import main
from dnalm.config import _positive
from dnalm.models import SPECS, register
from dnalm.models.lm import gpt2_init
from dnalm.models.spec import ActivationShape, BackboneOutput, FlopTerms, LayerSpec, ModelSpec, layer_params_estimate

DATA = Path(__file__).parent / "data"


# ------------------------------------------------------------------------------------------ the family


@dataclass
class ToyConfig:
    """A causal two-tap mixer: each block sees the current and the previous position."""

    family: Literal["toy"] = "toy"
    n_layer: int = 2
    d_model: int = 32
    max_len: int = 130
    vocab_size: int = 16
    norm_eps: float = 1e-5
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        _positive(self, "n_layer", "d_model", "max_len", "vocab_size")


class ToyBlock(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.norm = nn.RMSNorm(d, eps=eps)
        self.mix = nn.Linear(2 * d, d)  # [x_t, x_{t-1}] -> d
        self.out = nn.Linear(d, d)
        self.out.residual_out = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)  # (B, L, D)
        prev = F.pad(h, (0, 0, 1, 0))[:, :-1]  # (B, L, D): position t sees t-1 (zeros before the start)
        return x + self.out(F.gelu(self.mix(torch.cat([h, prev], dim=-1))))


class ToyBackbone(nn.Module):
    def __init__(self, config: ToyConfig):
        super().__init__()
        self.layers = nn.ModuleList(ToyBlock(config.d_model, config.norm_eps) for _ in range(config.n_layer))
        gpt2_init(self, config.n_layer)

    def forward(self, x: torch.Tensor, output_hidden_states: bool = False) -> BackboneOutput:
        states = []
        for block in self.layers:
            x = block(x)
            states.append(x)
        return BackboneOutput(x, states if output_hidden_states else None)


def count_params(cfg: ToyConfig) -> int:
    d = cfg.d_model
    return cfg.n_layer * (d + 2 * d * d + d + d * d + d) + d  # norm, mix, out per block; final norm


def flops(cfg: ToyConfig, L: int, B: int, causal_savings: bool = False) -> FlopTerms:
    out = FlopTerms()
    for _ in range(cfg.n_layer):
        out.layer_kinds.append("toy")
        out.add("mix", 2 * 2 * cfg.d_model * cfg.d_model)
        out.add("out_proj", 2 * cfg.d_model * cfg.d_model)
    out.add("logits", 2 * cfg.d_model * cfg.vocab_size)
    return out


def activations(cfg: ToyConfig) -> ActivationShape:
    return ActivationShape(
        layers=[LayerSpec("attention", mlp_saved=0) for _ in range(cfg.n_layer)],  # an upper bound for its tensors
        n_layer=cfg.n_layer,
        mlp_hidden=cfg.d_model,
        mlp_gated=False,
        largest_layer_params=layer_params_estimate(cfg.d_model, cfg.d_model, False),
    )


SPEC = ModelSpec(
    family="toy",
    config=ToyConfig,
    backbone=ToyBackbone,
    final_norm=lambda cfg: nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps),
    count_params=count_params,
    flops=flops,
    activations=activations,
    presets={"toy-tiny": lambda: ToyConfig()},
)


# ------------------------------------------------------------------------------------------ the tests


@pytest.fixture(scope="module")
def toy():
    register(SPEC)
    try:
        yield SPEC
    finally:
        SPECS.pop("toy")  # other test modules see only the built-in families


@pytest.fixture(scope="module")
def run(toy, tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    cfg = {
        "out_dir": str(root / "run"),
        "model": {"family": "toy", "n_layer": 2, "d_model": 32, "max_len": 130},
        "data": {"inputs": [str(DATA / "phage_lambda.fa")], "seq_len": 128, "holdout_fraction": 0.2},
        "train": {"steps": 2, "batch_size": 4, "eval_every": 2, "eval_tokens": 1024, "ckpt_every": 2, "log_every": 1},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(root / "run.yaml")]) == 0
    return root / "run"


def test_trains_two_steps_with_the_cli(run):
    rows = [yaml.safe_load(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in rows if "loss" in r)
    model = dnalm.load(run)
    assert isinstance(model.backbone, ToyBackbone) and model.config == ToyConfig(n_layer=2, d_model=32, max_len=130)
    assert model.num_parameters() == count_params(model.config) + model.config.vocab_size * model.config.d_model


def test_is_scored(run):
    model = dnalm.load(run)
    seqs = ["ACGTACGTTTGACA", "GGGCCCATTAGC"]
    ll = dnalm.score(model, seqs)
    assert ll.shape == (2,) and np.all(np.isfinite(ll)) and np.all(ll < 0)
    per_base = dnalm.score(model, seqs[0], reduce="none")
    assert per_base.shape == (len(seqs[0]),) and per_base.sum() == pytest.approx(ll[0])
    assert dnalm.score(model, seqs[1]) == pytest.approx(ll[1], abs=1e-4)  # alone = batched with padding


def test_generates(run):
    model = dnalm.load(run)
    out = dnalm.generate(model, "ACGTACGT", 12, seed=1)
    assert len(out) == 12 and set(out) <= set("ACGT")
    assert out == dnalm.generate(model, "ACGTACGT", 12, seed=1)


def test_appears_in_info_and_plan(toy, run, capsys):
    assert "toy-tiny" in dnalm.list_presets()
    assert main(["info", "toy-tiny"]) == 0
    text = capsys.readouterr().out
    assert "family toy" in text and "FLOPs per token" in text and "training memory" in text
    assert main(["info", str(run)]) == 0
    assert "family toy" in capsys.readouterr().out
    assert main(["plan", "--preset", "toy-tiny", "--tokens", "1e9", "--gpus", "1xH100"]) == 0
    text = capsys.readouterr().out
    assert "preset toy-tiny" in text and "per-layer count" in text and "suggested layout" in text


def test_an_unregistered_family_is_a_clear_error(tmp_path, capsys):
    """No silent fallback (the planner once treated an unknown family as a Transformer)."""
    from dnalm.config import ConfigError
    from dnalm.scaling.flops import flops_per_token
    from dnalm.scaling.plan import shape_from_config

    @dataclass
    class Other:
        family: str = "not-registered"
        d_model: int = 8
        vocab_size: int = 16

    for fn in (shape_from_config, lambda c: flops_per_token(c, 16)):
        with pytest.raises(ConfigError, match="unknown model family 'not-registered'"):
            fn(Other())
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"model": {"family": "not-registered"}}))
    assert main(["train", "--config", str(tmp_path / "run.yaml")]) == 2
    assert "model.family must be one of" in capsys.readouterr().err
