"""Training on several processes, applied from outside the model: process group, DDP or FSDP2 wrapping,
activation checkpointing, and the few collectives the trainer needs.

Launch one process per device with torchrun; each reads RANK, WORLD_SIZE and LOCAL_RANK from the
environment::

    torchrun --nproc-per-node 4 -m dnalm train --config run.yaml --set train.parallel=ddp

- ``train.parallel: ddp`` replicates the model (``DistributedDataParallel``); ``fsdp`` shards parameters,
  gradients and optimizer state with FSDP2 (``torch.distributed.fsdp.fully_shard`` on every block, then on
  the whole model). Both write sharded checkpoints (``dnalm.train.checkpoint``).
- Backend and device: nccl on ``cuda:LOCAL_RANK`` when CUDA is available, gloo on the CPU otherwise.
  ``parallel: none`` always trains on the CPU in this one process.
- Data: every rank draws the same global batch from one shared RNG stream and keeps its own rows
  (``dnalm.data.samplers``), so N processes see exactly the batches one process would. Gradients are
  averaged over ranks, so the update equals one process's update on the whole batch whenever every rank's
  rows carry the same loss weight (always true without repeat reweighting; with it, each rank's loss is
  normalised by its own weights, as gradient-accumulation micro-batches already are). Likewise dnaHNet's
  ratio loss takes its batch-level F and G over each rank's rows, as it does per micro-batch.
- ``parallel`` set without torchrun runs as a group of one (an in-memory store), which is how a sharded
  checkpoint is resumed in a single process.
- Activation checkpointing wraps the forward of each block of ``model.backbone`` (every entry of a
  ``layers`` ModuleList, nested ones included) in ``torch.utils.checkpoint``; parameter names and
  checkpoints are unchanged.
- Context parallelism (one sequence split over ranks; HyenaDNA; not yet used by the trainer):
  ``cp_forward`` at the end of this file, planned in docs/context_parallel.md.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from dnalm.config import ConfigError
from dnalm.models.hyena import HyenaBlock


@dataclass
class DistEnv:
    """Where this process stands: rank, world size, device; ``group`` is True while a process group is up."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    group: bool = False
    owns_group: bool = False  # this module created the group (and destroys it in teardown)

    @property
    def is_main(self) -> bool:
        """Rank 0 writes metrics, plots, checkpoint metadata and the final model."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(parallel: str) -> DistEnv:
    """Join (or create) the process group for ``train.parallel``; ``none`` stays a plain single process."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1")) if launched_by_torchrun() else 1
    if parallel == "none":
        if world > 1:
            raise ConfigError(
                f"torchrun started {world} processes but train.parallel is 'none'; "
                "set train.parallel to ddp or fsdp (e.g. --set train.parallel=ddp)"
            )
        return DistEnv()
    if not dist.is_available():
        raise ConfigError(f"train.parallel={parallel} needs torch.distributed, which this PyTorch build lacks")
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    owns = False
    if not dist.is_initialized():
        if launched_by_torchrun():
            dist.init_process_group(backend)
        else:  # a group of one, e.g. resuming a sharded checkpoint without torchrun
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        owns = True
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", rank))
    device = torch.device("cpu")
    if cuda:
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    return DistEnv(rank, world, local, device, dist.get_backend(), True, owns)


def teardown(env: DistEnv) -> None:
    import torch.distributed as dist

    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    import torch.distributed as dist

    if env.group and env.world_size > 1:
        dist.barrier()


def all_reduce(env: DistEnv, values: list[float], op: str = "sum") -> list[float]:
    """Sum (or max) a few Python numbers over all ranks, in float64; a no-op for a single process."""
    if not env.group or env.world_size == 1:
        return list(values)
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=env.device if env.backend == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.cpu().tolist()


