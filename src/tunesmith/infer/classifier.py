"""Labels with calibrated probabilities from a classifier, and the token store both training and inference
feed it from."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch

from tunesmith.data.prepared import Split
from tunesmith.errors import TunesmithError
from tunesmith.eval.calibration import softmax
from tunesmith.infer.load import model_dir
from tunesmith.models.saved import load_classifier

Batch = dict[str, torch.Tensor | int]


class Encoded:
    """Token ids of one split, unpadded, with labels as ids. The ids are one flat int32 array with per-row offsets:
    as lists of Python ints they would hold about 40 MB more for SST-2's 67k rows, through all of training."""

    CHUNK = 8192  # rows tokenized at a time, so their Python lists never all exist at once

    def __init__(self, tokenizer, split: Split, labels: list[str], max_length: int):
        index = {name: i for i, name in enumerate(labels)}
        flat, lengths = [np.zeros(0, np.int32)], [np.zeros(0, np.int64)]
        for at in range(0, len(split), self.CHUNK):
            ids = tokenizer(split.texts[at : at + self.CHUNK], truncation=True, max_length=max_length)["input_ids"]
            lengths.append(np.fromiter(map(len, ids), np.int64, len(ids)))
            flat.append(np.fromiter(itertools.chain.from_iterable(ids), np.int32, int(lengths[-1].sum())))
        self.flat = np.concatenate(flat)
        self.lengths = np.concatenate(lengths)
        self.starts = np.cumsum(self.lengths) - self.lengths
        self.labels = np.array([index[y] for y in split.labels], dtype=np.int64)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.truncated = int((self.lengths >= max_length).sum())

    def __len__(self) -> int:
        return len(self.lengths)

    def subset(self, idx: np.ndarray) -> Encoded:
        out = object.__new__(Encoded)
        out.flat, out.starts, out.lengths, out.labels = self.flat, self.starts[idx], self.lengths[idx], self.labels[idx]
        out.pad_id, out.truncated = self.pad_id, 0
        return out

    def collate(self, idx) -> Batch:
        width = int(self.lengths[idx].max())
        input_ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            start, n = self.starts[i], self.lengths[i]
            input_ids[row, :n] = torch.from_numpy(self.flat[start : start + n])
            mask[row, :n] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "labels": torch.from_numpy(self.labels[idx]),
            "n": len(idx),
            "examples": len(idx),
        }


@torch.no_grad()
def predict_logits(model: torch.nn.Module, data: Encoded, batch_size: int = 64) -> np.ndarray:
    """Logits in the data's order; batches run longest first so that each pads little. The model should be in
    eval mode: this never switches it (another thread may be using it)."""
    device = model.device if hasattr(model, "device") else next(model.parameters()).device
    order = np.argsort(-data.lengths, kind="stable")
    out = np.zeros((len(data), model.config.num_labels), dtype=np.float32)
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        b = data.collate(idx)
        logits = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device)).logits
        out[idx] = logits.float().cpu().numpy()
    return out


class Classifier:
    """A run's classifier: calibrated label probabilities for texts."""

    def __init__(self, model: torch.nn.Module, tokenizer, meta: dict):
        self.model, self.tokenizer, self.meta = model, tokenizer, meta
        self.labels: list[str] = meta["labels"]

    @classmethod
    def load(cls, run: str | Path, fmt: str | None = None) -> Classifier:
        """A run's classifier, or its `fmt` export (onnx, int8, merged)."""
        return cls(*load_classifier(model_dir(run, fmt=fmt)))

    def encode(self, texts: list[str]) -> Encoded:
        blank = [i + 1 for i, t in enumerate(texts) if not t.strip()]
        if blank:
            raise TunesmithError(f"text {blank[0]} of {len(texts)} is empty: there is nothing to label")
        return Encoded(
            self.tokenizer, Split(list(texts), [self.labels[0]] * len(texts)), self.labels, self.meta["max_length"]
        )

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """(N, labels) probabilities after the temperature fitted on validation."""
        return softmax(predict_logits(self.model, self.encode(texts)), self.meta["temperature"])

    @torch.no_grad()
    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(N, hidden) unit-length mean-pooled embeddings from the fine-tuned encoder under the head."""
        if why := self.no_embeddings():
            raise TunesmithError(why)
        data = self.encode(texts)
        encoder = _encoder(self.model)
        device = next(encoder.parameters()).device
        out = np.zeros((len(data), encoder.config.hidden_size), dtype=np.float32)
        for at in range(0, len(data), batch_size):
            idx = np.arange(at, min(at + batch_size, len(data)))
            b = data.collate(idx)
            mask = b["attention_mask"].to(device)
            hidden = encoder(input_ids=b["input_ids"].to(device), attention_mask=mask).last_hidden_state
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            out[idx] = torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy()
        return out

    def no_embeddings(self) -> str | None:
        """Why this model gives no embeddings (an ONNX graph has the labels only), or None when it does."""
        if isinstance(self.model, torch.nn.Module):
            return None
        return (f"embeddings come from the torch encoder; this is the run's {self.meta.get('format')} export, whose "
                "graph gives labels only: serve the run's own model (or its merged export) for embeddings")  # fmt: skip

    def predict(self, texts: list[str], top_k: int | None = None) -> list[dict]:
        """Label, calibrated confidence and per-label probabilities (the top_k most likely) for each text."""
        out = []
        for p in self.probabilities(texts):
            ranked = sorted(zip(self.labels, p.tolist()), key=lambda kv: -kv[1])[: top_k or len(p)]
            out.append({"label": ranked[0][0], "confidence": ranked[0][1], "probs": dict(ranked)})
        return out


def _encoder(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer under a classification head: a pooled classifier's, a LoRA model's base, or the model's own."""
    from tunesmith.models.pooled import PooledClassifier

    if isinstance(model, PooledClassifier):
        return model.encoder
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model.base_model
