"""A module's forward swapped for a faster one only where both compute the same thing: the same code as the
transformers forward it replaces, and the same output bits on a probe. A later transformers whose code means
something else, or a model that copies the code around another activation, keeps its own forward."""

from __future__ import annotations

import types
from collections.abc import Callable

import torch


def same_code(function, reference) -> bool:
    """The same bytecode, constants and names: a forward that computes what the reference's does, as written."""
    code = getattr(function, "__code__", None)
    return code is not None and _what_it_runs(code) == _what_it_runs(reference.__code__)


def _what_it_runs(code) -> tuple:
    return code.co_code, code.co_consts, code.co_names


def swap_forward(model: torch.nn.Module, reference: Callable, forward: Callable, weight: Callable) -> int:
    """`forward` for every module of the model whose forward is `reference`'s code and gives forward's output on a
    probe (rows as wide as `weight(module)`'s last dimension, from a private generator: the model's random state is
    left as it was); returns how many modules."""
    agrees: dict[type, bool] = {}
    swapped = 0
    for module in model.modules():
        if not same_code(type(module).forward, reference):
            continue
        if type(module) not in agrees:
            w = weight(module)
            probe = torch.randn(4, w.shape[-1], generator=torch.Generator().manual_seed(0)) * 3
            probe = probe.to(w.device, w.dtype)
            with torch.no_grad():
                agrees[type(module)] = torch.equal(type(module).forward(module, probe), forward(module, probe))
        if agrees[type(module)]:
            module.forward = types.MethodType(forward, module)
            swapped += 1
    return swapped
