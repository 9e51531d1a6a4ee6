"""The one-step silu(gate) * up gives Llama's MLP output and gradients bit for bit, and keeps less."""

import copy

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP

from tunesmith.models.swiglu import fuse_swiglu


def _mlp(act: str = "silu") -> LlamaMLP:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=24, intermediate_size=40, num_attention_heads=4, hidden_act=act, mlp_bias=False)
    return LlamaMLP(config)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("autocast", [False, True])
def test_output_and_gradients_equal_llamas_bit_for_bit(dtype, autocast):
    theirs = _mlp().to(dtype)
    ours = copy.deepcopy(theirs)
    assert fuse_swiglu(ours) == 1
    x = (torch.randn(3, 7, 24) * 2).to(dtype)
    grad = torch.randn(3, 7, 24).to(dtype)
    results = []
    for mlp in (ours, theirs):
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = mlp(xi)
        y.backward(grad.to(y.dtype))
        results.append([y, xi.grad] + [p.grad for p in mlp.parameters()])
    for a, b in zip(*results):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_it_keeps_one_intermediate_tensor_fewer():
    def kept(mlp):
        sizes = []
        x = torch.randn(5, 24, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            mlp(x).sum().backward()
        return sizes.count(5 * 40)

    theirs = _mlp()
    ours = copy.deepcopy(theirs)
    fuse_swiglu(ours)
    assert kept(theirs) - kept(ours) == 1


def test_an_mlp_with_another_activation_keeps_its_own_forward():
    mlp = _mlp("gelu")
    assert fuse_swiglu(mlp) == 0 and "forward" not in vars(mlp)


def test_fusing_leaves_torchs_random_state_alone():
    mlp = _mlp()
    state = torch.get_rng_state()
    fuse_swiglu(mlp)
    assert torch.equal(torch.get_rng_state(), state)
