"""`dnalm train`, `eval` and `info` from the command line: results, and clear errors with exit code 2."""

import json
from pathlib import Path

import pytest
import yaml

from dnalm.cli import main

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    cfg = {
        "out_dir": str(root / "run"),
        "model": {"family": "hyena", "n_layer": 1, "d_model": 32, "l_max": 130, "filter_order": 16},
        "data": {"inputs": [str(DATA / "phage_lambda.fa")], "seq_len": 128, "holdout_fraction": 0.2},
        "train": {"steps": 6, "batch_size": 4, "eval_every": 3, "eval_tokens": 1024, "ckpt_every": 3, "log_every": 1},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(root / "run.yaml"), "--set", "train.lr=1e-3"]) == 0
    return root


def test_train_writes_run_directory(run):
    d = run / "run"
    for name in ("config.yaml", "metrics.jsonl", "loss.png", "model/config.json", "model/model.safetensors"):
        assert (d / name).is_file(), name
    assert yaml.safe_load((d / "config.yaml").read_text())["train"]["lr"] == 1e-3
    assert (d / "store" / "manifest.json").is_file()


def test_eval_fasta_and_store(run, capsys, tmp_path):
    out = tmp_path / "eval.json"
    assert main(["eval", str(run / "run"), "--fasta", str(DATA / "phage_phix174.fa"), "--markov-order", "3",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["bases"] == 5386 and 0 < res["bits_per_base"] < 6  # barely trained: only well-formed
    assert set(res["markov_bits_per_base"]) == {"0", "1", "2", "3"}
    assert "Markov order  3" in capsys.readouterr().out
    assert main(["eval", str(run / "run"), "--split", "test", "--markov-order", "2"]) == 0


def test_info_on_run_and_preset(run, capsys):
    assert main(["info", str(run / "run")]) == 0
    text = capsys.readouterr().out
    assert "family hyena" in text and "FLOPs per token" in text
    assert main(["info", "hyenadna-large-1m"]) == 0
    assert "parameters        6,5" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "--config", "/nonexistent.yaml"], "config file not found"),
        (["eval", "/nonexistent-run", "--fasta", "x.fa"], "no such file, directory or preset"),
        (["info", "no-such-preset"], "no such run, checkpoint or preset"),
    ],
)
def test_user_errors_exit_2(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_bad_key_in_config_exits_2(tmp_path, capsys):
    (tmp_path / "r.yaml").write_text("preset: hyenadna-tiny-1k\ntrain: {lr: 1e-3, warmup: 5}\n")
    assert main(["train", "--config", str(tmp_path / "r.yaml")]) == 2
    assert "unknown key(s) in train: warmup" in capsys.readouterr().err


def _phix_config(tmp_path: Path, steps: int) -> Path:
    cfg = {
        "out_dir": str(tmp_path / "run"),
        "model": {"family": "hyena", "n_layer": 1, "d_model": 16, "l_max": 66},
        "data": {"inputs": [str(DATA / "phage_phix174.fa")], "seq_len": 64, "holdout_fraction": 0.2},
        "train": {"steps": steps, "batch_size": 4, "eval_every": 100, "eval_tokens": 512, "ckpt_every": 2,
                  "log_every": 1, "keep_last": 3, "threads": 1},
    }
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_resume_skips_a_truncated_newest_checkpoint(tmp_path, capsys):
    cfg = _phix_config(tmp_path, 4)
    assert main(["train", "--config", str(cfg)]) == 0
    newest = tmp_path / "run" / "checkpoints" / "step-0000004" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])  # a crash mid-copy, a full disk
    capsys.readouterr()
    assert main(["train", "--config", str(cfg), "--set", "train.steps=6", "--set", "train.lr=1e-3"]) == 0
    cap = capsys.readouterr()
    err = cap.err
    assert "skipping a damaged checkpoint" in err and "step-0000004" in err
    assert "from step 2" in cap.out + err
    assert "changed train settings: steps 4 -> 6; lr 0.0006 -> 0.001" in err  # never silently
    assert json.loads((tmp_path / "run" / "model" / "config.json").read_text())["step"] == 6


def test_a_failed_train_keeps_the_run_config(tmp_path, capsys):
    cfg = _phix_config(tmp_path, 2)
    assert main(["train", "--config", str(cfg)]) == 0
    before = (tmp_path / "run" / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["train", "--config", str(cfg), "--set", "train.steps=4", "--set", "train.lr=1e30",
                 "--set", "train.max_bad_steps=1"]) == 2
    assert "non-finite" in capsys.readouterr().err
    assert (tmp_path / "run" / "config.yaml").read_text() == before
    fresh = tmp_path / "fresh"
    assert main(["train", "--config", str(cfg), "--out", str(fresh), "--set", "train.lr=1e30",
                 "--set", "train.max_bad_steps=1"]) == 2
    assert not fresh.exists()  # nothing left behind by a run that never checkpointed
