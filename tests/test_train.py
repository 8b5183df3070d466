"""The trainer: resume parity after a kill, non-finite losses, atomic checkpoints, the LR schedule."""

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from dnalm.config import DataConfig, RunConfig, TrainConfig, to_dict
from dnalm.models.hyena import HyenaConfig
from dnalm.models.transformer import TransformerConfig
from dnalm.checkpoint import checkpoint_dirs, latest_model_dir
from dnalm.train.optim import lr_at, param_groups
from dnalm.train.trainer import TrainingError, train

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from dnalm.data.store import prepare

    out = tmp_path_factory.mktemp("store") / "lambda"
    prepare([DATA / "phage_lambda.fa"], out, val_fraction=0.1, test_fraction=0.05, progress=False)
    return out


def tiny_run(out, store, steps=40, model=None, **train_kw):
    return RunConfig(
        model=model or HyenaConfig(n_layer=1, d_model=32, l_max=130, filter_order=16),
        data=DataConfig(store=str(store), seq_len=128, rc_augment=True),
        train=TrainConfig(steps=steps, batch_size=4, lr=3e-3, eval_every=10, eval_tokens=2048, log_every=1,
                          ckpt_every=5, keep_last=2, threads=1, **train_kw),
        out_dir=str(out),
    )


def losses(run_dir):
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_resume_matches_uninterrupted(tmp_path, store):
    ref = train(tiny_run(tmp_path / "ref", store, steps=20), progress=False)
    # interrupted after step 13: the newest checkpoint is step 10, steps 11-13 are redone on resume
    cut = train(tiny_run(tmp_path / "cut", store, steps=20), progress=False, stop_after=13)
    assert cut.stopped_early and [p.name for p in checkpoint_dirs(cut.run_dir)] == ["step-0000005", "step-0000010"]
    assert max(losses(cut.run_dir)) == 13
    resumed = train(tiny_run(tmp_path / "cut", store, steps=20), progress=False)
    a, b = losses(ref.run_dir), losses(resumed.run_dir)
    assert sorted(a) == sorted(b) == list(range(1, 21))
    for step in a:
        assert a[step] == b[step], f"step {step}: {a[step]} vs {b[step]}"
    assert resumed.val_loss == ref.val_loss
    assert latest_model_dir(resumed.run_dir).name == "model"


