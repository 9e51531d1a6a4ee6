"""Several processes on the one loop. Accelerate launches them (`tunesmith train --nproc N`, or `accelerate launch
-m tunesmith train` for many GPUs or machines) and sets up their process group (gloo on CPUs, NCCL on GPUs).

Data-parallel as DDP does it: every process holds the whole model, takes its own share of each step's batches
and the gradients are summed across processes before the optimiser steps, so every process makes the same update.
The loop sums them itself, in one flat all-reduce after the last micro-batch, rather than through DDP's wrapper:
DDP syncs only what runs through the wrapper's forward, and tunesmith's losses call parts of the model (the
decoder, then the LM head on the target positions only).

With train.distributed.strategy fsdp, PyTorch's FSDP2 (fully_shard) shards a copy of the model instead: each
transformer layer, then the rest; the gradients are reduce-scattered by FSDP itself. The method's model object stays
whole (on the CPU) and gets the trained weights back at the end, so that what follows training (evaluation, saving)
is the same code as in one process.

Rank 0 alone writes (run folder, registry, checkpoints, logs, report) and prepares the data; the other ranks train
and exit when the loop ends (WorkerDone).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch

from tunesmith.errors import TunesmithError


class WorkerDone(Exception):  # noqa: N818 - not an error: a rank other than 0 has nothing to do after training
    """Raised by the loop on ranks other than 0 once training ends: evaluation and saving belong to rank 0."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """A launcher (Accelerate's, torchrun) started this process, perhaps as one of several."""
    return "LOCAL_RANK" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device_type: str, timeout_s: float, sharded: bool = False) -> World:
    """The process group, once per process (Accelerate's PartialState): gloo where the run is on the CPU. A rank that
    stops answering fails the others after timeout_s instead of leaving them waiting for ever. FSDP needs a group
    even in one process: a group of one, then."""
    import torch.distributed as dist

    if dist.is_initialized():
        return current()
    wait = timedelta(seconds=timeout_s)
    if launched():
        from accelerate import PartialState

        PartialState(cpu=device_type == "cpu", timeout=wait)
    elif sharded:
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(
            backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1, timeout=wait
        )
    return current()


def current() -> World:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size())))


def device_for(device: torch.device, world: World) -> torch.device:
    """One GPU per process on a machine; the CPU is shared."""
    if world.size > 1 and device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def threads_for(world: World) -> int:
    """The CPU cores of this machine shared out among its processes."""
    return max(1, len(os.sched_getaffinity(0)) // world.local_size)


def broadcast(value: object, world: World) -> object:
    """Rank 0's value, on every rank."""
    if world.size == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_floats(values: list[float], world: World) -> list[float]:
    """Each value summed over the ranks (float64, so that counts stay exact)."""
    if world.size == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=_small_device())
    dist.all_reduce(t)
    return t.tolist()


def most(value: int, world: World) -> int:
    """The largest of the ranks' values."""
    if world.size == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.int64, device=_small_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _small_device() -> torch.device | None:
    """Where a small collective's tensor lives: NCCL talks only between GPUs."""
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None


def same_start(model: torch.nn.Module, world: World) -> None:
    """Rank 0's trainable weights on every rank (as DDP does at wrap time): a seed that differs cannot split them."""
    if world.size == 1:
        return
    import torch.distributed as dist

    for p in model.parameters():
        if p.requires_grad:
            dist.broadcast(p.data, src=0)


def sum_gradients(params: list[torch.nn.Parameter], world: World) -> None:
    """Every trainable parameter's gradient summed over the ranks, in one flat buffer (a missing gradient counts as
    zeros, so that every rank sends the same layout)."""
    if world.size == 1:
        return
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    at = 0
    for p, g in zip(params, grads):
        p.grad = flat[at : at + g.numel()].view_as(g)
        at += g.numel()


def finish(world: World) -> None:
    """Every rank reaches the end of training before any leaves it."""
    if world.size > 1:
        import torch.distributed as dist

        dist.barrier()


def close(world: World) -> None:
    """The process group taken down by each rank as its part of the run ends, without waiting for the others (rank 0
    evaluates long after the others are done): not left to the interpreter's exit, where gloo's threads may still be
    running and abort the process."""
    import torch.distributed as dist

    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def shard(model: torch.nn.Module, world: World, device: torch.device, names: list[str] | None) -> torch.nn.Module:
    """A copy of the model, sharded by FSDP2 over the ranks: each transformer layer, then the rest. The model itself
    goes to the CPU, whole, until unshard_into gives it the trained weights."""

    from torch.distributed.fsdp import fully_shard

    from tunesmith.models.layers import layer_classes

    classes = layer_classes(model, names)
    sharded = training_copy(model, device)
    try:
        for module in sharded.modules():
            if type(module) in classes:
                fully_shard(module)
        fully_shard(sharded)
    except ValueError as err:  # e.g. a weight tied across two layers
        raise TunesmithError(f"train.distributed.fsdp_layers: FSDP cannot shard this model so: {err}") from None
    return sharded


def training_copy(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The copy that an engine (FSDP, DeepSpeed) trains; the model itself waits on the CPU, whole, for the trained
    weights (unshard_into, zero.gather_into)."""
    import copy

    model.to("cpu")
    return copy.deepcopy(model).to(device)


def is_sharded(model: torch.nn.Module) -> bool:
    """Its weights are in shards (FSDP, ZeRO-3): a forward needs every rank."""
    from torch.distributed.fsdp import FSDPModule

    from tunesmith.train import zero

    return isinstance(model, FSDPModule) or zero.partitioned(model)


def full_state(model: torch.nn.Module, world: World, trainable_only: bool = True) -> dict[str, torch.Tensor]:
    """The whole weights of a sharded model, gathered (every rank takes part; rank 0 receives them, on the CPU)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from tunesmith.train import zero

    if zero.partitioned(model):
        return zero.full_weights(model)
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if trainable_only:
        keep = {n for n, p in model.named_parameters() if p.requires_grad}
        state = {k: v for k, v in state.items() if k in keep}
    return state


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, weights: dict, optim: dict) -> None:
    """A gathered checkpoint back into a sharded model and its optimiser (any process count)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    options = StateDictOptions(full_state_dict=True, strict=False)
    set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=optim, options=options)


def unshard_into(model: torch.nn.Module, sharded: torch.nn.Module, world: World, device: torch.device) -> None:
    """The trained weights of the sharded copy into the whole model, on rank 0, back on the training device."""
    state = full_state(sharded, world, trainable_only=False)
    if world.main:
        model.load_state_dict(state)
        model.to(device)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_nproc(nproc: int) -> None:
    """--nproc N fits the machine: at most one process per GPU, or per CPU core where there is no GPU."""
    if nproc < 1:
        raise TunesmithError(f"--nproc must be at least 1, got {nproc}")
    if torch.cuda.is_available():
        have, what = torch.cuda.device_count(), "GPUs"
    else:
        have, what = len(os.sched_getaffinity(0)), "CPU cores"
    if nproc > have:
        raise TunesmithError(f"--nproc {nproc}: this machine has {have} {what}; give at most {have}")
