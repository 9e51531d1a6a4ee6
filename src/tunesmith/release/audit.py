"""`tunesmith audit RUN [--data FILE]`: where a classifier is weaker than its headline score says, into
run_dir/audit.json and a section of report.html.

- Slices: accuracy, macro-F1 and calibration (ECE) per value of a slice column, or, without one, per text-length
  quartile and per gold label; a warning where a slice falls more than `gap` below the whole.
- Data warnings from the run's data report: label imbalance, a length skew between train and test, duplicates.
- Robustness: seeded perturbations of the texts (release/perturb.py), the accuracy under each (for negation, of
  a two-label classifier, against the other label), and the examples whose expected label lost most probability.
- Fairness: with a sensitive column, fairlearn's MetricFrame gives accuracy and selection rate per group, and the
  largest gap between groups.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from tunesmith.errors import TunesmithError
from tunesmith.files import write_json

IMBALANCE, LENGTH_SKEW = 5.0, 1.5  # the largest label over the smallest; median test length over train's


def audit(
    run: str | Path,
    data: str | Path | None = None,
    *,
    slice_column: str | None = None,
    sensitive: str | None = None,
    gap: float = 0.05,
    rows: int = 1000,
    seed: int = 0,
) -> dict:
    from tunesmith.infer.classifier import Classifier
    from tunesmith.infer.load import model_dir
    from tunesmith.models.saved import load_classifier

    folder = model_dir(run)
    clf = Classifier(*load_classifier(folder))
    texts, gold, columns = _rows(folder.parent, clf, data, [c for c in (slice_column, sensitive) if c])
    probs = clf.probabilities(texts)
    pred = probs.argmax(1)
    out = {
        "run": str(folder.parent),
        "data": str(data) if data else "the run's test split",
        "rows": len(texts),
        "overall": _scores(probs, gold, len(clf.labels)),
    }
    groups = {f"{slice_column}={v}": columns[slice_column] == v for v in sorted(set(columns[slice_column]))} \
        if slice_column else _default_slices(texts, gold, clf.labels)  # fmt: skip
    out["slices"] = _slices(groups, probs, gold, out["overall"]["accuracy"], gap, len(clf.labels))
    out["data_warnings"] = data_warnings(folder.parent)
    out["robustness"] = _robustness(clf, texts, gold, probs, rows, seed)
    if sensitive:
        out["fairness"] = _fairness(gold, pred, columns[sensitive], clf.labels, sensitive)
    write_json(folder.parent / "audit.json", out)
    return out


def _rows(run_dir: Path, clf, data, wanted: list[str]) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """Texts, gold label ids and the asked-for columns, from --data (read as the run read its data) or the
    run's test split."""
    if data is None:
        from tunesmith.data.prepared import read_prepared

        if wanted:
            raise TunesmithError(
                f"{run_dir.name}: the run's test split keeps only text and label, so column {wanted[0]!r} is not "
                "there; give --data FILE with that column"
            )
        split = read_prepared(run_dir / "data").splits.get("test")
        if split is None or not len(split):
            raise TunesmithError(f"{run_dir.name}: the run has no test split; give --data FILE to audit on")
        return split.texts, _label_ids(split.labels, clf.labels, run_dir), {}
    from tunesmith.config import load_config
    from tunesmith.data.prepare import join_columns
    from tunesmith.data.readers import read_records

    d = load_config(run_dir / "config.yaml").data
    text_cols = [d.text] if isinstance(d.text, str) else d.text or ["text"]
    label = d.label or "label"
    records = list(read_records(data, fmt=d.format, delimiter=d.delimiter, columns=d.columns,
                                text_field=text_cols[0], label_field=label))  # fmt: skip
    if bad := next((r for r in records if r.fields is None), None):
        raise TunesmithError(f"{bad.where}: {bad.error}")
    if not records:
        raise TunesmithError(f"{data}: no rows to audit")
    for col in [*text_cols, label, *wanted]:
        if col not in records[0].fields:
            raise TunesmithError(f"{data}: no column {col!r}; its columns are {', '.join(map(str, records[0].fields))}")
    if isinstance(d.text, list):  # joined as the data stage joined them for training
        key = "+".join(text_cols)
        texts = [join_columns(r.fields, tuple(text_cols), d.text_separator, r.where)[key] for r in records]
    else:
        texts = [str(r.fields[text_cols[0]]) for r in records]
    columns = {c: np.array([str(r.fields.get(c)) for r in records]) for c in wanted}
    return texts, _label_ids([str(r.fields[label]) for r in records], clf.labels, Path(data)), columns


def _label_ids(labels: list[str], known: list[str], where: Path) -> np.ndarray:
    unknown = sorted(set(labels) - set(known))
    if unknown:
        raise TunesmithError(f"{where}: labels {unknown[:5]} are not the model's labels ({', '.join(known[:10])})")
    index = {name: i for i, name in enumerate(known)}
    return np.array([index[y] for y in labels])


def _scores(probs: np.ndarray, gold: np.ndarray, n_labels: int) -> dict:
    from sklearn.metrics import f1_score

    from tunesmith.eval.calibration import reliability

    pred = probs.argmax(1)
    return {
        "n": int(len(gold)),
        "accuracy": round(float((pred == gold).mean()), 4),
        "macro_f1": round(float(f1_score(gold, pred, average="macro", labels=range(n_labels), zero_division=0)), 4),
        "ece": round(reliability(probs, gold)["ece"], 4),
    }


