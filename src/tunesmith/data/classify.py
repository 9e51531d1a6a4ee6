"""Classification data: text + label columns mapped, checked, split and written as Parquet with a report."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.config import DataConfig
from tunesmith.data.readers import read_records
from tunesmith.errors import TunesmithError

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    texts: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)  # per-row split names, when read with a split column

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: list[int]) -> "Split":
        return Split([self.texts[i] for i in idx], [self.labels[i] for i in idx])


@dataclass
class Prepared:
    splits: dict[str, Split]
    labels: list[str]  # label names in id order
    report: dict


def label_order(names: set[str]) -> list[str]:
    """Numbers in numeric order (0, 1, 2, 10), everything else alphabetically."""
    return sorted(names, key=lambda s: (0, float(s), s) if re.fullmatch(r"-?\d+(\.\d+)?", s) else (1, 0.0, s))


def normalise(text: str) -> str:
    """The key under which two texts count as "the same text" (whitespace and case folded)."""
    return " ".join(text.split()).casefold()


SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val",
               "test": "test", "testing": "test"}


def read_split(path: str, cfg: DataConfig, text_col: str | None = None, label_col: str | None = None,
               split_col: str | None = None) -> tuple[Split, dict]:
    """Read one file or folder into texts and labels; malformed rows fail or are skipped and counted.

    With `split_col`, each kept row's split name ("train", "val" or "test") is in the returned Split's `parts`.
    """
    text_col, label_col = text_col or cfg.text, label_col or cfg.label
    split, skipped, examples = Split(), Counter(), []
    records = read_records(path, fmt=cfg.format, delimiter=cfg.delimiter, columns=cfg.columns,
                           encoding=cfg.encoding, text_field=text_col, label_field=label_col)
    seen_columns = False
    for rec in records:
        problem = rec.error
        if rec.fields is not None:
            if not seen_columns:
                missing = [c for c in (text_col, label_col, split_col) if c and c not in rec.fields]
                if missing:
                    have = ", ".join(map(str, rec.fields)) or "(none)"
                    raise TunesmithError(
                        f"{rec.where}: column {missing[0]!r} not found; the columns are: {have}. "
                        f"Set data.text / data.label to the right names."
                    )
                seen_columns = True
            problem = _check(rec.fields, text_col, label_col)
            part = SPLIT_NAMES.get(str(rec.fields.get(split_col, "")).strip().lower()) if split_col else None
            if not problem and split_col and not part:
                problem = f"{split_col!r} is {rec.fields.get(split_col)!r}, not one of train, val, test"
        if problem:
            if cfg.on_error == "fail":
                raise TunesmithError(f"{rec.where}: {problem} (set data.on_error: skip to skip and count such rows)")
            skipped[problem.split(" (")[0]] += 1
            if len(examples) < 5:
                examples.append({"where": rec.where, "reason": problem})
            continue
        split.texts.append(str(rec.fields[text_col]).strip())
        split.labels.append(_label_str(rec.fields[label_col]))
        if split_col:
            split.parts.append(part)
        if cfg.max_rows and len(split) >= cfg.max_rows:
            break
    report = {"path": str(path), "rows_read": len(split) + sum(skipped.values()), "rows_kept": len(split),
              "skipped": dict(skipped), "skipped_examples": examples}
    return split, report


def _label_str(value) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _check(fields: dict, text_col: str, label_col: str) -> str | None:
    if text_col not in fields:
        return f"missing field {text_col!r}"
    if label_col not in fields:
        return f"missing field {label_col!r}"
    text, label = fields[text_col], fields[label_col]
    if not isinstance(text, str):
        return f"field {text_col!r} is {type(text).__name__}, not text"
    if not text.strip():
        return "empty text"
    if label is None or isinstance(label, (dict, list)) or not str(label).strip():
        return f"missing or invalid label in {label_col!r}"
    return None


def stratified_split(labels: list[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (kept, taken): `fraction` of each class taken, seeded; classes too small to split stay whole."""
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = {}
    for i, y in enumerate(labels):
        by_label.setdefault(y, []).append(i)
    kept, taken = [], []
    for y in sorted(by_label):
        idx = by_label[y]
        rng.shuffle(idx)
        k = round(len(idx) * fraction) if len(idx) >= 2 else 0
        k = min(k, len(idx) - 1)
        taken += idx[:k]
        kept += idx[k:]
    return sorted(kept), sorted(taken)


