import copy

import pytest
import torch

import tunesmith.models.fused_lora as fused_lora
from tunesmith.config import LoraConfig
from tunesmith.models.build import add_lora


class FixedDrop(torch.nn.Dropout):
    """peft's dropout with the mask the fused layer draws, so the two compute the same thing."""

    def __init__(self, p: float, masks: list):
        super().__init__(p)
        self.masks = masks

    def forward(self, x):
        return x * self.masks.pop(0).view(x.shape) / (1 - self.p)


def lora_pair(tiny_lm, dropout: float):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    peft_model = add_lora(
        AutoModelForCausalLM.from_pretrained(tiny_lm), LoraConfig(r=4, alpha=8, dropout=dropout), "CAUSAL_LM"
    )
    with torch.no_grad():  # B starts at zero; give it weights so that A's gradient is not zero too
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    ours = copy.deepcopy(peft_model)
    assert fused_lora.fuse_lora(ours) == 2 * 7  # every linear of the two layers but the LM head
    for m in peft_model.modules():  # undo the fusing add_lora did: peft's own forward
        m.__dict__.pop("forward", None)
    return peft_model.train(), ours.train()


def losses_and_grads(model, ids, autocast: bool):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.item(), grads


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_the_fused_layer_computes_what_peft_computes(tiny_lm, monkeypatch, dropout):
    peft_model, ours = lora_pair(tiny_lm, dropout)
    ids = torch.randint(0, 300, (2, 12))
    masks: list = []
    real = fused_lora.keep_mask

    def recorded(shape, p, device):
        masks.append(real(shape, p, device))
        return masks[-1]

    monkeypatch.setattr(fused_lora, "keep_mask", recorded)
    loss, grads = losses_and_grads(ours, ids, False)
    assert len(grads) == 2 * 7 * 2  # A and B of every adapter, nothing of the frozen base
    if dropout:
        assert len(masks) == 14
        for m in peft_model.modules():
            if hasattr(m, "lora_dropout"):
                m.lora_dropout["default"] = FixedDrop(dropout, masks)
    want_loss, want = losses_and_grads(peft_model, ids, False)
    assert loss == pytest.approx(want_loss, rel=1e-6)
    for name, g in want.items():
        assert torch.allclose(grads[name], g, rtol=1e-4, atol=1e-4 * g.abs().max().item()), name


def test_under_bf16_autocast_it_is_as_close_to_fp32_as_peft_is(tiny_lm):
    """bf16 rounds at other points in the fused step than in peft's five: each side's gradients against fp32's."""
    peft_model, ours = lora_pair(tiny_lm, 0.0)
    ids = torch.randint(0, 300, (2, 12))
    _, exact = losses_and_grads(copy.deepcopy(peft_model), ids, False)
    _, theirs = losses_and_grads(peft_model, ids, True)
    _, mine = losses_and_grads(ours, ids, True)

    def error(grads: dict) -> float:
        return sum(float((grads[n] - g).norm() / g.norm()) for n, g in exact.items()) / len(exact)

    assert 0 < error(mine) <= 1.5 * error(theirs)


def test_peft_runs_its_own_forward_where_fusing_would_differ(tiny_lm):
    _, ours = lora_pair(tiny_lm, 0.0)
    ids = torch.randint(0, 300, (1, 8))
    with torch.no_grad():
        tuned = ours(input_ids=ids).logits
        with ours.disable_adapter():  # what DPO's reference is: the base model alone
            base = ours(input_ids=ids).logits
    ours.merge_adapter()
    with torch.no_grad():
        merged = ours(input_ids=ids).logits
    assert not torch.allclose(tuned, base, atol=1e-4)
    assert torch.allclose(tuned, merged, atol=1e-5)


def test_the_inputs_gradient_is_computed_only_where_the_input_needs_one(tiny_lm):
    """Under LoRA the first block's input (the frozen embeddings, normed) needs no gradient: its matmul with the
    base weight is skipped, and A's and B's gradients are the same either way."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountMatmuls(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm)
            return func(*args, **(kwargs or {}))

    _, ours = lora_pair(tiny_lm, 0.0)
    layer = ours.base_model.model.model.layers[0].self_attn.q_proj
    x = torch.randn(3, 5, layer.in_features)
    grads, counts = [], []
    for needs in (True, False):
        layer.zero_grad()
        xi = x.clone().requires_grad_(needs)
        out = layer(xi)
        with CountMatmuls() as mode:
            out.square().sum().backward()
        grads.append([layer.lora_A["default"].weight.grad.clone(), layer.lora_B["default"].weight.grad.clone()])
        counts.append(mode.n)
        assert (xi.grad is not None) == needs
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    assert counts[1] < counts[0]
