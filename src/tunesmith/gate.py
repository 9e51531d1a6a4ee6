"""The evaluation gate between a served run and its retrained successor: the new run must not be worse on the
served run's own test set (beyond a tolerance) and must be better on held-out feedback. `tunesmith promote`
refuses a run that has not passed it (unless forced). Classifier runs are gated on accuracy."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from tunesmith.errors import TunesmithError
from tunesmith.files import write_json
from tunesmith.infer.load import model_dir
from tunesmith.models.saved import CLASSIFIER, read_meta

GATE_FILE = "gate.json"


def gate(new: str | Path, served: str | Path, feedback: str | Path, *, tolerance: float = 0.01) -> dict:
    """Scores both runs on the served run's test split and on the held-out feedback (JSONL rows of text, label);
    writes gate.json into the new run's folder and returns it."""
    from tunesmith.methods.classify import evaluate

    new_dir, old_dir = model_dir(new).parent, model_dir(served).parent
    for folder in (new_dir, old_dir):
        meta = read_meta(folder / "model")
        if meta["kind"] != CLASSIFIER:
            raise TunesmithError(f"{folder}: a {meta['kind']} run; the gate scores classifier runs (accuracy) so far")
    if not Path(feedback).is_file():
        raise TunesmithError(f"{feedback}: no such file (the held-out feedback: tunesmith feedback export --holdout)")
    test = old_dir / "data" / "test.parquet"
    if not test.is_file():
        raise TunesmithError(f"{old_dir}: the served run kept no test split (data/test.parquet) to gate on")
    with tempfile.TemporaryDirectory() as tmp:
        old_test = Path(tmp) / "test.jsonl"
        rows = pq.read_table(test, columns=["text", "label"]).to_pylist()
        old_test.write_text("".join(json.dumps(r) + "\n" for r in rows))
        scores = {
            where: {who: _accuracy(evaluate, run, data) for who, run in (("new", new_dir), ("served", old_dir))}
            for where, data in (("test", old_test), ("feedback", Path(feedback)))
        }
    test_ok = scores["test"]["new"] >= scores["test"]["served"] - tolerance
    feedback_ok = scores["feedback"]["new"] > scores["feedback"]["served"]
    why = []
    if not test_ok:
        why.append(f"test accuracy fell from {scores['test']['served']:.4f} to {scores['test']['new']:.4f} "
                   f"(tolerance {tolerance})")  # fmt: skip
    if not feedback_ok:
        why.append(f"held-out feedback accuracy {scores['feedback']['new']:.4f} is not above the served run's "
                   f"{scores['feedback']['served']:.4f}")  # fmt: skip
    result = {"passed": test_ok and feedback_ok, "why": "; ".join(why) or None, "new": str(new_dir),
              "served": str(old_dir), "feedback": str(feedback), "tolerance": tolerance,
              "accuracy": scores}  # fmt: skip
    write_json(new_dir / GATE_FILE, result)
    return result


def _accuracy(evaluate, run_dir: Path, data: Path) -> float:
    return float(evaluate(run_dir, data, text="text", label="label", fmt="jsonl", baseline=False, write=False)
                 ["tuned"]["accuracy"])  # fmt: skip


def passed(run: str | Path) -> dict:
    """The run's gate.json, or an error saying that it was never gated."""
    path = model_dir(run).parent / GATE_FILE
    if not path.is_file():
        raise TunesmithError(f"{run}: not gated yet; run `tunesmith gate {run} --against SERVED --feedback FILE` "
                             "first, or promote with --force")  # fmt: skip
    return json.loads(path.read_text())
