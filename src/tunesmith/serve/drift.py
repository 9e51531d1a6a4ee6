"""Has what the model sees changed? A classifier's predictions over a recent window against those on its own
validation split: the label shares (total variation distance) and the mean confidence."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class DriftRule:
    window_s: float = 3600.0  # the recent window
    min_predictions: int = 30  # fewer in the window: too few to say
    max_distance: float = 0.2  # total variation distance between label shares that flags drift
    max_confidence_drop: float = 0.1  # a fall of mean confidence below validation's that flags drift


def drift(rows: list[dict], reference: dict[str, float], ref_confidence: float | None, rule: DriftRule) -> dict:
    """rows: request records of the window (prediction: a JSON list of labels, confidence: their mean)."""
    labels: Counter = Counter()
    weighted_conf, n = 0.0, 0
    for r in rows:
        if r.get("prediction") is None:
            continue
        picked = json.loads(r["prediction"])
        labels.update(picked)
        weighted_conf += (r.get("confidence") or 0.0) * len(picked)
        n += len(picked)
    shares = {k: v / n for k, v in labels.items()} if n else {}
    out = {"predictions": n, "shares": shares, "reference": reference, "distance": None, "confidence": None,
           "reference_confidence": ref_confidence, "flagged": False, "why": None}  # fmt: skip
    if n < rule.min_predictions or not reference:
        out["why"] = f"{n} predictions in the window; at least {rule.min_predictions} are needed"
        return out
    keys = set(shares) | set(reference)
    out["distance"] = round(0.5 * sum(abs(shares.get(k, 0.0) - reference.get(k, 0.0)) for k in keys), 4)
    out["confidence"] = round(weighted_conf / n, 4)
    reasons = []
    if out["distance"] > rule.max_distance:
        reasons.append(f"label shares moved by {out['distance']:.3f} (> {rule.max_distance})")
    if ref_confidence is not None and ref_confidence - out["confidence"] > rule.max_confidence_drop:
        reasons.append(f"mean confidence fell from {ref_confidence:.3f} to {out['confidence']:.3f}")
    out["flagged"], out["why"] = bool(reasons), "; ".join(reasons) or None
    return out
