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


def choose_temperature(logits: np.ndarray, labels: np.ndarray, bins: int, folds: int = 5, seed: int = 0) -> dict:
    """A temperature only where it helps. Each fold of validation is scaled by a temperature fitted on the other
    folds; the ECE of these out-of-fold probabilities, pooled over the whole split (per-fold ECEs of a hundred rows
    are mostly noise), and their log-loss (a proper score, far less noisy) are compared with the unscaled ones.
    Unless ECE falls by at least a twentieth and log-loss falls too (a small or already calibrated split, where a
    fitted T only adds noise), T stays 1; else T is fitted on the whole split. Returns what eval.json keeps."""
    n = len(labels)
    k = min(folds, n // 10)
    if k < 2:
        return {"temperature": 1.0, "chosen": "none", "why": f"{n} validation rows: too few to check a temperature"}
    scaled = np.empty((n, logits.shape[1]))
    order = np.random.default_rng(seed).permutation(n)
    for part in np.array_split(order, k):
        rest = np.setdiff1d(order, part)
        scaled[part] = softmax(logits[part], fit_temperature(logits[rest], labels[rest]))
    unscaled = softmax(logits)
    raw, fitted = reliability(unscaled, labels, bins)["ece"], reliability(scaled, labels, bins)["ece"]
    nll_raw, nll_fitted = _nll(unscaled, labels), _nll(scaled, labels)
    found = {"folds": k, "cv_ece_t1": round(raw, 5), "cv_ece_fitted": round(fitted, 5),
             "cv_nll_t1": round(nll_raw, 5), "cv_nll_fitted": round(nll_fitted, 5)}  # fmt: skip
    change = (
        f"validation ECE {raw:.4f} -> {fitted:.4f} and NLL {nll_raw:.4f} -> {nll_fitted:.4f} with temperatures "
        f"fitted out of fold ({k} folds)"
    )
    if fitted < 0.95 * raw and nll_fitted < nll_raw:
        return {"temperature": fit_temperature(logits, labels), "chosen": "fitted", **found, "why": change}
    return {"temperature": 1.0, "chosen": "none", **found, "why": f"a fitted temperature did not help: {change}"}


def _nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())
