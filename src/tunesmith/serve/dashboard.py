"""The dashboard's data: what the page at /dashboard draws, from the request store and the served runs.

Everything is bucketed here, in the server, so the page only draws: requests per second and latency percentiles
per time bucket, each classifier's predicted label shares against those on its validation split, feedback
counts, and drift against its threshold.
"""

from __future__ import annotations

import time

import numpy as np

from tunesmith.models.saved import CLASSIFIER
from tunesmith.serve.metrics import Metrics
from tunesmith.serve.served import Served
from tunesmith.serve.store import Store


def dashboard_data(served: dict[str, Served], store: Store, metrics: Metrics, *, window_s: float = 900,
                   bucket_s: float = 10) -> dict:  # fmt: skip
    now = time.time()
    start = now - window_s
    edges = np.arange(start, now + bucket_s, bucket_s)
    out = {"time": now, "bucket_s": bucket_s, "runs": [], "traffic": {}, "predictions": {}, "drift": {},
           "feedback": store.counts()["feedback"]}  # fmt: skip
    for name, model in served.items():
        out["runs"].append({"model": name, "kind": model.kind, "version": model.version, "method": model.meta.get(
            "method"), "base_model": model.meta.get("base_model"), "scores": model.scores})  # fmt: skip
        rows = store.recent(name, start)
        out["traffic"][name] = _traffic(rows, edges, bucket_s)
        if model.kind == CLASSIFIER:
            d = metrics.drift_of(model)
            out["predictions"][name] = {"labels": model.labels, "served": [d["shares"].get(k, 0.0) for k in
                                        model.labels], "validation": [model.val_distribution.get(k, 0.0) for k in
                                        model.labels], "predictions": d["predictions"]}  # fmt: skip
            out["drift"][name] = {k: d[k] for k in ("distance", "confidence", "reference_confidence", "flagged", "why")}
            out["drift"][name]["threshold"] = metrics.rule.max_distance
    return out


def _traffic(rows: list[dict], edges: np.ndarray, bucket_s: float) -> dict:
    """Requests per second and latency percentiles (ms) per bucket; a bucket without requests has no latency."""
    times = np.array([r["time"] for r in rows], dtype=float)
    latency = np.array([r["latency_ms"] or 0.0 for r in rows], dtype=float)
    which = np.digitize(times, edges) - 1
    rps, p50, p90, p99 = [], [], [], []
    for b in range(len(edges) - 1):
        here = latency[which == b]
        rps.append(round(len(here) / bucket_s, 3))
        for out, q in ((p50, 50), (p90, 90), (p99, 99)):
            out.append(round(float(np.percentile(here, q)), 1) if len(here) else None)
    return {"t": [round(float(e), 1) for e in edges[:-1]], "rps": rps, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99,
            "requests": len(rows), "errors": sum(1 for r in rows if r["status"] >= 400)}  # fmt: skip
