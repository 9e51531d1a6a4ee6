"""A LoRA layer's forward and backward as one autograd step: base(x) + s * B(A(drop(x))).

peft runs a LoRA layer as five autograd nodes (the base linear, the adapters' dropout, A, B, the scaling multiply)
and an add. Under bf16 autocast each adapter casts its input again and keeps its own dropped, cast copy of it for
A's gradient, and the scaling and the add are passes over the whole output. Here the layer keeps its input cast
once to the compute dtype (q, k and v get the same tensor, so they cast it once and keep one copy between them, as
gate and up do), a bool dropout mask (applied as a bitwise AND, models/dropout.py; dropout's 1/(1-p) goes on the
small rank-r product, not on the whole input) and that rank-r product; the scaled update is added into the base
output in place, and the backward returns A's, B's and the input's gradients from those. The frozen base
weight gets no gradient.

The same arithmetic as peft's (a test compares outputs and gradients); it runs only where that holds: one active
adapter, plain LoRA (no DoRA or other variant), a frozen base nn.Linear, nothing sharded away from the layer
(ZeRO-3 gathers a weight only when its own module runs); everywhere else peft's own forward runs.
"""

from __future__ import annotations

import types

import torch

from tunesmith.models.dropout import dropped, keep_mask, widened


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


_last_cast: list = []  # (input, its version, dtype, the input cast): q, k and v get one tensor one after another


def _cast_once(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x as (N, features) in dtype, cast once for the layers that read the same input (q, k, v; gate, up)."""
    if _last_cast and _last_cast[0] is x and _last_cast[1] == x._version and _last_cast[2] == dtype:
        return _last_cast[3]
    xc = x.reshape(-1, x.shape[-1]).to(dtype)
    _last_cast[:] = (x, x._version, dtype, xc)
    return xc


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, a, b, scale: float, p: float):
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            xc, w = _cast_once(x, dtype), weight.to(dtype)
            keep = keep_mask(xc.shape, p, xc.device) if p > 0 else None
            xa = (xc if keep is None else dropped(xc, widened(keep, dtype))) @ a.to(dtype).T
            out = xc @ w.T if bias is None else torch.addmm(bias.to(dtype), xc, w.T)
            scale = scale / (1 - p)  # dropout's 1/(1-p) on the rank-r product, not on the whole input
            out.addmm_(xa, b.to(dtype).T, alpha=scale)
        ctx.save_for_backward(xc, w, a, b, xa, keep)
        ctx.scale, ctx.dtype, ctx.has_bias, ctx.x_dtype = scale, dtype, bias is not None, x.dtype
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        xd, w, a, b, xa, keep = ctx.saved_tensors
        dtype, scale = ctx.dtype, ctx.scale
        with torch.autocast(grad.device.type, enabled=False):
            g = grad.reshape(-1, grad.shape[-1]).to(dtype)
            g_xa = (g @ b.to(dtype)).mul_(scale)  # the gradient of A's output
            grad_b = scale * (g.T @ xa)
            bits = None if keep is None else widened(keep, dtype)
            grad_a = g_xa.T @ (xd if bits is None else dropped(xd, bits))
            grad_x = None
            if ctx.needs_input_grad[0]:  # not for the first block's input under LoRA: the embeddings are frozen
                g_xd = g_xa @ a.to(dtype)  # the gradient of the dropped input
                if bits is not None:
                    dropped(g_xd, bits, inplace=True)
                grad_x = g_xd.addmm_(g, w).view(*grad.shape[:-1], w.shape[1]).to(ctx.x_dtype)
        grad_bias = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, None, grad_bias, grad_a.to(a.dtype), grad_b.to(b.dtype), None, None


def _forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """A peft lora.Linear's forward: the fused step where it computes the same thing, else peft's own."""
    names = self.active_adapters
    base = self.base_layer
    name = names[0] if len(names) == 1 else None
    fused = (
        not (args or kwargs or self.disable_adapters or self.merged)
        and name in self.lora_A
        and name not in self.lora_variant
        and type(base) is torch.nn.Linear
        and not base.weight.requires_grad
        and self.lora_A[name].bias is None
        and self.lora_B[name].bias is None
    )
    if fused:
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        fused = not any(hasattr(w, "ds_id") for w in (base.weight, a, b))  # ZeRO-3 gathers per module: peft's
    if not fused:
        return type(self).forward(self, x, *args, **kwargs)
    drop = self.lora_dropout[name]
    p = drop.p if self.training and isinstance(drop, torch.nn.Dropout) else 0.0
    return _LoraLinear.apply(x, base.weight, base.bias, a, b, float(self.scaling[name]), p)


def fuse_lora(model: torch.nn.Module) -> int:
    """Every peft LoRA Linear of the model runs the fused step where it can; returns how many layers."""
    from peft.tuners.lora.layer import Linear

    fused = 0
    for module in model.modules():
        if type(module) is Linear:
            module.forward = types.MethodType(_forward, module)
            fused += 1
    return fused
