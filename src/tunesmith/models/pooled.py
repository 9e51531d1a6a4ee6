"""A sentence encoder with a linear head on its pooled (and, where the model was trained that way, normalised)
embeddings: the shape of a SetFit model. It answers like a transformers sequence classifier (`.logits`,
`.config.num_labels`, `save_pretrained`), so prediction, calibration, evaluation and serving take it unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from tunesmith.eval.baseline import pooling_mode

HEAD_FILE = "pooled_head.pt"


def normalises(model_dir: Path) -> bool:
    """sentence-transformers folders list a Normalize module when the embeddings were trained unit-length."""
    modules = Path(model_dir) / "modules.json"
    if not modules.is_file():
        return False
    return any(m.get("type", "").endswith("Normalize") for m in json.loads(modules.read_text()))


class PooledClassifier(torch.nn.Module):
    def __init__(self, encoder: torch.nn.Module, num_labels: int, pooling: str = "mean", normalise: bool = True):
        super().__init__()
        self.encoder, self.pooling, self.normalise = encoder, pooling, normalise
        self.classifier = torch.nn.Linear(encoder.config.hidden_size, num_labels)  # named as transformers' heads are
        self.config = encoder.config
        self.config.num_labels = num_labels

    @classmethod
    def from_base(cls, model_dir: Path, num_labels: int, dropout: float | None = None) -> PooledClassifier:
        from transformers import AutoConfig, AutoModel

        from tunesmith.models.build import set_dropout

        config = AutoConfig.from_pretrained(model_dir)
        if dropout is not None:
            set_dropout(config, dropout)
        encoder = AutoModel.from_pretrained(model_dir, config=config, dtype=torch.float32)
        return cls(encoder, num_labels, pooling_mode(model_dir), normalises(model_dir))

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        return F.normalize(pooled, dim=-1) if self.normalise else pooled

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_) -> SimpleNamespace:
        return SimpleNamespace(logits=self.classifier(self.embed(input_ids, attention_mask)))

    def save_pretrained(self, out: Path) -> None:
        self.encoder.save_pretrained(out)
        head = {"weight": self.classifier.weight, "bias": self.classifier.bias}
        torch.save({"head": head, "pooling": self.pooling, "normalise": self.normalise}, Path(out) / HEAD_FILE)

    @classmethod
    def from_pretrained(cls, model_dir: Path) -> PooledClassifier:
        from transformers import AutoModel

        saved = torch.load(Path(model_dir) / HEAD_FILE, weights_only=True)
        encoder = AutoModel.from_pretrained(model_dir, dtype=torch.float32)
        model = cls(encoder, saved["head"]["weight"].shape[0], saved["pooling"], saved["normalise"])
        model.classifier.load_state_dict(saved["head"])
        return model
