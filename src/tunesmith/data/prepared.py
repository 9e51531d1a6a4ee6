"""Reading what `prepare` wrote: the Parquet splits of a run's data/ folder, as labelled texts or as rows.

prepare.py writes these files and imports its split names and label order from here, never the other way round.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

SPLITS = ("train", "val", "test")


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
    t = pq.read_table(file, columns=["text", "label"])
    return Split(t.column("text").to_pylist(), t.column("label").to_pylist())


def read_prepared(folder: Path) -> Prepared:
    """Labelled splits (text, label) with the label names in id order."""
    report = json.loads((folder / "data_report.json").read_text())
    splits = {name: read_split(folder / f"{name}.parquet") for name in SPLITS if (folder / f"{name}.parquet").is_file()}
    return Prepared(splits, report["label_names"], report)


def read_rows(folder: Path) -> dict[str, list[dict]]:
    """Every split as a list of rows (dicts with the shape's columns)."""
    return {
        name: pq.read_table(folder / f"{name}.parquet").to_pylist()
        for name in SPLITS
        if (folder / f"{name}.parquet").is_file()
    }


def data_shape(folder: Path) -> str:
    return json.loads((folder / "data_report.json").read_text())["shape"]
