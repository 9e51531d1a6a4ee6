"""Classification data as the classify method reads it: the prepared Parquet splits as texts and labels."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from tunesmith.data.prepare import SPLITS


@dataclass
class Split:
    texts: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class Prepared:
    splits: dict[str, Split]
    labels: list[str]  # label names in id order
    report: dict


def label_order(names: set[str]) -> list[str]:
    """Numbers in numeric order (0, 1, 2, 10), everything else alphabetically."""
    return sorted(names, key=lambda s: (0, float(s), s) if re.fullmatch(r"-?\d+(\.\d+)?", s) else (1, 0.0, s))


def read_split(file: Path) -> Split:
    import pyarrow.parquet as pq

    t = pq.read_table(file, columns=["text", "label"])
    return Split(t.column("text").to_pylist(), t.column("label").to_pylist())


def read_prepared(folder: Path) -> Prepared:
    report = json.loads((folder / "data_report.json").read_text())
    splits = {name: read_split(folder / f"{name}.parquet") for name in SPLITS if (folder / f"{name}.parquet").is_file()}
    return Prepared(splits, report["label_names"], report)
