"""LoRA's frozen base weights held in the compute dtype (bf16 or fp16) while training.

Under autocast every forward casts each frozen fp32 weight to bf16 again, in every part of every step, and keeps
that copy for the backward; and from_pretrained reads the fp32 weights through a file mapping whose pages stay in
the process once touched. Held in bf16, the weights are cast once, half their size, and the mapping is let go (the
model's other parameters on the CPU are copied out of it). The arithmetic is unchanged: autocast rounds these
weights to bf16 anyway. On a smollm2-135m LoRA step (batch 8 of DialogSum in parts of 1,024 tokens, 2 cores of an
AMX Xeon) the step ran 649.0 tokens/s against 628.9 without (benchmarks/sft_levers.py variants 7 and 14), and the
sft_speed job's peak fell by about 450 MB (the README says how that was measured).

The fp32 originals wait in a file in the run folder and come back when training ends, so the merged model and the
scores after training use the weights as loaded. Where no folder is given (a worker process of a multi-process
run, which exits after training) the held weights are not put back.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from tunesmith.train.memory import release_freed_memory

SPILL = "frozen_fp32.safetensors"


def held(precision: str, strategy: str, samples_from_model: bool) -> bool:
    """Whether the loop holds the frozen weights in 16 bits (and the memory estimate counts them so): under bf16 or
    fp16, not where an engine shards them (FSDP, ZeRO), nor where the method generates with the model it trains
    (RL), outside autocast, which would cast them back at every token."""
    return precision != "fp32" and strategy == "ddp" and not samples_from_model


def hold(model: torch.nn.Module, dtype: torch.dtype, folder: Path | None) -> Callable[[], None]:
    """Holds the frozen base weights of the model's LoRA layers in dtype; returns what puts them back."""
    layers = _frozen_bases(model)
    if not layers:
        return lambda: None
    spill = folder / SPILL if folder is not None else None
    if spill is not None:
        from safetensors.torch import save_file

        try:
            save_file({str(i): layer.weight.detach().cpu() for i, layer in enumerate(layers)}, spill)
        except BaseException:  # a full disk: no half-written file left behind
            spill.unlink(missing_ok=True)
            raise
    for layer in layers:
        layer.weight.data = layer.weight.data.to(dtype)
        layer.forward = types.MethodType(_held_forward, layer)
    held = {id(layer.weight) for layer in layers}
    for param in model.parameters():  # nothing left pointing into from_pretrained's file mapping
        if id(param) not in held and param.device.type == "cpu":
            param.data = param.data.clone()

    def restore() -> None:
        if spill is None:
            return
        from safetensors import safe_open

        release_freed_memory()  # the heap training freed goes first: reading the originals back adds no new peak
        with safe_open(spill, "pt") as f:
            for i, layer in enumerate(layers):
                layer.weight.data = f.get_tensor(str(i)).to(layer.weight.device).clone()
                del layer.forward
        spill.unlink()

    return restore


def _frozen_bases(model: torch.nn.Module) -> list[torch.nn.Linear]:
    """The fp32 base nn.Linear of every plain peft LoRA layer whose weight is frozen and used by nothing else (a
    weight tied to the input embeddings stays fp32: the embeddings' output would otherwise turn bf16)."""
    from peft.tuners.lora.layer import Linear

    uses: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        uses[id(param)] = uses.get(id(param), 0) + 1
    bases = []
    for module in model.modules():
        base = getattr(module, "base_layer", None)
        if type(module) is not Linear or type(base) is not torch.nn.Linear or getattr(module, "lora_variant", None):
            continue
        w = base.weight
        if not w.requires_grad and w.dtype == torch.float32 and uses[id(w)] == 1 and not hasattr(w, "ds_id"):
            bases.append(base)
    return bases


def _held_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A held layer run outside the fused LoRA step (an adapter switched off, as DPO's reference): under autocast
    as before, and outside it in the input's dtype, as validation runs."""
    if torch.is_autocast_enabled(x.device.type):
        return F.linear(x, self.weight, self.bias)
    return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
