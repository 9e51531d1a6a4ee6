"""The length-dispatched attention equals transformers' SDPA on both of its paths."""

import pytest
import torch

from tunesmith.models import attention
from tunesmith.models.build import build_classifier


def outputs(model, ids, mask):
    model.zero_grad()
    logits = model(input_ids=ids, attention_mask=mask).logits
    logits.sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("eager_up_to", [64, 4])  # rows of 20 tokens: the plain path, then SDPA's
def test_it_gives_sdpas_logits_and_gradients(tiny_model, monkeypatch, eager_up_to):
    monkeypatch.setattr(attention, "EAGER_UP_TO", eager_up_to)
    torch.manual_seed(0)
    ids = torch.randint(5, 200, (6, 20))
    mask = torch.ones(6, 20, dtype=torch.long)
    mask[3:, 12:] = 0  # padded rows: the mask matters
    model = build_classifier(tiny_model, ["a", "b"], dropout=0.0).train()
    assert model.config._attn_implementation == attention.NAME
    ours = outputs(model, ids, mask)
    model.set_attn_implementation("sdpa")
    theirs = outputs(model, ids, mask)
    assert torch.allclose(ours[0], theirs[0], atol=1e-5)
    assert ours[1].keys() == theirs[1].keys()
    assert all(torch.allclose(ours[1][n], theirs[1][n], atol=1e-5) for n in ours[1])


def test_a_model_that_does_not_run_sdpa_is_left_alone(tiny_model):
    model = build_classifier(tiny_model, ["a", "b"])
    model.set_attn_implementation("eager")
    attention.use_length_dispatch(model)
    assert model.config._attn_implementation == "eager"


def test_a_compiled_or_exported_model_takes_sdpa_whatever_the_length(tiny_model, monkeypatch):
    """torch.export (the ONNX export) must not branch on a dynamic length."""
    import transformers.integrations.sdpa_attention as sdpa

    calls = []
    real = sdpa.sdpa_attention_forward
    monkeypatch.setattr(sdpa, "sdpa_attention_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = build_classifier(tiny_model, ["a", "b"]).eval()
    ids = torch.randint(5, 200, (2, 10))
    model(input_ids=ids)
    assert not calls  # short rows on a CPU: the plain path
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    model(input_ids=ids)
    assert len(calls) == model.config.num_hidden_layers


@pytest.mark.parametrize("causal_up_to", [64, 4])
def test_causal_lms_get_it_too_with_the_same_logits_and_gradients(tiny_lm, monkeypatch, causal_up_to):
    from tunesmith.models.build import build_causal_lm

    monkeypatch.setattr(attention, "CAUSAL_UP_TO", causal_up_to)
    torch.manual_seed(0)
    ids = torch.randint(5, 300, (4, 16))
    mask = torch.ones(4, 16, dtype=torch.long)
    mask[2:, 10:] = 0
    model = build_causal_lm(tiny_lm, dropout=0.0).train()
    assert model.config._attn_implementation == attention.NAME
    from tunesmith.lm.tokens import block_causal_mask

    packed = block_causal_mask(torch.tensor([list(range(6)) + list(range(10))] * 4))  # two examples a row, additive
    for m in (mask, None, packed):  # padded rows, rows without padding (SDPA's is_causal), packed rows
        ours = outputs(model, ids, m)
        model.set_attn_implementation("sdpa")
        theirs = outputs(model, ids, m)
        model.set_attn_implementation(attention.NAME)
        assert torch.allclose(ours[0], theirs[0], atol=1e-5)
        assert all(torch.allclose(ours[1][n], theirs[1][n], atol=1e-5) for n in ours[1])


def test_the_additive_mask_gives_masked_fill_bit_for_bit():
    """Where a score is masked the sum rounds back to the dtype's lowest value; a fully masked row stays uniform."""
    torch.manual_seed(0)
    mask = torch.rand(2, 1, 16, 16) > 0.4
    mask[0, 0, 3] = False
    for dtype in (torch.bfloat16, torch.float32):
        scores = (torch.randn(2, 3, 16, 16) * 30).to(dtype)
        filled = scores.masked_fill(~mask, torch.finfo(dtype).min)
        assert torch.equal(scores + attention._bias(mask, dtype), filled)
        assert attention._bias(mask, dtype) is attention._bias(mask, dtype)  # built once for every layer
