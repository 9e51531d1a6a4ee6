"""Calibration: does a predicted 0.9 come true 90% of the time? ECE, reliability bins, temperature scaling."""

from __future__ import annotations

import numpy as np
import torch


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict:
    """Expected calibration error over equal-width confidence bins, with the bins for a diagram."""
    conf = probs.max(-1)
    correct = (probs.argmax(-1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            acc, avg = float(correct[m].mean()), float(conf[m].mean())
            ece += m.mean() * abs(acc - avg)
            rows.append(
                {
                    "lo": float(edges[b]),
                    "hi": float(edges[b + 1]),
                    "count": int(m.sum()),
                    "accuracy": acc,
                    "confidence": avg,
                }
            )
    return {"ece": float(ece), "bins": rows}


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 minimising validation NLL of softmax(logits / T); argmax is unchanged."""
    if len(labels) == 0:
        return 1.0
    x = torch.from_numpy(logits.astype(np.float64))
    y = torch.from_numpy(labels)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    return t if np.isfinite(t) and 0.01 < t < 100 else 1.0
