"""The runs a server serves: each loaded once, by name, with the worker that batches its requests and the
validation statistics its drift is measured against."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tunesmith.errors import TunesmithError
from tunesmith.infer.classifier import Classifier
from tunesmith.infer.load import model_dir
from tunesmith.models.saved import CAUSAL_LM, CLASSIFIER, read_meta
from tunesmith.runs import Registry
from tunesmith.serve.batching import Worker, generate_batch, text_batch


@dataclass
class Limits:
    max_batch: int = 32  # rows generated (or texts classified) together
    max_queue: int = 256  # requests waiting per model; more get 429
    wait_ms: float = 5.0  # how long a batch waits for company once a request has arrived
    max_tokens: int = 512  # the most new tokens a request may ask for
    max_prompt_tokens: int = 4096
    max_body_bytes: int = 1_000_000
    max_texts: int = 256  # texts per classify or embeddings request


@dataclass
class Served:
    name: str  # the OpenAI `model` field
    run_dir: Path
    kind: str  # classifier or causal-lm
    meta: dict
    version: str  # the run's registry id and folder: what the request log records as the model version
    scores: dict = field(default_factory=dict)  # the run's headline test scores
    classifier: Classifier | None = None
    model: object = None  # a causal LM
    tokenizer: object = None
    worker: Worker | None = None
    val_distribution: dict[str, float] = field(default_factory=dict)  # label shares predicted on validation
    val_confidence: float | None = None

    @property
    def labels(self) -> list[str]:
        return self.meta.get("labels", [])


def load(run: str | Path, limits: Limits, fmt: str | None = None) -> Served:
    folder = model_dir(run, fmt=fmt)
    run_dir, meta = folder.parents[0 if fmt is None else 1], read_meta(folder)  # run_dir/model, run_dir/exports/FMT
    row = Registry(run_dir.parent).row(run_dir) or {}
    name = served_name(run_dir, row)
    version = f"{row['id']}:{run_dir.name}" if row.get("id") is not None else run_dir.name
    served = Served(name, run_dir, meta["kind"], meta, version, scores=_scores(run_dir))
    if meta["kind"] == CLASSIFIER:
        served.classifier = classifier = Classifier.load(run_dir, fmt)
        run_batch, max_batch = text_batch(lambda items: _by_kind(classifier, items)), limits.max_batch * 2
        served.val_distribution, served.val_confidence = _validation_predictions(classifier, run_dir)
    elif meta["kind"] == CAUSAL_LM:
        from tunesmith.models.saved import load_causal_lm

        served.model, served.tokenizer, _ = load_causal_lm(folder)
        model, tokenizer = served.model, served.tokenizer
        run_batch, max_batch = (lambda jobs: generate_batch(model, tokenizer, jobs)), limits.max_batch
    else:
        raise TunesmithError(f"{run}: a {meta['kind']} ({meta['method']} run) is not served; serve a classifier "
                             "or a causal-LM run")  # fmt: skip
    served.worker = Worker(run_batch, max_batch=max_batch, max_queue=limits.max_queue, wait_s=limits.wait_ms / 1000,
                           name=name)  # fmt: skip
    return served


def served_name(run_dir: Path, row: dict | None = None) -> str:
    """The OpenAI `model` field of a run: its name in the registry (its `row`, when already read), else its
    folder's name."""
    row = Registry(run_dir.parent).row(run_dir) if row is None else row
    return (row or {}).get("name") or run_dir.name


def load_all(runs: list[str | Path], limits: Limits, fmt: str | None = None) -> dict[str, Served]:
    """Each run's model, or each one's `fmt` export."""
    out: dict[str, Served] = {}
    for run in runs:
        served = load(run, limits, fmt)
        if served.name in out:
            raise TunesmithError(
                f"two runs are named {served.name!r} ({out[served.name].run_dir} and {served.run_dir}): the OpenAI "
                "`model` field could not tell them apart; serve one of them"
            )
        out[served.name] = served
    return out


def _by_kind(classifier: Classifier, items: list[tuple[str, str]]) -> list:
    """Text jobs are ("label" | "embed", text) pairs, so both endpoints share the model's one worker."""
    out: list = [None] * len(items)
    for kind in ("label", "embed"):
        at = [i for i, (k, _) in enumerate(items) if k == kind]
        if not at:
            continue
        texts = [items[i][1] for i in at]
        results = classifier.predict(texts) if kind == "label" else classifier.embed(texts).tolist()
        for i, r in zip(at, results):
            out[i] = r
    return out


def _scores(run_dir: Path) -> dict:
    path = run_dir / "eval.json"
    if not path.is_file():
        return {}
    report = json.loads(path.read_text())
    return {
        who: {k: v for k, v in report[who].items() if isinstance(v, int | float) and not isinstance(v, bool)}
        for who in ("tuned", "baseline")
        if isinstance(report.get(who), dict)
    }


def _validation_predictions(classifier: Classifier, run_dir: Path) -> tuple[dict[str, float], float | None]:
    """What the model predicts on its own validation split (else test): the reference drift is measured against."""
    from tunesmith.data.prepared import read_prepared

    try:
        splits = read_prepared(run_dir / "data").splits
    except (OSError, TunesmithError, KeyError, ValueError):
        return {}, None
    split = splits.get("val") if len(splits.get("val", ())) else splits.get("test")
    if split is None or not len(split):
        return {}, None
    probs = classifier.probabilities(split.texts[:2000])
    picked = probs.argmax(-1)
    shares = np.bincount(picked, minlength=len(classifier.labels)) / len(picked)
    return dict(zip(classifier.labels, shares.round(4).tolist())), float(probs.max(-1).mean())
