"""train.distributed.strategy deepspeed: DeepSpeed's ZeRO engine on the one loop. Stage 2 shards the optimiser state
and the gradients over the processes (each holds the whole weights); stage 3 shards the weights too, and a layer's
weights are gathered just for its forward and backward (as FSDP does).

The loop keeps everything else: its batches, loss, learning-rate schedule, early stopping and checkpoints. The engine
gets the loop's own AdamW and runs in DeepSpeed's unmanaged accumulation mode: every backward of a step's parts only
accumulates (stage 2 and 3 reduce-scatter as they go), and `step()` is the boundary that clips, updates and zeroes.
As under FSDP, a copy of the model trains and the method's model gets the trained weights back at the end, and
checkpoints hold the gathered weights and optimiser state, keyed by parameter name, so that a run resumes with any
process count.

DeepSpeed is optional: `pip install --no-build-isolation deepspeed==0.19.8` (its source build imports torch, and build
isolation would fetch an unpinned one). On a CPU it talks over gloo (DeepSpeed's CPU accelerator picks it when Intel's
oneCCL bindings are absent).
"""

from __future__ import annotations

import importlib.util
import logging
import os

import torch

from tunesmith.errors import TunesmithError
from tunesmith.train.checkpoint import load_trainable

VERSION = "0.19.8"  # the version tested here (tests/train/test_dist.py)
ADAM_STATE = ("exp_avg", "exp_avg_sq")
ALONE = "TUNESMITH_ZERO_SET_LOCAL_RANK"


def check_installed() -> None:
    if importlib.util.find_spec("deepspeed") is None:
        raise TunesmithError(
            "train.distributed.strategy deepspeed needs the deepspeed package, which is not installed: "
            f"`pip install --no-build-isolation deepspeed=={VERSION}` (after torch), or use strategy ddp or fsdp"
        )


def engine(model: torch.nn.Module, optimizer: torch.optim.Optimizer, stage: int, max_grad_norm: float | None):
    """The ZeRO engine over `model` (a copy the caller made) and the loop's optimiser. DeepSpeed's batch-size keys are
    required but unused: the loop makes the batches, and one `step()` is one optimiser step."""
    check_installed()
    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "gradient_clipping": max_grad_norm or 0.0,
        # memory_efficient_linear would swap torch's F.linear for ZeRO-3's for the rest of the process, breaking
        # later work in it (a torchao int8 export, another run)
        "zero_optimization": {"stage": stage, "memory_efficient_linear": False},
        "zero_allow_untested_optimizer": True,  # the loop's own (fused) AdamW, not DeepSpeed's CPU/fused Adam
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
    }
    if "LOCAL_RANK" not in os.environ:  # one process, in a group of one that no launcher started
        os.environ["LOCAL_RANK"] = os.environ[ALONE] = "0"  # DeepSpeed reads it; finish() takes it away again
    return deepspeed.initialize(model=model, optimizer=optimizer, config=config)[0]


def finish(wrapped) -> None:
    """The engine's hooks released; LOCAL_RANK unset where engine() set it, so that a later run in this process is
    not taken for one that a launcher started (dist.launched)."""
    wrapped.destroy()
    if os.environ.pop(ALONE, None) is not None:
        os.environ.pop("LOCAL_RANK", None)


def step(wrapped) -> float | None:
    """The optimiser step (clipping first, if configured); the gradient norm it clipped by."""
    wrapped.step()
    norm = wrapped.get_global_grad_norm()
    return None if norm is None else float(norm)


def partitioned(model: torch.nn.Module) -> bool:
    """ZeRO-3 holds a shard of each weight: a forward needs every process, and the parts of a model (its decoder,
    then its head) cannot be called one by one. ZeRO-3 converts every parameter, so the first one tells (this runs
    on every loss call)."""
    first = next(model.parameters(), None)
    return first is not None and hasattr(first, "ds_id")


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable weights, whole, on the CPU (every process takes part: the shards are gathered)."""
    from deepspeed.utils import safe_get_full_fp32_param

    return {n: safe_get_full_fp32_param(p).cpu() for n, p in model.named_parameters() if p.requires_grad}


def full_optimizer_state(wrapped, step_count: int) -> dict:
    """AdamW's moments of every trainable weight, whole and keyed by its name (every process takes part)."""
    from deepspeed.utils import safe_get_full_optimizer_state

    _link_moments(wrapped.optimizer)
    state = {
        n: {k: safe_get_full_optimizer_state(p, k).cpu() for k in ADAM_STATE}
        for n, p in wrapped.module.named_parameters()
        if p.requires_grad
    }
    return {"state": state, "step": step_count}


def load_full_state(wrapped, weights: dict, optim: dict) -> None:
    """A gathered checkpoint back into the engine, whatever the process count that wrote it: each process keeps its
    own shard of the fp32 master weights and moments, and the model's weights (whole, or ZeRO-3's shards) follow."""
    from deepspeed import zero
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    zero_optimizer = wrapped.optimizer
    adamw = zero_optimizer.optimizer  # the loop's own, stepping DeepSpeed's flat fp32 shards (ZeRO-3's, ZeRO-2's)
    flats = getattr(zero_optimizer, "fp32_partitioned_groups_flat", None)
    flats = flats or zero_optimizer.single_partition_of_fp32_groups
    for flat in flats:  # AdamW creates its state lazily, at the first step: create it now, to be filled
        adamw.state[flat] = {
            "step": torch.tensor(float(optim["step"]), device=flat.device),
            **{k: torch.zeros_like(flat) for k in ADAM_STATE},
        }
    _link_moments(zero_optimizer)
    for name, p in wrapped.module.named_parameters():
        if not p.requires_grad:
            continue
        value = weights[name].to(p.device)
        safe_set_full_fp32_param(p, value)
        for key in ADAM_STATE:
            safe_set_full_optimizer_state(p, optim["state"][name][key].to(p.device), key)
        with zero.GatheredParameters([p], modifier_rank=0), torch.no_grad():
            p.data.copy_(value)


def _link_moments(zero_optimizer) -> None:
    """ZeRO-2 (DeepSpeed 0.19.8) links each weight to its shard of the optimiser state once, just after the first
    parameter group's first step, when the later groups (no weight decay, a head's own rate) have no state yet:
    their weights would have no moments to gather or set. Link them all again."""
    if hasattr(zero_optimizer, "_lazy_init_hp_params_optimizer_state"):
        zero_optimizer._hp_optimizer_states_linked = False
        zero_optimizer._lazy_init_hp_params_optimizer_state()


def gather_into(model: torch.nn.Module, net: torch.nn.Module, main: bool, device: torch.device) -> None:
    """The trained weights of the engine's copy into the method's model, on the main process, on the device."""
    weights = full_weights(net)
    if main:
        load_trainable(model, weights)
        model.to(device)
