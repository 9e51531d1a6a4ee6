import pytest
import torch

from tunesmith.config import config_from_dict
from tunesmith.models.build import build_classifier, freeze_embeddings


def test_lora_trains_only_the_adapter_and_the_head(tiny_model):
    cfg = config_from_dict({"model": str(tiny_model), "data": {"train": "x"}, "lora": {"r": 4, "alpha": 8}})
    model = build_classifier(tiny_model, ["neg", "pos"], lora=cfg.lora)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    assert any("classifier" in n for n in trainable)


@pytest.mark.parametrize("setting, frozen", [(True, True), (False, False)])
def test_freeze_embeddings_freezes_the_token_embeddings_alone(tiny_model, setting, frozen):
    cfg = config_from_dict({"model": str(tiny_model), "data": {"train": "x"}, "train": {"freeze_embeddings": setting}})
    model = build_classifier(tiny_model, ["a", "b"])
    freeze_embeddings(model, cfg.train, cfg.lora)
    assert model.get_input_embeddings().weight.requires_grad is not frozen
    assert all(p.requires_grad for n, p in model.named_parameters() if "word_embeddings" not in n)


def test_dropout_override_reaches_every_dropout(tiny_model):
    model = build_classifier(tiny_model, ["a", "b"], dropout=0.3)
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.3}