def prepare(cfg: DataConfig, seed: int) -> Prepared:
    """Read the given splits, carve the missing ones out of train, remove test texts from train and val."""
    report: dict = {"files": {}, "removed": {}}
    splits: dict[str, Split] = {}
    for name in SPLITS:
        path = getattr(cfg, name)
        if path:
            splits[name], report["files"][name] = read_split(path, cfg, split_col=cfg.split_column if name == "train" else None)
    if cfg.split_column:
        whole = splits.pop("train")
        for name in SPLITS:
            idx = [i for i, part in enumerate(whole.parts) if part == name]
            if idx and name not in splits:
                splits[name] = whole.subset(idx)
        if "train" not in splits:
            raise TunesmithError(f"{cfg.train}: no row has {cfg.split_column!r} = train")
        report["split_from"] = f"column {cfg.split_column!r}"
    train = splits["train"]
    if cfg.sample and cfg.sample < len(train):
        picked = sorted(random.Random(seed).sample(range(len(train)), cfg.sample))
        report["sampled"] = f"seeded random sample of {cfg.sample} of {len(train)} training rows (seed {seed})"
        train = train.subset(picked)
    for name, fraction, offset in (("test", cfg.test_fraction, 1), ("val", cfg.val_fraction, 2)):
        if name not in splits and fraction > 0:
            kept, taken = stratified_split(train.labels, fraction, seed + offset)
            splits[name], train = train.subset(taken), train.subset(kept)
            report[f"{name}_from"] = f"seeded stratified {fraction:.0%} of train (seed {seed + offset})"
    splits["train"] = train
    if "test" in splits:
        test_keys = {normalise(t) for t in splits["test"].texts}
        for name in ("train", "val"):
            if name in splits:
                keep = [i for i, t in enumerate(splits[name].texts) if normalise(t) not in test_keys]
                report["removed"][f"{name}_overlapping_test"] = len(splits[name]) - len(keep)
                splits[name] = splits[name].subset(keep)
    labels = _check_labels(splits)
    report["rows"] = {n: len(s) for n, s in splits.items()}
    report["labels"] = {n: dict(sorted(Counter(s.labels).items())) for n, s in splits.items()}
    report["text_chars"] = {n: _length_stats(s.texts) for n, s in splits.items()}
    return Prepared(splits, labels, report)


def _check_labels(splits: dict[str, Split]) -> list[str]:
    train = splits["train"]
    if len(train) == 0:
        raise TunesmithError("no training rows left after reading and filtering; check data.train and data.on_error")
    names = set(train.labels)
    if len(names) < 2:
        raise TunesmithError(f"the training data has a single class ({next(iter(names))!r}); a classifier needs at least two")
    for name in ("val", "test"):
        if name in splits:
            unseen = sorted(set(splits[name].labels) - names)
            if unseen:
                raise TunesmithError(f"the {name} split has labels that never occur in train: {unseen[:10]}")
    return label_order(names)


def _length_stats(texts: list[str]) -> dict:
    if not texts:
        return {}
    lengths = sorted(len(t) for t in texts)
    return {"min": lengths[0], "median": lengths[len(lengths) // 2], "p95": lengths[int(len(lengths) * 0.95)],
            "max": lengths[-1], "histogram": _histogram(lengths)}


def _histogram(lengths: list[int], bins: int = 20) -> dict:
    hi = max(lengths[-1], 1)
    width = max(1, -(-hi // bins))
    counts = Counter(min(v // width, bins - 1) for v in lengths)
    return {"bin_width": width, "counts": [counts.get(i, 0) for i in range(bins)]}


def write_prepared(prep: Prepared, folder: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    for name, split in prep.splits.items():
        pq.write_table(pa.table({"text": split.texts, "label": split.labels}), folder / f"{name}.parquet")
    (folder / "data_report.json").write_text(json.dumps(prep.report | {"label_names": prep.labels}, indent=2))


def read_prepared(folder: Path) -> Prepared:
    import pyarrow.parquet as pq

    report = json.loads((folder / "data_report.json").read_text())
    splits = {}
    for name in SPLITS:
        f = folder / f"{name}.parquet"
        if f.is_file():
            t = pq.read_table(f)
            splits[name] = Split(t.column("text").to_pylist(), t.column("label").to_pylist())
    return Prepared(splits, report["label_names"], report)