def _default_slices(texts: list[str], gold: np.ndarray, labels: list[str]) -> dict[str, np.ndarray]:
    words = np.array([len(t.split()) for t in texts])
    edges = np.unique(np.quantile(words, [0.25, 0.5, 0.75]))
    bucket = np.digitize(words, edges, right=True)
    bounds = [0, *edges.astype(int).tolist(), int(words.max())]
    out = {f"length {bounds[b]}-{bounds[b + 1]} words": bucket == b for b in range(len(bounds) - 1)}
    return out | {f"label={name}": gold == i for i, name in enumerate(labels)}


def _slices(groups: dict, probs, gold, overall: float, gap: float, n_labels: int) -> list[dict]:
    out = []
    for name, mask in groups.items():
        if not mask.any():
            continue
        s = {"slice": name} | _scores(probs[mask], gold[mask], n_labels)
        if s["accuracy"] < overall - gap:
            s["warning"] = f"accuracy {s['accuracy']:.3f} is {overall - s['accuracy']:.3f} below the whole's"
        out.append(s)
    return out


def data_warnings(run_dir: Path) -> list[str]:
    """What the run's data report says that could bias the model."""
    import json

    report = json.loads((run_dir / "data" / "data_report.json").read_text())
    out = []
    counts = report.get("labels", {}).get("train", {})
    if counts and max(counts.values()) > IMBALANCE * max(min(counts.values()), 1):
        big, small = max(counts, key=counts.get), min(counts, key=counts.get)
        out.append(f"label imbalance: {big!r} has {counts[big]} training rows, {small!r} {counts[small]}")
    chars = report.get("chars", {})
    if "train" in chars and "test" in chars:
        ratio = chars["test"]["median"] / max(chars["train"]["median"], 1)
        if not 1 / LENGTH_SKEW <= ratio <= LENGTH_SKEW:
            out.append(f"length skew: the median test text is {ratio:.2f}x the median training text")
    for name, f in report.get("files", {}).items():
        dup = sum(n for s in f.get("steps", []) for why, n in s["removed"].items() if "duplicate" in why)
        if dup:
            out.append(f"duplicates: {dup} of {f['rows_read']} rows of {name} were duplicates (removed)")
    return out


def _robustness(clf, texts: list[str], gold: np.ndarray, probs: np.ndarray, rows: int, seed: int) -> dict:
    from tunesmith.release.perturb import perturbations

    rng = random.Random(seed)
    picked = sorted(rng.sample(range(len(texts)), min(rows, len(texts))))
    out, fragile = {}, []
    for name, edit in perturbations(_spacy()).items():
        if name == "negation" and len(clf.labels) != 2:
            continue  # only a two-way (sentiment) label has an answer that negation should flip to
        rng = random.Random(f"{seed}-{name}")
        edited = [(i, e) for i in picked if (e := edit(texts[i], rng)) is not None and e != texts[i]]
        if not edited:
            out[name] = {"texts": 0}
            continue
        idx = np.array([i for i, _ in edited])
        want = 1 - gold[idx] if name == "negation" else gold[idx]
        after = clf.probabilities([e for _, e in edited])
        before_acc = float((probs[idx].argmax(1) == gold[idx]).mean())
        after_acc = float((after.argmax(1) == want).mean())
        out[name] = {
            "texts": len(edited),
            "accuracy_before": round(before_acc, 4),
            "accuracy_after": round(after_acc, 4),
            "drop": round(before_acc - after_acc, 4),
            "predictions_changed": round(float((after.argmax(1) != probs[idx].argmax(1)).mean()), 4),
        }
        loss = probs[idx, gold[idx]] - after[np.arange(len(idx)), want]
        fragile += [{"perturbation": name, "text": texts[i], "perturbed": e, "expected": clf.labels[w],
                     "probability_before": round(float(probs[i, gold[i]]), 4),
                     "probability_after": round(float(after[k, w]), 4), "loss": float(loss[k])}
                    for k, ((i, e), w) in enumerate(zip(edited, want))]  # fmt: skip
    if "negation" in out:
        out["negation"]["note"] = "scored against the other label: a negated sentiment should flip"
    most = sorted(fragile, key=lambda f: -f["loss"])[:10]
    return {"rows": len(picked), "seed": seed, "perturbations": out,
            "most_fragile": [{k: v for k, v in f.items() if k != "loss"} for f in most]}  # fmt: skip


def _spacy():
    """spaCy's English NER, or None where its model is not installed (the entity swap is then left out)."""
    try:
        from tunesmith.data.pii import load_spacy

        return load_spacy()
    except TunesmithError:
        return None


def _fairness(gold, pred, groups, labels: list[str], column: str) -> dict:
    """Accuracy per group, and the share of each group given each label (selection rate), with their gaps."""
    from fairlearn.metrics import MetricFrame
    from sklearn.metrics import accuracy_score

    metrics = {"accuracy": accuracy_score} | {
        f"rate {name}": (lambda y, p, i=i: float((p == i).mean())) for i, name in enumerate(labels[:10])
    }
    frame = MetricFrame(metrics=metrics, y_true=gold, y_pred=pred, sensitive_features=groups)
    return {
        "column": column,
        "groups": {str(g): {k: round(float(v), 4) for k, v in row.items()} for g, row in frame.by_group.iterrows()},
        "counts": {str(g): int((groups == g).sum()) for g in sorted(set(groups))},
        "largest_gap": {k: round(float(v), 4) for k, v in frame.difference().items()},
    }
