"""The evaluation gate between a served run and its retrained successor: the new run must not be worse on the
served run's own test set (beyond a tolerance) and must be better on held-out feedback. `tunesmith promote`
refuses a run that has not passed it (unless forced).

- classifiers: accuracy on the test split (at most `tolerance` lower) and on held-out labelled feedback rows;
- causal LMs: the mean loss per reply token on the test split (at most `tolerance` x 100% higher), and agreement
  with held-out feedback: KTO rows (prompt, completion, label) score the mean per-token log-prob of desirable
  completions minus that of undesirable ones (chat rows: their last reply, desirable); preference rows (prompt,
  chosen, rejected) the share of pairs whose chosen reply is the likelier (per token).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import torch

from tunesmith.errors import TunesmithError
from tunesmith.files import write_json
from tunesmith.infer.load import model_dir
from tunesmith.models.saved import CLASSIFIER, read_meta

GATE_FILE = "gate.json"


def gate(new: str | Path, served: str | Path, feedback: str | Path, *, tolerance: float = 0.01) -> dict:
    """Scores both runs on the served run's test split and on the held-out feedback (JSONL rows of text, label);
    writes gate.json into the new run's folder and returns it."""
    new_dir, old_dir = model_dir(new).parent, model_dir(served).parent
    kinds = {read_meta(folder / "model")["kind"] for folder in (new_dir, old_dir)}
    if len(kinds) != 1:
        raise TunesmithError(f"{new_dir} and {old_dir} hold different kinds of model ({sorted(kinds)}): not comparable")
    if not Path(feedback).is_file():
        raise TunesmithError(f"{feedback}: no such file (the held-out feedback: tunesmith feedback export --holdout)")
    test = old_dir / "data" / "test.parquet"
    if not test.is_file():
        raise TunesmithError(f"{old_dir}: the served run kept no test split (data/test.parquet) to gate on")
    if kinds != {CLASSIFIER}:
        scores, test_ok = _causal_scores(new_dir, old_dir, test, Path(feedback), tolerance)
        return _verdict(new_dir, old_dir, feedback, tolerance, scores, test_ok, "test loss")
    with tempfile.TemporaryDirectory() as tmp:
        old_test = Path(tmp) / "test.jsonl"
        rows = pq.read_table(test, columns=["text", "label"]).to_pylist()
        old_test.write_text("".join(json.dumps(r) + "\n" for r in rows))
        scores = {
            where: {who: _accuracy(run, data) for who, run in (("new", new_dir), ("served", old_dir))}
            for where, data in (("test", old_test), ("feedback", Path(feedback)))
        }
    test_ok = scores["test"]["new"] >= scores["test"]["served"] - tolerance
    return _verdict(new_dir, old_dir, feedback, tolerance, {"accuracy": scores}, test_ok, "test accuracy")


def _verdict(new_dir: Path, old_dir: Path, feedback, tolerance: float, scores: dict, test_ok: bool, test_what: str):
    ((metric, values),) = scores.items()
    feedback_ok = values["feedback"]["new"] > values["feedback"]["served"]
    why = []
    if not test_ok:
        why.append(f"{test_what} went from {values['test']['served']:.4f} to {values['test']['new']:.4f} "
                   f"(tolerance {tolerance})")  # fmt: skip
    if not feedback_ok:
        why.append(f"held-out feedback {metric} {values['feedback']['new']:.4f} is not above the served run's "
                   f"{values['feedback']['served']:.4f}")  # fmt: skip
    result = {"passed": test_ok and feedback_ok, "why": "; ".join(why) or None, "new": str(new_dir),
              "served": str(old_dir), "feedback": str(feedback), "tolerance": tolerance, "metric": metric,
              metric: values}  # fmt: skip
    write_json(new_dir / GATE_FILE, result)
    return result


def _causal_scores(new_dir: Path, old_dir: Path, test: Path, feedback: Path, tolerance: float) -> tuple[dict, bool]:
    """Test loss (lower is better) and feedback agreement of both runs' causal LMs."""
    from tunesmith.config import load_config
    from tunesmith.methods.sft import loss_on
    from tunesmith.models.saved import load_causal_lm

    cfg = load_config(old_dir / "config.yaml")
    shape = json.loads((old_dir / "data" / "data_report.json").read_text())["shape"]
    test_rows = pq.read_table(test).to_pylist()
    rows = _feedback_rows(feedback)
    values = {"test": {}, "feedback": {}}
    for who, folder in (("new", new_dir), ("served", old_dir)):
        model, tokenizer, _ = load_causal_lm(folder / "model")
        values["test"][who] = loss_on(model, tokenizer, test_rows, shape, cfg)
        values["feedback"][who] = _agreement(model, tokenizer, rows, cfg.train.max_length)
    test_ok = values["test"]["new"] <= values["test"]["served"] * (1 + tolerance)
    return {"loss_and_agreement": values}, test_ok


def _feedback_rows(path: Path) -> list[dict]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise TunesmithError(f"{path}:{n}: not JSON ({err.msg})") from None
        if isinstance(row.get("messages"), list) and row["messages"]:  # a chat row: its last reply is desirable
            *head, last = row["messages"]
            row = {"prompt": head, "completion": last.get("content", ""), "label": True}
        prompt = row.get("prompt")
        turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if not turns or not ({"completion", "label"} <= row.keys() or {"chosen", "rejected"} <= row.keys()):
            raise TunesmithError(f"{path}:{n}: a chat run's feedback rows have prompt with completion and label "
                                 "(KTO), prompt with chosen and rejected (preference), or messages (chat)")  # fmt: skip
        out.append(row | {"prompt": turns})
    if not out:
        raise TunesmithError(f"{path}: no feedback rows")
    return out


def _agreement(model, tokenizer, rows: list[dict], max_length: int) -> float:
    """KTO rows: mean per-token log-prob of desirable completions minus undesirable; pairs: share chosen likelier."""
    from tunesmith.lm.logprobs import sequence_logprobs
    from tunesmith.lm.tokens import pad_id, reply_tokens, target_rows

    def logp(turns, reply) -> float:
        ids, targets, _ = reply_tokens(tokenizer, turns, reply, max_length)
        with torch.no_grad():
            return float(sequence_logprobs(model, target_rows([(ids, targets)], pad_id(tokenizer)), mean=True)[0])

    if "chosen" in rows[0]:
        return sum(logp(r["prompt"], r["chosen"]) > logp(r["prompt"], r["rejected"]) for r in rows) / len(rows)
    good = [logp(r["prompt"], r["completion"]) for r in rows if r["label"]]
    bad = [logp(r["prompt"], r["completion"]) for r in rows if not r["label"]]
    return (sum(good) / len(good) if good else 0.0) - (sum(bad) / len(bad) if bad else 0.0)


def _accuracy(run_dir: Path, data: Path) -> float:
    from tunesmith.methods.classify import evaluate

    return float(evaluate(run_dir, data, text="text", label="label", fmt="jsonl", baseline=False, write=False)
                 ["tuned"]["accuracy"])  # fmt: skip


def passed(run: str | Path) -> dict:
    """The run's gate.json, or an error saying that it was never gated."""
    path = model_dir(run).parent / GATE_FILE
    if not path.is_file():
        raise TunesmithError(f"{run}: not gated yet; run `tunesmith gate {run} --against SERVED --feedback FILE` "
                             "first, or promote with --force")  # fmt: skip
    return json.loads(path.read_text())
