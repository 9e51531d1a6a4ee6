"""`tunesmith feedback export`: what users said about a served run, as training data the methods read.

- a classifier: corrected labels become labelled rows (text, label); a thumbs-up (or a score of 4-5) on an
  uncorrected prediction confirms it as a labelled row;
- a chat run, shape `feedback` (KTO): each rated reply becomes (prompt, completion, label), up or 4-5 desirable,
  down or 1-2 not; a preferred response is a desirable completion too;
- a chat run, shape `preference` (DPO): each preferred response becomes (prompt, chosen=preferred,
  rejected=the reply served);
- a chat run, shape `chat` (SFT, which can continue from the served run with replay): each reply rated up (or 4-5)
  and each preferred response becomes a conversation ending in that reply.

The texts are those the server logged (it logs them only with --log-text, anonymised); a preferred response is
anonymised here. Rows whose text is in the run's own test split are dropped, so that the next round's test
scores stay honest; so are repeats (the latest feedback wins). Every feedback row not exported is counted, by
reason.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

from tunesmith.data.pii import anonymiser
from tunesmith.errors import TunesmithError
from tunesmith.files import atomic_write
from tunesmith.infer.load import model_dir
from tunesmith.models.saved import CLASSIFIER, read_meta
from tunesmith.serve.served import served_name
from tunesmith.serve.store import Store

SHAPES = ("classify", "feedback", "preference", "chat")
LABELLED, KTO = SHAPES[0], SHAPES[1]  # a classifier's rows; a chat run's default


def export_feedback(
    run: str | Path,
    to: str | Path,
    *,
    store: str | Path | None = None,
    shape: str | None = None,
    holdout: float = 0.0,
    holdout_to: str | Path | None = None,
    seed: int = 13,
) -> dict:
    """Writes the rows to `to` (JSONL) and, with `holdout`, that fraction of them to `holdout_to` instead (the gate's
    held-out feedback). Returns the counts."""
    run_dir = model_dir(run).parent
    meta = read_meta(run_dir / "model")
    kind_shape = LABELLED if meta["kind"] == CLASSIFIER else KTO
    shape = shape or kind_shape
    if shape not in SHAPES or (shape == LABELLED) != (kind_shape == LABELLED):
        allowed = [LABELLED] if kind_shape == LABELLED else list(SHAPES[1:])
        raise TunesmithError(f"--shape {shape}: a {meta['kind']} run's feedback exports as {' or '.join(allowed)}")
    if not 0.0 <= holdout < 1.0:
        raise TunesmithError(f"--holdout {holdout}: a fraction from 0 to below 1")
    if holdout and holdout_to is None:
        raise TunesmithError("--holdout needs --holdout-to FILE: where the held-out rows go")
    path = Path(store) if store else run_dir.parent / "serve.sqlite"
    if not path.is_file():
        raise TunesmithError(f"{path}: no request store; serve the run first, or give --store")
    name = served_name(run_dir)
    feedback = Store(path, anonymise=None).feedback(model=name)
    if not feedback:
        raise TunesmithError(f"{path} holds no feedback for {name!r}")
    skipped: Counter = Counter()
    rows = _rows(feedback, shape, skipped)
    rows = _not_in_test(rows, run_dir, shape, skipped)
    random.Random(seed).shuffle(rows)
    cut = round(len(rows) * holdout)
    held, kept = rows[:cut], rows[cut:]
    if not kept:
        raise TunesmithError(f"no feedback of {name!r} could be exported: {dict(skipped)}")
    atomic_write(Path(to), "".join(json.dumps(r) + "\n" for r in kept))
    if holdout_to is not None:
        atomic_write(Path(holdout_to), "".join(json.dumps(r) + "\n" for r in held))
    return {"model": name, "shape": shape, "feedback": len(feedback), "rows": len(kept), "holdout_rows": len(held),
            "skipped": dict(skipped), "to": str(to), "holdout_to": str(holdout_to) if holdout_to else None}  # fmt: skip


def _rows(feedback: list[dict], shape: str, skipped: Counter) -> list[dict]:
    anonymise = anonymiser() if shape != LABELLED and any(f["preferred"] for f in feedback) else None
    out: dict[str, dict] = {}  # by text: the latest feedback wins
    for f in sorted(feedback, key=lambda f: f["time"]):
        if f["prompt"] is None:
            skipped["no text logged (serve with --log-text)"] += 1
            continue
        prompt = json.loads(f["prompt"])
        good = f["thumb"] == 1 or (f["score"] or 0) >= 4
        bad = f["thumb"] == -1 or (f["score"] is not None and f["score"] <= 2)
        made = _classify(f, prompt, good) if shape == LABELLED else _chat(f, prompt, shape, good, bad, anonymise)
        if isinstance(made, str):
            skipped[made] += 1
            continue
        for row in made:
            out[json.dumps(row, sort_keys=True)] = row
    return list(out.values())


def _classify(f: dict, texts: list[str], good: bool) -> list[dict] | str:
    if f["item"] is None and len(texts) != 1:
        return "a request of several texts, and the feedback names none of them (index)"
    at = f["item"] or 0
    if f["label"] is not None:
        return [{"text": texts[at], "label": f["label"]}]
    if good and f["prediction"]:
        return [{"text": texts[at], "label": json.loads(f["prediction"])[at]}]
    return "no corrected label and no thumbs-up"


def _chat(f: dict, turns: list[dict], shape: str, good: bool, bad: bool, anonymise) -> list[dict] | str:
    preferred = anonymise([f["preferred"]])[0] if f["preferred"] and anonymise else f["preferred"]
    if shape == "preference":
        if not preferred or f["reply"] is None:
            return "no preferred response"
        return [{"prompt": turns, "chosen": preferred, "rejected": f["reply"]}]
    if shape == "chat":
        replies = ([f["reply"]] if good and f["reply"] is not None else []) + ([preferred] if preferred else [])
        return [{"messages": [*turns, {"role": "assistant", "content": r}]} for r in replies] or (
            "no reply rated up and no preferred response"
        )
    rows = []
    if (good or bad) and f["reply"] is not None:
        rows.append({"prompt": turns, "completion": f["reply"], "label": good})
    if preferred:
        rows.append({"prompt": turns, "completion": preferred, "label": True})
    return rows or "no rating and no preferred response"


def _key(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def _not_in_test(rows: list[dict], run_dir: Path, shape: str, skipped: Counter) -> list[dict]:
    """Drops rows whose text (a classifier's) or last user turn (a chat run's) is in the run's test split."""
    test = _test_texts(run_dir)
    kept = []
    for row in rows:
        turns = row.get("prompt") or row.get("messages", [])
        text = row["text"] if shape == LABELLED else next(t["content"] for t in reversed(turns) if t["role"] == "user")
        if _key(text) in test:
            skipped["in the run's test split"] += 1
        else:
            kept.append(row)
    return kept


def _test_texts(run_dir: Path) -> set[str]:
    """The run's test rows, as keys: a classifier's texts, or the last user turn of each chat prompt."""
    import pyarrow.parquet as pq

    file = run_dir / "data" / "test.parquet"
    if not file.is_file():
        return set()
    out = set()
    for row in pq.read_table(file).to_pylist():
        if isinstance(row.get("text"), str):
            out.add(_key(row["text"]))
            continue
        turns = row.get("prompt") if row.get("prompt") is not None else row.get("messages") or []
        users = [turns] if isinstance(turns, str) else [t["content"] for t in turns if t.get("role") == "user"]
        if users:
            out.add(_key(users[-1]))
    return out