def broadcast_object(env: DistEnv, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not env.group or env.world_size == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ------------------------------------------------------------------------------------------- the model


def model_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of ``model.backbone``: every entry of each ``layers`` ModuleList, outermost first."""
    backbone = getattr(unwrap(model), "backbone", model)
    blocks = []
    for module in backbone.modules():
        layers = getattr(module, "layers", None)
        if isinstance(layers, nn.ModuleList):
            blocks.extend(layers)
    return blocks


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Recompute every block's forward during backward instead of keeping its activations.

    Only each block's input is kept; peak memory falls from all layers' activations to one layer's plus
    the block inputs, for about one extra forward pass of compute. Applied in place (the block's
    ``forward`` is wrapped), so parameter names and checkpoints do not change. Returns the number of blocks.
    """
    blocks = model_blocks(model)
    if not blocks:
        family = getattr(getattr(unwrap(model), "config", None), "family", type(model).__name__)
        raise ConfigError(f"train.activation_checkpointing: the {family} backbone has no `layers` blocks to wrap")
    for block in blocks:
        if getattr(block, "_dnalm_checkpointed", False):
            continue
        inner = block.forward  # the bound method of the block's class

        def forward(*args: Any, _inner=inner, **kwargs: Any) -> Any:
            if not torch.is_grad_enabled():  # inference: nothing to save, so nothing to recompute
                return _inner(*args, **kwargs)
            # non-reentrant: works with kwargs, nested modules and FSDP2; RNG state (dropout) is replayed
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward
        block._dnalm_checkpointed = True
    return len(blocks)


def wrap_model(model: nn.Module, parallel: str, env: DistEnv) -> nn.Module:
    """Move ``model`` to this rank's device and wrap it for ``parallel`` ("none", "ddp" or "fsdp").

    FSDP2 is applied per block first (each block's parameters are gathered only while it runs), then to
    the root (embedding, final norm and the tied head).
    """
    model = model.to(env.device)
    if parallel == "none":
        return model
    if parallel == "ddp":
        ids = [env.device.index] if env.device.type == "cuda" else None
        # constant buffers (filter position tables) need no broadcast before every forward
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
    if parallel == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(env.device.type, (env.world_size,))
        for block in model_blocks(model):
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    raise ConfigError(f"train.parallel must be none, ddp or fsdp (got {parallel!r})")


def unwrap(model: nn.Module) -> nn.Module:
    """The DNALM inside a DDP wrapper (FSDP2 shards the module in place, so it is its own inner model)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def eval_model(model: nn.Module) -> nn.Module:
    """The module to run evaluation forwards on: DDP's inner module (its forward would sync), FSDP itself
    (its forward gathers the shards; every rank runs the same number of batches)."""
    return unwrap(model)


@contextlib.contextmanager
def grad_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce / reduce-scatter for all but the last gradient-accumulation micro-batch."""
    if enabled:
        yield
    elif isinstance(model, nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """Clip gradients to a global norm (over all ranks' shards under FSDP); returns the norm before clipping."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
        norm = norm.full_tensor()
    return float(norm)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict on the CPU (collective under FSDP: every rank must call it; under
    FSDP only rank 0 receives the tensors, the others get an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    inner = unwrap(model)
    if not any(hasattr(p, "full_tensor") for p in inner.parameters()):
        return {k: v.detach().cpu() for k, v in inner.state_dict().items()}
    return get_model_state_dict(inner, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def check_world(config: Any, env: DistEnv) -> None:
    """Every rank needs an equal share of each global batch, split again into grad_accum micro-batches."""
    per = env.world_size * config.train.grad_accum
    sizes = [("train.batch_size", config.train.batch_size)]
    sizes += [(f"data.warmup_stages[{i}].batch_size", s.batch_size) for i, s in enumerate(config.data.warmup_stages)]
    for name, size in sizes:
        if size % per:
            raise ConfigError(
                f"{name} {size} is the global batch; with {env.world_size} processes and train.grad_accum "
                f"{config.train.grad_accum} it must be divisible by {per}"
            )


# ------------------------------------------------------------------- context parallelism (HyenaDNA)
# The plan is docs/context_parallel.md. Each rank of ``group`` holds a contiguous slice of the sequence
# (positions [r L/P, (r+1) L/P)) with all channels. Position-wise parts run locally; the short causal
# convolution takes a (k-1)-position halo from the previous rank; the long convolution switches to the
# channel layout (all positions, D/P channels) by an all-to-all, convolves by FFT, and switches back.
# Not wired into the trainer yet: ``cp_forward`` runs a HyenaDNA model on one sequence split over ranks.


def _peer(group: Any, rank: int) -> int:
    import torch.distributed as dist

    return dist.get_global_rank(group, rank) if group is not None else rank


class _Halo(torch.autograd.Function):
    """The previous rank's last ``width`` positions of x (B, Lp, C) -> (B, width, C); zeros on rank 0."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, width: int, group: Any) -> torch.Tensor:
        import torch.distributed as dist

        rank, world = dist.get_rank(group), dist.get_world_size(group)
        ctx.width, ctx.group, ctx.shape = width, group, x.shape
        halo = x.new_zeros(x.shape[0], width, x.shape[2])
        ops = []
        if rank + 1 < world:
            ops.append(dist.P2POp(dist.isend, x[:, x.shape[1] - width :].contiguous(), _peer(group, rank + 1), group))
        if rank > 0:
            ops.append(dist.P2POp(dist.irecv, halo, _peer(group, rank - 1), group))
        for req in dist.batch_isend_irecv(ops) if ops else []:
            req.wait()
        return halo

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        import torch.distributed as dist

        rank, world = dist.get_rank(ctx.group), dist.get_world_size(ctx.group)
        grad = g.new_zeros(ctx.shape)
        tail = g.new_zeros(g.shape[0], ctx.width, g.shape[2])
        ops = []
        if rank > 0:  # the halo came from rank - 1: its gradient goes back there
            ops.append(dist.P2POp(dist.isend, g.contiguous(), _peer(ctx.group, rank - 1), ctx.group))
        if rank + 1 < world:
            ops.append(dist.P2POp(dist.irecv, tail, _peer(ctx.group, rank + 1), ctx.group))
        for req in dist.batch_isend_irecv(ops) if ops else []:
            req.wait()
        grad[:, ctx.shape[1] - ctx.width :] = tail
        return grad, None, None


def _all_to_all(x: torch.Tensor, group: Any) -> torch.Tensor:
    """x (P, ...) -> y (P, ...) with y[j] = rank j's x[my rank]."""
    import torch.distributed as dist

    x = x.contiguous()
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # contiguous (empty_like would keep x's strides)
    dist.all_to_all_single(y, x, group=group)
    return y


class _SeqToChannel(torch.autograd.Function):
    """Sequence layout (B, L/P, D) -> channel layout (B, L, D/P): all positions of this rank's channels."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Any) -> torch.Tensor:
        import torch.distributed as dist

        P = dist.get_world_size(group)
        B, Lp, D = x.shape
        ctx.group = group
        send = x.reshape(B, Lp, P, D // P).permute(2, 0, 1, 3)  # (P, B, Lp, D/P): piece j = rank j's channels
        return _all_to_all(send, group).permute(1, 0, 2, 3).reshape(B, P * Lp, D // P)  # (B, L, D/P)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return _ChannelToSeq.apply(g, ctx.group), None


class _ChannelToSeq(torch.autograd.Function):
    """Channel layout (B, L, D/P) -> sequence layout (B, L/P, D); the inverse of _SeqToChannel."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Any) -> torch.Tensor:
        import torch.distributed as dist

        P = dist.get_world_size(group)
        B, L, Dp = x.shape
        ctx.group = group
        send = x.reshape(B, P, L // P, Dp).permute(1, 0, 2, 3)  # (P, B, L/P, D/P): piece j = rank j's positions
        return _all_to_all(send, group).permute(1, 2, 0, 3).reshape(B, L // P, P * Dp)  # (B, L/P, D)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return _SeqToChannel.apply(g, ctx.group), None


def cp_hyena_block(block: nn.Module, x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """A HyenaBlock on this rank's slice x (B, L/P, D) of a sequence split over ``group``; same result as
    the block on the whole sequence, sliced. Composed from the operator's stages (``HyenaOperator.short_conv``,
    ``long_conv``, ``output``) around the two exchanges; no dropout."""
    import torch.distributed as dist

    rank, P = dist.get_rank(group), dist.get_world_size(group)
    mixer = block.mixer
    D, Lp = mixer.d_model, x.shape[1]
    if D % P:
        raise ConfigError(f"context parallelism splits channels: d_model {D} must be divisible by {P} ranks")
    k = mixer.short_filter.kernel_size[0]
    if k - 1 > Lp:
        raise ConfigError(f"context parallelism: {Lp} positions per rank is shorter than the short-conv halo {k - 1}")
    r = x.float()  # (B, Lp, D) residual, float32 as in HyenaBlock
    z = mixer.in_proj(block.norm1(r.to(block.norm1.weight.dtype)))  # (B, Lp, C)
    history = _Halo.apply(z, k - 1, group).transpose(1, 2)  # (B, C, k-1): the previous rank's last inputs
    x0, *gates, v = mixer.short_conv(z.transpose(1, 2), history).split(D, dim=1)  # each (B, D, Lp)
    h = mixer.long_filter(P * Lp)  # ((N-1) D, L): replicated; each rank uses its own channels' rows
    mine = slice(rank * (D // P), (rank + 1) * (D // P))
    for o, x_i in enumerate(reversed(gates)):
        v = v * x_i  # (B, D, Lp)
        vc = _SeqToChannel.apply(v.transpose(1, 2), group)  # (B, L, D/P)
        y = mixer.long_conv(vc.transpose(1, 2), o, h, channels=mine)  # (B, D/P, L)
        v = _ChannelToSeq.apply(y.transpose(1, 2), group).transpose(1, 2)  # (B, D, Lp)
    r = r + mixer.output(x0, v)  # (B, Lp, D)
    return r + block.mlp(block.norm2(r.to(block.norm2.weight.dtype)))


def cp_forward(model: nn.Module, ids: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Logits (B, L/P, V) of this rank's slice ``ids`` (B, L/P) of sequences split over ``group``
    (a HyenaDNA DNALM). Parameter gradients are partial per rank: sum them over the group."""
    if not all(isinstance(block, HyenaBlock) for block in getattr(model.backbone, "layers", [None])):
        raise ConfigError(f"context parallelism is implemented for HyenaDNA only (not {model.config.family})")
    x = model.embed(ids)  # (B, Lp, D)
    for block in model.backbone.layers:
        x = cp_hyena_block(block, x, group)
    h = model.norm_f(x.to(model.norm_f.weight.dtype))
    return F.linear(h, model.head_weight).float()  # (B, Lp, V)
