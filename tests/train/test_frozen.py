"""LoRA's frozen base weights held in bf16 while training: the same arithmetic, and the fp32 originals back after."""

import torch

from tunesmith.config import LoraConfig, TrainConfig
from tunesmith.models.build import add_lora
from tunesmith.train import frozen
from tunesmith.train.loop import Task, fit


def lora_lm(tiny_lm, targets="all-linear", tied: bool = False):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    if tied:
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_lm, tie_word_embeddings=True))
    else:
        model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    model = add_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0, targets=targets), "CAUSAL_LM")
    with torch.no_grad():  # B starts at zero; give the adapters a say
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return model.train()


def bases(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}


def forward_backward(model, ids):
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_held_weights_compute_the_same_and_come_back_exactly(tiny_lm, tmp_path):
    model = lora_lm(tiny_lm)
    ids = torch.randint(0, 300, (2, 12))
    before = bases(model)
    want_loss, want_grads = forward_backward(model, ids)
    restore = frozen.hold(model, torch.bfloat16, tmp_path)
    held = [n for n, p in model.named_parameters() if p.dtype == torch.bfloat16]
    assert len(held) == 2 * 7 and all("base_layer" in n for n in held)  # every linear of the blocks, no LM head
    assert (tmp_path / frozen.SPILL).is_file()
    loss, grads = forward_backward(model, ids)
    assert torch.equal(loss, want_loss)  # autocast rounded these weights to bf16 anyway
    assert grads.keys() == want_grads.keys() and all(torch.equal(grads[n], g) for n, g in want_grads.items())
    with torch.no_grad(), model.disable_adapter():  # DPO's reference, validated outside autocast
        base_logits = model(input_ids=ids).logits
    assert base_logits.dtype == torch.float32
    restore()
    after = bases(model)
    assert all(after[n].dtype == torch.float32 and torch.equal(after[n], w) for n, w in before.items())
    assert not (tmp_path / frozen.SPILL).exists()
    assert not any("forward" in vars(m) for m in model.modules() if type(m) is torch.nn.Linear)


def test_a_weight_tied_to_the_embeddings_stays_fp32(tiny_lm, tmp_path):
    model = lora_lm(tiny_lm, targets=["q_proj", "lm_head"], tied=True)
    assert model.get_input_embeddings().weight is model.base_model.model.lm_head.base_layer.weight
    frozen.hold(model, torch.bfloat16, tmp_path)
    assert model.get_input_embeddings().weight.dtype == torch.float32
    assert sum(p.dtype == torch.bfloat16 for p in model.parameters()) == 2  # the two q_proj


def test_training_in_bf16_leaves_the_base_weights_as_loaded(tiny_lm, tmp_path):
    model = lora_lm(tiny_lm)
    before = bases(model)
    ids = torch.randint(0, 300, (4, 10))
    batches = [{"ids": ids[i : i + 2], "n": 2, "examples": 2} for i in (0, 2)]
    task = Task(
        model=model, batches=lambda epoch: batches, loss=lambda m, b: m(input_ids=b["ids"], labels=b["ids"]).loss
    )
    cfg = TrainConfig(epochs=1, batch_size=2, lr=1e-3, warmup=0, precision="bf16", checkpoint_every=1000)
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    fit(task, cfg, tmp_path, quiet=True)
    after = bases(model)
    assert all(after[n].dtype == torch.float32 and torch.equal(after[n], w) for n, w in before.items())
    assert any(not torch.equal(p, lora_before[n]) for n, p in model.named_parameters() if p.requires_grad)
    assert not (tmp_path / frozen.SPILL).exists()
