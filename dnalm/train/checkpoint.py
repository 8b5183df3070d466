"""Training checkpoints inside a run directory.

Layout::

    RUN/checkpoints/step-0000200/   config.json, model.safetensors   (the model, loadable on its own)
                                    optimizer.pt                      (AdamW state; tensors only)
                                    state.json                        (step, tokens, sampler, schedule, RNG)
    RUN/model/                      the final model (config.json + model.safetensors)

Runs with ``train.parallel`` ddp or fsdp write *sharded* checkpoints instead (torch.distributed.checkpoint,
every rank writes its own part; loadable on any number of processes, one included)::

    RUN/checkpoints/step-0000200/   config.json                       (model config; no weights file)
                                    dcp/.metadata, dcp/__R_0.distcp   (model + AdamW state, by parameter name)
                                    state.json

``dnalm export`` turns one into config.json + model.safetensors (:func:`export_checkpoint`).

Each checkpoint directory is written atomically (see dnalm.checkpoint.atomic_dir; a sharded one is
renamed into place by rank 0 after every rank has written), so a killed run leaves either a complete
checkpoint or none. ``optimizer.pt`` is read with ``weights_only=True``; DCP files hold plain tensors.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from dnalm.checkpoint import (
    CKPT_DIR,
    CONFIG_FILE,
    CheckpointError,
    atomic_dir,
    checkpoint_dirs,
    is_native_checkpoint,
    load_pretrained,
    save_pretrained,
    write_model_files,
)
from dnalm.config import ConfigError, to_dict
from dnalm.models import model_config_from_dict
from dnalm.models.lm import DNALM
from dnalm.tokenizer import Tokenizer
from dnalm.train.distributed import barrier, broadcast_object, unwrap

SHARDS_DIR = "dcp"


def save_training_checkpoint(
    run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict, keep_last: int
) -> Path:
    path = Path(run_dir) / CKPT_DIR / f"step-{step:07d}"
    with atomic_dir(path) as tmp:
        write_model_files(model, tmp, {"step": step})
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(state) + "\n")
    for old in checkpoint_dirs(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def load_training_state(ckpt: Path) -> tuple[dict[str, torch.Tensor], dict, dict[str, Any]]:
    """(model state dict, optimizer state dict, state.json) of a checkpoint directory."""
    try:
        model_state = load_file(str(ckpt / "model.safetensors"))
        optim_state = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
        state = json.loads((ckpt / "state.json").read_text())
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError) as e:  # damaged
        raise CheckpointError(f"{ckpt}: cannot resume from this checkpoint ({' '.join(str(e).split())})") from None
    if not isinstance(state, dict) or not {"step", "tokens", "sampler", "schedule", "torch_rng"} <= set(state):
        raise CheckpointError(f"{ckpt}: state.json lacks the training state; cannot resume from this checkpoint")
    return model_state, optim_state, state


# ------------------------------------------------------------------------------ sharded checkpoints


def is_sharded_checkpoint(ckpt: str | Path) -> bool:
    """A checkpoint written by torch.distributed.checkpoint (a ``dcp/`` folder with its ``.metadata``)."""
    return (Path(ckpt) / SHARDS_DIR / ".metadata").is_file()


@contextlib.contextmanager
def _quiet_dcp():
    # DCP warns when it runs without a process group ("assuming the intent is to load in a single
    # process"): that is exactly the intent of a single-process resume or export.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        yield


def save_sharded_checkpoint(
    run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict,
    keep_last: int, env,
) -> Path:
    """Write a sharded training checkpoint; every rank must call this (it is a collective).

    ``model`` may be wrapped (DDP, FSDP2) or plain; tensors are saved by parameter name, so the checkpoint
    loads on any world size. ``env`` is the trainer's :class:`dnalm.train.distributed.DistEnv`.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    path = Path(run_dir) / CKPT_DIR / f"step-{step:07d}"
    model_state, optim_state = get_state_dict(model, optimizer)
    with atomic_dir(path) if env.is_main else contextlib.nullcontext() as tmp:
        tmp = Path(broadcast_object(env, str(tmp)))  # rank 0 picked the temporary directory
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp / SHARDS_DIR))
        if env.is_main:
            inner = unwrap(model)
            meta = {"format": "dnalm", "model": _config_dict(inner), "tokenizer": inner.tokenizer.to_dict(),
                    "step": step, "weights": f"sharded in {SHARDS_DIR}/ (make model.safetensors with dnalm export)"}
            (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
            (tmp / "state.json").write_text(json.dumps(state) + "\n")
        barrier(env)  # every rank's shard is on disk before rank 0 renames the directory into place
    if env.is_main:
        for old in checkpoint_dirs(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(env)
    return path


def _config_dict(model: torch.nn.Module) -> dict:
    return to_dict(model.config)


def load_checkpoint_into(ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load a training checkpoint of either kind into a (possibly wrapped) model and its optimizer;
    returns state.json. Every rank calls this. A sharded checkpoint reshards to this world size; a
    single-process checkpoint (model.safetensors + optimizer.pt) is read whole on every rank and sharded."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
        set_state_dict,
    )

    ckpt = Path(ckpt)
    if is_sharded_checkpoint(ckpt):
        model_state, optim_state = get_state_dict(model, optimizer)
        both = {"model": model_state, "optim": optim_state}
        try:
            with _quiet_dcp():
                dcp.load(both, checkpoint_id=str(ckpt / SHARDS_DIR))
        except Exception as e:  # a missing or truncated shard, or a model that does not match
            raise CheckpointError(f"{ckpt}: cannot resume from this sharded checkpoint ({e})") from None
        set_state_dict(model, optimizer, model_state_dict=both["model"], optim_state_dict=both["optim"])
        try:
            return json.loads((ckpt / "state.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{ckpt}: cannot read state.json ({e})") from None

    model_state, optim_state, state = load_training_state(ckpt)
    full = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=full)
    # optimizer.pt numbers parameters in optimizer order; DCP's API wants parameter names
    names = {id(p): n for n, p in unwrap(model).named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    by_name = {
        "state": {order[int(i)]: s for i, s in optim_state["state"].items()},
        "param_groups": [{**g, "params": [order[int(i)] for i in g["params"]]} for g in optim_state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=full)
    return state


def export_checkpoint(src: str | Path, out: str | Path) -> tuple[Path, Path]:
    """Write ``out``/config.json + model.safetensors from a checkpoint (sharded or not) or a run directory
    (its newest checkpoint). Runs in one process, without a process group. Returns (source, out)."""
    import torch.distributed.checkpoint as dcp

    src = Path(src)
    if not src.exists():
        raise CheckpointError(f"{src}: no such checkpoint or run directory")
    if not (src / CONFIG_FILE).is_file():  # a run directory: its newest checkpoint
        found = checkpoint_dirs(src)
        if not found:
            raise CheckpointError(f"{src}: neither a checkpoint (config.json) nor a run directory with checkpoints")
        src = found[-1]
    if not is_sharded_checkpoint(src):
        if is_native_checkpoint(src):
            model = load_pretrained(src)
            extra = {k: v for k, v in json.loads((src / CONFIG_FILE).read_text()).items()
                     if k not in ("format", "model", "tokenizer")}
            return src, save_pretrained(model, out, {**extra, "exported_from": str(src)})
        raise CheckpointError(f"{src}: no {SHARDS_DIR}/.metadata and no model.safetensors; not a complete checkpoint")
    try:
        meta = json.loads((src / CONFIG_FILE).read_text())
        config = model_config_from_dict(meta["model"], where=f"{src / CONFIG_FILE}:model")
        tokenizer = Tokenizer(**meta.get("tokenizer", {}))
    except (OSError, json.JSONDecodeError, KeyError, ConfigError, TypeError) as e:
        raise CheckpointError(f"{src / CONFIG_FILE}: not a dnalm checkpoint config ({e})") from None
    model = DNALM(config, tokenizer=tokenizer)
    state = {"model": model.state_dict()}
    try:
        with _quiet_dcp():
            dcp.load(state, checkpoint_id=str(src / SHARDS_DIR))  # reads only the model's tensors, whole
    except Exception as e:
        raise CheckpointError(f"{src}: cannot read the sharded weights ({e})") from None
    model.load_state_dict(state["model"])
    return src, save_pretrained(model, out, {"step": meta.get("step"), "exported_from": str(src)})
