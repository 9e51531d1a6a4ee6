"""Llama's RMSNorm (and every model's that copies its code: Qwen2, Mistral, SmolLM2, ...) as one autograd step.

Written as plain tensor ops, autograd keeps five nodes per norm and its backward makes a dozen passes over the
(tokens, hidden) fp32 input (pow's backward alone is three), 1.3 of the 1.6 ms that one norm of 1,012 x 576 tokens
took forward and backward on 2 cores of an AMX Xeon; a smollm2-135m part runs 61 of them. Here the forward is the
same ops in the same order (the same bits), and the backward is the closed form, r * (g w) - x r^3 mean(g w x), in
five passes; it keeps the input and one number per row. The gradients equal autograd's to rounding (a test).
"""

from __future__ import annotations

import torch

from tunesmith.models.swap import swap_forward


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x32 = x.to(torch.float32)
        r = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, r)
        return weight * (x32 * r).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, r = ctx.saved_tensors
        x32, gw = x.to(torch.float32), (grad * weight).to(torch.float32)
        mean = (gw * x32).sum(-1, keepdim=True).mul_(r.pow(3) / x.shape[-1])
        grad_x = (gw * r).addcmul_(x32, mean, value=-1).to(x.dtype)
        grad_weight = None
        if ctx.needs_input_grad[1]:
            rows = (grad * (x32 * r).to(x.dtype)).reshape(-1, x.shape[-1])
            grad_weight = rows.sum(0).to(weight.dtype)
        return grad_x, grad_weight, None


def _forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    return _RMSNorm.apply(hidden_states, self.weight, self.variance_epsilon)


def fuse_rmsnorm(model: torch.nn.Module) -> int:
    """Every norm of the model whose forward is Llama's RMSNorm's, code for code, and gives this step's output on a
    probe, runs as one step; returns how many. Other arithmetic (Gemma's 1 + weight, for one) keeps its forward."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    return swap_forward(model, LlamaRMSNorm.forward, _forward, lambda norm: norm.weight)
