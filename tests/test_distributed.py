"""Distributed training: 2 CPU processes under torchrun (gloo) against one process, for DDP and FSDP2;
sharded checkpoints resumed on a different world size; export; activation checkpointing per block."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from dnalm.config import ConfigError, DataConfig, RunConfig, TrainConfig, to_dict
from dnalm.models.hnet import HNetConfig
from dnalm.models.hyena import HyenaConfig
from dnalm.models.striped_hyena import StripedHyenaConfig
from dnalm.models.transformer import TransformerConfig
from dnalm.models.lm import DNALM, lm_loss
from dnalm.train import distributed as D
from dnalm.train.checkpoint import checkpoint_dirs, is_sharded_checkpoint
from dnalm.train.trainer import train

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]
STEPS = 8


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from dnalm.data.store import prepare

    out = tmp_path_factory.mktemp("store") / "lambda"  # phage lambda, NC_001416.1
    prepare([DATA / "phage_lambda.fa"], out, val_fraction=0.1, test_fraction=0.05, progress=False)
    return out


def run_config(out, store, parallel="none", **train_kw) -> RunConfig:
    return RunConfig(
        model=HyenaConfig(n_layer=1, d_model=32, l_max=130, filter_order=16),
        data=DataConfig(store=str(store), seq_len=128, rc_augment=True),
        train=TrainConfig(steps=STEPS, batch_size=4, lr=3e-3, eval_every=4, eval_tokens=2048, log_every=1,
                          ckpt_every=4, keep_last=2, threads=1, parallel=parallel, precision="fp32", **train_kw),
        out_dir=str(out),
    )


def metrics(run_dir) -> tuple[dict[int, float], dict[int, float], dict[int, int]]:
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    loss = {r["step"]: r["loss"] for r in rows if "loss" in r}
    val = {r["step"]: r["val/loss"] for r in rows if "val/loss" in r}
    tokens = {r["step"]: r["tokens"] for r in rows if "loss" in r}
    return loss, val, tokens


def assert_same_curve(a, b, rel=1e-5):
    assert sorted(a) == sorted(b)
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=rel), f"step {step}: {a[step]} vs {b[step]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, store):
    """One process, the same global batch (4) and seeds."""
    return train(run_config(tmp_path_factory.mktemp("ref") / "run", store), progress=False)


def torchrun(cfg: RunConfig, tmp_path: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "dnalm", "train", "--config", str(path)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
@pytest.mark.parametrize("parallel, resume_as", [("ddp", "none"), ("fsdp", "fsdp")])
def test_two_processes_match_one_and_resume_on_one(tmp_path, store, reference, parallel, resume_as):
    """2 ranks (torchrun, gloo) follow the 1-process loss curve; their sharded step-4 checkpoint resumes
    in a single process (world size 1) onto the same trajectory; export gives the final weights."""
    cfg = run_config(tmp_path / "run", store, parallel)
    proc = torchrun(cfg, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("run: ") == 1  # only rank 0 reports
    run = Path(cfg.out_dir)

    ref_loss, ref_val, ref_tokens = metrics(reference.run_dir)
    loss, val, tokens = metrics(run)
    assert_same_curve(loss, ref_loss)
    assert_same_curve(val, ref_val)
    assert tokens == ref_tokens  # token counts are summed over ranks

    ckpts = checkpoint_dirs(run)
    assert [c.name for c in ckpts] == ["step-0000004", "step-0000008"]
    assert all(is_sharded_checkpoint(c) and not (c / "model.safetensors").exists() for c in ckpts)
    assert not list(run.glob("checkpoints/.*"))  # no temporary directories left behind
    final, ref_final = weights(run / "model"), weights(reference.run_dir / "model")
    assert sorted(final) == sorted(ref_final)
    for k in final:
        torch.testing.assert_close(final[k], ref_final[k], rtol=1e-4, atol=1e-5)

    # dnalm export: the sharded step-8 checkpoint -> model.safetensors equal to the final model
    from dnalm.cli import main

    assert main(["export", str(ckpts[-1]), "--out", str(tmp_path / "exported")]) == 0
    exported = weights(tmp_path / "exported")
    assert all(torch.equal(exported[k], final[k]) for k in final)

    # resume from step 4 on ONE process (a different world size), as plain or as an FSDP group of one
    shutil.rmtree(ckpts[-1])
    shutil.rmtree(run / "model")
    resumed = train(run_config(run, store, resume_as), progress=False)
    assert resumed.steps == STEPS
    loss2, val2, _ = metrics(run)
    assert_same_curve(loss2, ref_loss)
    assert_same_curve(val2, ref_val)
    assert not torch.distributed.is_initialized()  # the group of one was torn down


def test_plain_checkpoint_resumes_under_fsdp_group_of_one(tmp_path, store, reference):
    """A single-process checkpoint (model.safetensors + optimizer.pt) loads into an FSDP-wrapped model."""
    run = tmp_path / "run"
    shutil.copytree(reference.run_dir, run)
    shutil.rmtree(run / "checkpoints" / "step-0000008")
    shutil.rmtree(run / "model")
    res = train(run_config(run, store, "fsdp"), progress=False)
    loss, val, _ = metrics(res.run_dir)
    ref_loss, ref_val, _ = metrics(reference.run_dir)
    assert_same_curve(loss, ref_loss)
    assert_same_curve(val, ref_val)
    assert is_sharded_checkpoint(checkpoint_dirs(run)[-1])  # an fsdp run writes sharded checkpoints


def test_batch_must_split_over_ranks(store, tmp_path):
    cfg = run_config(tmp_path, store, "ddp", grad_accum=2)
    with pytest.raises(ConfigError, match="must be divisible by 8"):
        D.check_world(cfg, D.DistEnv(rank=0, world_size=4))


def test_parallel_none_under_torchrun_is_an_error(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="set train.parallel to ddp or fsdp"):
        D.setup("none")


# ------------------------------------------------------------------------------ activation checkpointing


FAMILIES = {
    "hyena": HyenaConfig(n_layer=2, d_model=32, l_max=130, filter_order=16, dropout=0.1),
    "transformer": TransformerConfig(n_layer=2, d_model=32, n_head=2, max_len=130, dropout=0.1),
    "striped_hyena": StripedHyenaConfig(n_layer=2, d_model=32, n_head=2, max_len=130, layers=["hyena", "attn"]),
    "striped_hyena2": StripedHyenaConfig(version=2, n_layer=4, d_model=32, n_head=2, max_len=130, mr_len=16),
    "hnet": HNetConfig(d_model=32, inner_d_model=[64], target_ratios=[3.0], encoder_layout=["m1t1"],
                       decoder_layout=["t1m1"], main_layout="t1", attn_head_dim=16, d_state=8, mamba_headdim=16,
                       ssd_chunk_size=16, max_len=130),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_activation_checkpointing_same_loss_and_gradients(family):
    """Recomputing each block in backward gives the same loss and gradients (dropout replayed), and the
    parameter names (hence checkpoints) do not change."""
    from dnalm.data.sequences import read_sequences

    ids = torch.from_numpy(next(read_sequences(DATA / "phage_lambda.fa")).ids[:2 * 96].astype("int64")).view(2, 96)

    def loss_and_grads(checkpointed: bool):
        torch.manual_seed(0)
        model = DNALM(FAMILIES[family]).train()
        names = list(model.state_dict())
        if checkpointed:
            assert D.apply_activation_checkpointing(model) >= 2
            assert list(model.state_dict()) == names
        torch.manual_seed(1)  # the dropout masks
        out = model(ids)
        loss = lm_loss(out.logits[:, :-1], ids[:, 1:])
        if out.aux_loss is not None:
            loss = loss + out.aux_loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads(False)
    loss_ac, grads_ac = loss_and_grads(True)
    assert torch.equal(loss, loss_ac)
    assert sorted(grads) == sorted(grads_ac)
    for n in grads:
        torch.testing.assert_close(grads_ac[n], grads[n], rtol=1e-5, atol=1e-7, msg=n)


def test_activation_checkpointing_trains_the_same(tmp_path, store, reference):
    res = train(run_config(tmp_path / "ac", store, activation_checkpointing=True), progress=False)
    assert_same_curve(metrics(res.run_dir)[0], metrics(reference.run_dir)[0], rel=1e-6)


# ------------------------------------------------------------------------------- context parallelism

CP_WORKER = r'''
import json, sys, torch, torch.distributed as dist
from dnalm.models.hyena import HyenaConfig
from dnalm.data.sequences import read_sequences
from dnalm.models.lm import DNALM, lm_loss
from dnalm.tokenizer import PAD
from dnalm.train.distributed import cp_forward

torch.set_num_threads(1)
dist.init_process_group("gloo")
rank, P = dist.get_rank(), dist.get_world_size()
L = 256
lam = next(read_sequences(sys.argv[1])).ids
ids = torch.from_numpy(lam[: 2 * L].astype("int64")).view(2, L)  # two windows of phage lambda
targets = torch.cat([ids[:, 1:], torch.full((2, 1), PAD)], dim=1)  # position t predicts token t+1
out = {}
for order in (2, 3):
    torch.manual_seed(0)
    model = DNALM(HyenaConfig(n_layer=2, d_model=32, l_max=L + 2, filter_order=16, order=order))
    ref = model(ids).logits  # one process, whole sequences
    loss_ref = lm_loss(ref, targets)
    loss_ref.backward()
    g_ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    sl = slice(rank * L // P, (rank + 1) * L // P)  # this rank's positions
    logits = cp_forward(model, ids[:, sl])
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[:, sl].reshape(-1),
                                           ignore_index=PAD, reduction="sum")
    count = torch.tensor(float((targets[:, sl] != PAD).sum()))
    dist.all_reduce(count)
    (ce / count).backward()
    loss = (ce / count).detach().clone()
    dist.all_reduce(loss)
    for p in model.parameters():
        dist.all_reduce(p.grad)  # partial per rank: summed over the context-parallel group
    out[order] = {
        "logits": (logits - ref[:, sl]).abs().max().item(),
        "loss": abs(loss.item() - loss_ref.item()),
        "grad": max(((p.grad - g_ref[n]).abs().max() / g_ref[n].abs().max()).item()
                    for n, p in model.named_parameters()),
    }
open(f"{sys.argv[2]}/rank{rank}.json", "w").write(json.dumps(out))  # a file each: stdout lines interleave
dist.destroy_process_group()
'''


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_context_parallel_two_ranks_match_one(tmp_path):
    """A sequence split over 2 ranks (halo exchange for the short conv, all-to-all around the FFT) gives the
    logits, loss and parameter gradients of one process on the whole sequence (orders 2 and 3)."""
    script = tmp_path / "cp_worker.py"
    script.write_text(CP_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script),
           str(DATA / "phage_lambda.fa"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for res in results:
        for order, diff in res.items():
            assert diff["logits"] < 1e-5 and diff["loss"] < 1e-6, (order, diff)
            assert diff["grad"] < 1e-5, (order, diff)


def test_context_parallel_layout_round_trip():
    """seq -> channel -> seq is the identity in a group of one, and the halo of rank 0 is zeros."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        x = torch.randn(2, 10, 8, requires_grad=True)
        y = D._ChannelToSeq.apply(D._SeqToChannel.apply(x, None), None)
        assert torch.equal(y, x)
        halo = D._Halo.apply(x, 2, None)
        assert halo.shape == (2, 2, 8) and not halo.any()
    finally:
        dist.destroy_process_group()
