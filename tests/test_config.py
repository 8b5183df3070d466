"""Run configs: unknown keys, wrong types and impossible values are clear errors."""

from pathlib import Path

import pytest

from dnalm.config import ConfigError, to_dict
from dnalm.train.config import load_run_config, run_config_from_dict
from dnalm.models.hyena import HyenaConfig

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_roundtrip_and_overrides(tmp_path):
    cfg = load_run_config(write(tmp_path, "preset: hyenadna-tiny-1k\ntrain: {steps: 10}\n"),
                          ["train.lr=3e-4", "data.seq_len=512", "model.n_layer=3"])
    assert cfg.train.lr == 3e-4 and cfg.data.seq_len == 512 and cfg.model.n_layer == 3
    assert cfg.train.warmup_steps == 1  # derived in code: 1% of steps, at least 1
    again = run_config_from_dict(to_dict(cfg))
    assert to_dict(again) == to_dict(cfg)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("preset: hyenadna-tiny-1k\ntrain: {stpes: 10}\n", "unknown key(s) in train: stpes"),
        ("preset: hyenadna-tiny-1k\nmodel: {d_modle: 3}\n", "unknown key(s) in model: d_modle"),
        ("preset: hyenadna-tiny-1k\ntrain: {steps: ten}\n", "train.steps must be an integer"),
        ("preset: hyenadna-tiny-1k\ntrain: {steps: -5}\n", "steps must be > 0"),
        ("preset: no-such-model\n", "unknown preset 'no-such-model'"),
        ("model: {family: lstm}\n", "model.family must be one of"),
        ("preset: hyenadna-tiny-1k\ntrain: {batch_size: 6, grad_accum: 4}\n", "divisible by train.grad_accum"),
        ("preset: hyenadna-tiny-1k\ndata: {rc_augment: maybe}\n", "data.rc_augment must be true or false"),
        ("- just\n- a list\n", "top level must be a mapping"),
    ],
)
def test_bad_configs(tmp_path, text, needle):
    with pytest.raises(ConfigError) as e:
        load_run_config(write(tmp_path, text))
    assert needle in str(e.value)


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_run_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_run_config(write(tmp_path, "preset: hyenadna-tiny-1k\n"), ["train.lr"])


def test_model_validation():
    with pytest.raises(ConfigError, match="order"):
        HyenaConfig(order=1)


def test_example_configs_load():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        if path.name.startswith("sweep"):
            continue
        load_run_config(path)


def test_demo_yaml_matches_demo_config():
    from dnalm.train.demo import demo_config

    assert to_dict(load_run_config(REPO / "configs" / "demo.yaml")) == to_dict(demo_config())
