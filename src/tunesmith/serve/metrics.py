"""/metrics in the Prometheus text format: requests, latency, tokens, queue depth, feedback and drift per model.
Each app has its own registry, so that two servers in one process (the tests) never share counters."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tunesmith.models.saved import CLASSIFIER
from tunesmith.serve.drift import DriftRule, drift
from tunesmith.serve.served import Served
from tunesmith.serve.store import Store

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self, served: dict[str, Served], store: Store, rule: DriftRule):
        self.served, self.store, self.rule = served, store, rule
        self.registry = r = CollectorRegistry()
        self.requests = Counter("tunesmith_requests", "Requests answered", ["model", "endpoint", "status"], registry=r)
        self.latency = Histogram("tunesmith_request_seconds", "Time from request to last byte", ["model", "endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.tokens = Counter("tunesmith_generated_tokens", "Tokens generated", ["model"], registry=r)
        self.refusals = Counter("tunesmith_filter_refusals", "Replies the output filter replaced by its refusal",
                                ["model", "reason"], registry=r)  # fmt: skip
        self.feedbacks = Counter("tunesmith_feedback", "Feedback received", ["model", "kind"], registry=r)
        self.queue = Gauge("tunesmith_queue_depth", "Requests waiting for a batch", ["model"], registry=r)
        self.distance = Gauge("tunesmith_drift_distance", "Total variation distance of predicted label shares in the "
                           "drift window against validation", ["model"], registry=r)  # fmt: skip
        self.confidence = Gauge("tunesmith_window_confidence", "Mean confidence in the drift window", ["model"],
                                registry=r)  # fmt: skip
        self.flagged = Gauge("tunesmith_drift_flagged", "1 when the drift rule flags the model", ["model"], registry=r)
        for name, model in served.items():
            self.watch(name, model)
            for kind in ("up", "down", "score", "label", "preferred", "comment"):
                self.feedbacks.labels(name, kind)

    def watch(self, name: str, model: Served) -> None:
        """The queue gauge follows the model now served under `name`."""
        self.queue.labels(name).set_function(model.worker.depth)

    def observe(self, row: dict) -> None:
        self.requests.labels(row["model"], row["endpoint"], str(row["status"])).inc()
        if row.get("latency_ms") is not None:
            self.latency.labels(row["model"], row["endpoint"]).observe(row["latency_ms"] / 1000)
        if row.get("completion_tokens"):
            self.tokens.labels(row["model"]).inc(row["completion_tokens"])
        for reason in row.get("filtered") or ():
            self.refusals.labels(row["model"], reason).inc()

    def feedback(self, model: str, body) -> None:
        columns = body.columns()
        kinds = [{1: "up", -1: "down"}[columns["thumb"]]] if columns["thumb"] else []
        kinds += [k for k in ("score", "label", "preferred", "comment") if columns[k] is not None]
        for kind in kinds:
            self.feedbacks.labels(model, kind).inc()

    def drift_of(self, model: Served) -> dict:
        rows = self.store.recent(model.name, time.time() - self.rule.window_s)
        return drift(rows, model.val_distribution, model.val_confidence, self.rule)

    def render(self) -> bytes:
        for name, model in self.served.items():
            if model.kind != CLASSIFIER:
                continue
            d = self.drift_of(model)
            if d["distance"] is not None:
                self.distance.labels(name).set(d["distance"])
                self.confidence.labels(name).set(d["confidence"])
            self.flagged.labels(name).set(int(d["flagged"]))
        return generate_latest(self.registry)
