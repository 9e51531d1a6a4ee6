"""A transformer's layers, found by class: what FSDP shards one by one, and what a distilled student keeps some of."""

from __future__ import annotations

import torch

from tunesmith.errors import TunesmithError


def layer_classes(model: torch.nn.Module, names: list[str] | None) -> set[type]:
    """The classes of the model's transformer layers: those named (train.distributed.fsdp_layers), else the model's
    own list (transformers' _no_split_modules)."""
    present = {type(m).__name__: type(m) for m in model.modules()}
    if names:
        missing = [n for n in names if n not in present]
        if missing:
            raise TunesmithError(
                f"train.distributed.fsdp_layers: the model has no module of class {', '.join(missing)}; "
                f"its classes include {', '.join(sorted(present)[:30])}"
            )
        return {present[n] for n in names}
    own = {n for m in model.modules() for n in (getattr(m, "_no_split_modules", None) or [])}
    found = {present[n] for n in own if n in present}
    if not found:
        raise TunesmithError(
            f"train.distributed.strategy fsdp: {type(model).__name__} names no transformer layer class to shard by; "
            "name one in train.distributed.fsdp_layers (e.g. [BertLayer]), or use strategy: ddp"
        )
    return found


def keep_layers(model: torch.nn.Module, k: int) -> list[int]:
    """Keep k of the model's n transformer layers, evenly spaced from the first (every other one when k = n/2, as
    DistilBERT keeps its teacher's); the config says k layers, so the saved model reloads as it is. Returns the
    indices kept."""
    classes = layer_classes(model, None)
    stacks = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, torch.nn.ModuleList) and len(child) and all(type(x) in classes for x in child)
    ]
    if not stacks:
        raise TunesmithError(f"{type(model).__name__}: no list of transformer layers to take layers from")
    parent, name, layers = max(stacks, key=lambda s: len(s[2]))
    n = len(layers)
    if not 0 < k < n:
        raise TunesmithError(f"distill.layers: {k}; the teacher has {n} layers, so give 1 to {n - 1}")
    keep = [round(i * n / k) for i in range(k)]
    setattr(parent, name, torch.nn.ModuleList([layers[i] for i in keep]))
    config = model.config
    config.num_hidden_layers = k
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in keep]
    for i, layer in enumerate(getattr(parent, name)):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):  # a causal LM's attention finds its cache slot by it
                module.layer_idx = i
    return keep
