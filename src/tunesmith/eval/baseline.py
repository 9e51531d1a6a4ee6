"""The honest untuned baseline for an encoder: its frozen embeddings (the model's own pooling) with a
logistic-regression head fitted on the same training data. Fine-tuning has to beat this, not a random head.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

MAX_FIT_ROWS = 10_000  # a logistic regression on more rows than this gains nothing worth the encoding time


def pooling_mode(model_dir: Path) -> str:
    """sentence-transformers folders say how the model was trained to pool; plain encoders default to mean."""
    cfg = Path(model_dir) / "1_Pooling" / "config.json"
    if cfg.is_file():
        modes = json.loads(cfg.read_text())
        if modes.get("pooling_mode_cls_token"):
            return "cls"
    return "mean"


@torch.no_grad()
def embed(encoder: torch.nn.Module, data, mode: str, batch_size: int = 64) -> np.ndarray:
    """Pooled last hidden states for an Encoded split, in its order."""
    encoder.eval()
    order = np.argsort(-data.lengths, kind="stable")
    out = None
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        b = data.collate(idx)
        hidden = encoder(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state  # (B, T, H)
        if mode == "cls":
            pooled = hidden[:, 0]
        else:
            m = b["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        if out is None:
            out = np.zeros((len(data), pooled.shape[-1]), dtype=np.float32)
        out[idx] = pooled.float().numpy()
    return out


def frozen_baseline_logits(model_dir: Path, train, test, num_labels: int, seed: int) -> tuple[np.ndarray, dict]:
    """Logits of a logistic regression on frozen embeddings (log-probabilities, so calibration applies)."""
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(model_dir, dtype=torch.float32)
    mode = pooling_mode(model_dir)
    fit_idx = np.arange(len(train))
    if len(fit_idx) > MAX_FIT_ROWS:
        fit_idx = np.sort(np.random.default_rng(seed).choice(len(train), MAX_FIT_ROWS, replace=False))
    sub = train.subset(fit_idx)
    x_train, x_test = embed(encoder, sub, mode), embed(encoder, test, mode)
    head = LogisticRegression(max_iter=2000, C=1.0)
    head.fit(x_train, sub.labels)
    logp = np.full((len(test), num_labels), -1e9, dtype=np.float64)
    logp[:, head.classes_] = head.predict_log_proba(x_test)
    info = {"kind": "frozen encoder + logistic regression", "pooling": mode, "fit_rows": int(len(fit_idx))}
    return logp.astype(np.float32), info