def test_killed_process_resumes_same_trajectory(tmp_path, store):
    """SIGKILL a real `dnalm train` process mid-run; resume; compare with an uninterrupted run."""
    cfg = tiny_run(tmp_path / "killed", store, steps=100_000)
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(to_dict(cfg)))
    proc = subprocess.Popen([sys.executable, "-m", "dnalm", "train", "--config", str(cfg_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(checkpoint_dirs(cfg.out_dir)) < 2 and time.time() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ckpts = checkpoint_dirs(cfg.out_dir)
    assert len(ckpts) >= 2, "no checkpoint appeared before the deadline"
    for c in ckpts:  # every checkpoint directory that exists is complete
        assert {"config.json", "model.safetensors", "optimizer.pt", "state.json"} <= {f.name for f in c.iterdir()}
    start = json.loads((ckpts[-1] / "state.json").read_text())["step"]
    resumed = train(cfg, progress=False, stop_after=4)
    ref = train(tiny_run(tmp_path / "ref", store, steps=100_000), progress=False, stop_after=start + 4)
    a, b = losses(resumed.run_dir), losses(ref.run_dir)
    for step in range(1, start + 5):
        assert a[step] == b[step], f"step {step}"


def test_non_finite_loss_stops_without_broken_checkpoint(tmp_path, store, monkeypatch):
    import dnalm.train.trainer as trainer_mod

    calls = {"n": 0}
    real_loss = trainer_mod.lm_loss

    def loss_going_bad(*args, **kwargs):  # finite for 7 steps, then NaN
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 7 else loss

    monkeypatch.setattr(trainer_mod, "lm_loss", loss_going_bad)
    cfg = tiny_run(tmp_path / "nan", store, steps=40, max_bad_steps=3)
    with pytest.raises(TrainingError, match="3 consecutive non-finite losses"):
        train(cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("event") == "non_finite_loss"] == [8, 9, 10]
    assert [c.name for c in checkpoint_dirs(tmp_path / "nan")] == ["step-0000005"]  # nothing written after
    from safetensors.torch import load_file

    state = load_file(str(checkpoint_dirs(tmp_path / "nan")[0] / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in state.values())
    assert not (tmp_path / "nan" / "model").exists()


def test_case_mask_read_only_when_repeats_are_reweighted(tmp_path, store, monkeypatch):
    """The sampler reads the case mask only when data.repeat_weight != 1 (the loss's only use of it)."""
    from dnalm.data.samplers import RandomWindowSampler

    asked = []
    real = RandomWindowSampler.next_batch

    def spy(self, *args, **kwargs):
        batch = real(self, *args, **kwargs)
        asked.append(batch.lower is not None)
        return batch

    monkeypatch.setattr(RandomWindowSampler, "next_batch", spy)
    for weight in (1.0, 0.5):
        cfg = tiny_run(tmp_path / f"w{weight}", store, steps=2)
        cfg.data.repeat_weight = weight
        train(cfg, progress=False)
    assert asked == [False, False, True, True]


def test_transformer_trains_and_loss_falls(tmp_path, store):
    model = TransformerConfig(n_layer=1, d_model=32, n_head=2, max_len=130)
    res = train(tiny_run(tmp_path / "tf", store, steps=30, model=model), progress=False)
    l = losses(res.run_dir)
    assert sum(l[s] for s in range(26, 31)) < sum(l[s] for s in range(1, 6))
    assert (res.run_dir / "loss.png").stat().st_size > 0


def test_config_change_refuses_resume(tmp_path, store):
    from dnalm.config import ConfigError

    train(tiny_run(tmp_path / "r", store, steps=5), progress=False)
    other = tiny_run(tmp_path / "r", store, steps=5)
    other.data.seq_len = 64
    with pytest.raises(ConfigError, match="different data section"):
        train(other, progress=False)


def test_seq_len_longer_than_model_is_an_error(tmp_path, store):
    from dnalm.config import ConfigError

    cfg = tiny_run(tmp_path / "x", store)
    cfg.data.seq_len = 4096
    with pytest.raises(ConfigError, match="exceeds the model's maximum length"):
        train(cfg, progress=False)


def test_lr_schedule_shape():
    lrs = [lr_at(s, 1000, 1e-3, 10, 0.1) for s in range(1000)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert max(lrs) == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(1e-4, rel=1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    mid = lr_at(505, 1000, 1e-3, 10, 0.1)
    assert mid == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)), rel=1e-6)


def test_no_weight_decay_on_filters_norms_biases():
    from dnalm.models.lm import DNALM

    model = DNALM(HyenaConfig(n_layer=1, d_model=32, l_max=130, filter_order=16))
    decay, plain = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed and all("filter_fn" not in n and "norm" not in n and not n.endswith("bias") for n in decayed)
    assert any("in_proj.weight" in n for n in decayed)


# Expected parameter groups, family by family, written out by hand (not read from the specs): the
# no-decay names are filter coefficients, norms, biases, skip terms, the embedding and the router.
_NO_DECAY = {
    "hyenadna-tiny-1k": ("embed.weight", ".filter_fn.", "norm", ".bias"),
    "transformer-tiny-1k": ("embed.weight", "norm"),
    "striped-hyena-tiny": ("embed.weight", "norm", ".bias", ".short_bias", ".skip", ".poles", ".residues"),
    "striped-hyena2-tiny": ("embed.weight", "norm", ".bias", ".skip", ".log_poles", ".residues", ".mixer.h"),
    "dnahnet-tiny-3": ("embed.weight", "norm", ".router.", ".pad", "A_log", "dt_bias", ".D", "conv1d.bias"),
}


@pytest.mark.parametrize("preset", sorted(_NO_DECAY))
def test_parameter_groups_per_family(preset):
    """Every family's parameters split into decayed projections and undecayed filters/norms/biases; the
    classifier used by fine-tuning gets the same groups for its language model (plus its head)."""
    from dnalm.models import get_preset
    from dnalm.models.heads import SequenceClassifier
    from dnalm.models.lm import DNALM

    torch.manual_seed(0)
    model = DNALM(get_preset(preset))
    for module, prefix in ((model, ""), (SequenceClassifier(model, 2), "lm.")):
        decay, plain = param_groups(module, 0.1)
        names = {id(p): n for n, p in module.named_parameters()}
        assert len(decay["params"]) + len(plain["params"]) == len(names)
        for p in plain["params"]:
            name = names[id(p)]
            if not name.startswith(prefix):  # the classifier's head bias
                assert name == "head.proj.bias"
                continue
            assert any(k in "." + name[len(prefix):] for k in _NO_DECAY[preset]), f"{preset}: {name} not decayed"
        for p in decay["params"]:
            name = names[id(p)]
            if name.startswith(prefix):
                assert not any(k in "." + name[len(prefix):] for k in _NO_DECAY[preset]), f"{preset}: {name} decayed"
        assert decay["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0


def test_length_warmup_stages_and_resume(tmp_path, store):
    from dnalm.config import StageConfig

    def cfg(out):
        c = tiny_run(out, store, steps=12)
        c.data.warmup_stages = [StageConfig(32, 16, steps=4), StageConfig(64, 8, steps=4), StageConfig(128, 4)]
        return c

    ref = train(cfg(tmp_path / "w"), progress=False)
    rows = [r for r in ref.history if "loss" in r]
    assert [(r["seq_len"], r["batch_size"]) for r in rows] == [(32, 16)] * 4 + [(64, 8)] * 4 + [(128, 4)] * 4
    assert {r["tokens"] - p["tokens"] for p, r in zip(rows, rows[1:])} == {512}  # constant tokens per step
    train(cfg(tmp_path / "c"), progress=False, stop_after=7)  # killed in stage 2, checkpoint at step 5
    res = train(cfg(tmp_path / "c"), progress=False)
    assert losses(res.run_dir) == losses(ref.run_dir)


def test_staged_context_extension(tmp_path, store):
    """Stage 2 starts from stage 1's weights at a longer length with RoPE interpolation/base derived
    from docs/architectures.md §3, and a fresh optimizer and learning-rate schedule."""
    from dnalm.checkpoint import load_pretrained
    from dnalm.models.striped_hyena import StripedHyenaConfig
    from dnalm.models.striped_hyena import extend_context

    small = StripedHyenaConfig(version=2, n_layer=4, d_model=32, n_head=2, max_len=64, mlp_hidden=64)
    stage1 = tiny_run(tmp_path / "s1", store, steps=6, model=small)
    stage1.data.seq_len = 64
    train(stage1, progress=False)
    stage2 = tiny_run(tmp_path / "s2", store, steps=3, model=small, init_from=str(tmp_path / "s1"),
                      extend_from_len=64, warmup_steps=3)
    stage2.train.lr = 1e-12  # (almost) no update: the stage-2 weights must be stage 1's
    res = train(stage2, progress=False)
    m1, m2 = load_pretrained(tmp_path / "s1" / "model"), load_pretrained(res.run_dir / "model")
    assert m2.config == extend_context(small, 128, 64)
    assert (m2.config.max_len, m2.config.rope_interp, m2.config.rope_base) == (128, 2.0, pytest.approx(1e5))
    for (name, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    rows = [r for r in res.history if "loss" in r]
    assert rows[0]["step"] == 1 and rows[0]["lr"] == pytest.approx(1e-12 / 3)  # the schedule restarted
    with pytest.raises(Exception, match="no RoPE to extend"):
        train(tiny_run(tmp_path / "h", store, steps=2, extend_from_len=64), progress=False)


def test_context_extension_example_configs_agree():
    from dnalm.train.config import load_run_config
    from dnalm.train.trainer import extension_stage

    repo = Path(__file__).resolve().parents[1]
    s1 = load_run_config(repo / "configs" / "context_ext_stage1.yaml")
    s2 = extension_stage(load_run_config(repo / "configs" / "context_ext_stage2.yaml"))
    assert s2.train.extend_from_len == s1.data.seq_len and s2.train.init_from == s1.out_dir
    assert (s2.model.max_len, s2.model.rope_interp, s2.model.rope_base) == (8192, 8.0, pytest.approx(1e7))
    assert s1.data.repeat_weight == s2.data.repeat_weight == 0.1
