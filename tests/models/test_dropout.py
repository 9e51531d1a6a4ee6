import torch

from tunesmith.models.dropout import Dropout, cheaper_dropout, dropped, keep_mask, widened


def test_it_drops_at_the_rate_asked_and_scales_what_it_keeps():
    torch.manual_seed(0)
    x = torch.ones(400_000, requires_grad=True)
    d = Dropout(0.2).train()
    y = d(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.2) < 0.005
    assert torch.allclose(y[y != 0], torch.tensor(1 / 0.8))
    y.sum().backward()
    assert torch.equal(x.grad == 0, y == 0)  # the backward drops the same elements


def test_every_lane_of_a_draw_is_independent():
    """Four masks come from each 64-bit draw: each of the four positions drops at the same rate."""
    torch.manual_seed(1)
    y = Dropout(0.5).train()(torch.ones(4 * 100_000))
    for lane in range(4):
        assert abs((y.view(-1, 4)[:, lane] == 0).float().mean().item() - 0.5) < 0.01


def test_in_eval_it_is_the_identity_and_models_get_it_everywhere(tiny_model):
    x = torch.randn(3, 5)
    assert torch.equal(Dropout(0.3).eval()(x), x)
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
    before = sum(type(m) is torch.nn.Dropout for m in model.modules())
    assert before > 0 and cheaper_dropout(model) == before
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())


def test_masks_follow_torchs_seed():
    """Each mask's generator is seeded from torch's: torch.manual_seed (and a resumed RNG state) repeat it."""
    torch.manual_seed(3)
    first, second = (
        keep_mask(torch.Size([64, 64]), 0.3, torch.device("cpu")),
        keep_mask(torch.Size([64, 64]), 0.3, torch.device("cpu")),
    )
    torch.manual_seed(3)
    assert torch.equal(keep_mask(torch.Size([64, 64]), 0.3, torch.device("cpu")), first)
    assert not torch.equal(first, second)


def test_dropped_zeroes_what_the_mask_drops_and_keeps_the_rest_exactly():
    keep = torch.rand(64, 48) > 0.3
    for dtype in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
        x = torch.randn(64, 48).to(dtype)
        bits = widened(keep, dtype)
        assert torch.equal(dropped(x, bits), x * keep)
        copy = x.clone()
        assert dropped(copy, bits, inplace=True) is copy and torch.equal(copy, x * keep)
