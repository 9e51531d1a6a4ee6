"""Where a classify run's peak memory comes from: minilm-l6 on SST-2 with tunesmith's defaults (dedup off, as in
classify_sst2.py), a short run (--steps optimiser steps), the resident memory sampled every 50 ms by a thread and
attributed to the phase running then: data preparation, training (fit), saving and scoring; at each phase's peak,
glibc's heap in use and freed but kept. --set KEY=VALUE changes a train key (e.g. --set batch_size=32) to compare.

    .venv/bin/python benchmarks/classify_memory.py                      # about a minute
    .venv/bin/python benchmarks/classify_memory.py --set batch_size=32
Prints one JSON object (and writes it to --out when given). ONEDNN_PRIMITIVE_CACHE_CAPACITY in the environment
is kept (tunesmith sets 64 otherwise).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import resource
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]  # fmt: skip


def heap_mb() -> tuple[float, float] | None:
    """glibc's heap: bytes malloc has handed out and not had back (mmapped blocks included), and bytes freed but
    kept in its heap; None where the C library is not glibc 2.33+."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
        info = libc.mallinfo2()
    except (OSError, AttributeError):
        return None
    return (info.uordblks + info.hblkhd) / 2**20, info.fordblks / 2**20


class Phases:
    """The highest resident memory seen in each phase, and at each phase's start and end; at each phase's peak,
    how much of glibc's heap was in use and how much was freed but kept (fragmentation)."""

    def __init__(self) -> None:
        self.proc, self.now, self.peaks, self.marks, self.heap = psutil.Process(), "import", {}, {}, {}
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            mb = self.proc.memory_info().rss / 2**20
            if mb > self.peaks.get(self.now, 0.0):
                self.peaks[self.now], heap = mb, heap_mb()
                if heap:
                    self.heap[self.now] = {"in_use_mb": round(heap[0]), "freed_kept_mb": round(heap[1])}
            time.sleep(0.05)

    def wrap(self, name: str, fn):
        def run(*args, **kwargs):
            self.now = name
            self.marks[f"{name}_start_mb"] = self.proc.memory_info().rss / 2**20
            out = fn(*args, **kwargs)
            self.marks[f"{name}_end_mb"] = self.proc.memory_info().rss / 2**20
            return out

        return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA, help="folder with SST-2 train.tsv and dev.tsv")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a train key, YAML value")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if not (a.data / "train.tsv").is_file():
        raise SystemExit(f"missing {a.data / 'train.tsv'}: this benchmark needs ../shared/data/sst2 (or --data)")
    phases = Phases()
    from tunesmith import api
    from tunesmith.methods import classify

    api._prepare_run = phases.wrap("prepare", api._prepare_run)
    classify.fit = phases.wrap("fit", classify.fit)
    classify.save_and_score = phases.wrap("save_score", classify.save_and_score)
    train = {"seed": 13, "max_steps": a.steps} | {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in a.set)}
    with tempfile.TemporaryDirectory() as tmp:
        config = {"name": "memory", "model": "minilm-l6", "output_dir": tmp, "train": train,
                  "data": {"train": str(a.data / "train.tsv"), "test": str(a.data / "dev.tsv"), "text": "sentence",
                           "label": "label", "dedup": {"exact": False, "near": False}},
                  "eval": {"baseline": False, "calibrate": False}}  # fmt: skip
        run_dir = api.train(config, quiet=True)
        recipe = json.loads((run_dir / "eval.json").read_text()).get("recipe", {})
    out = {"train": train, "recipe_chose": recipe, "peak_mb_by_phase": {k: round(v) for k, v in phases.peaks.items()},
           "heap_at_peak": phases.heap, "marks_mb": {k: round(v) for k, v in phases.marks.items()},
           "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}  # fmt: skip
    print(json.dumps(out, indent=1))
    if a.out:
        a.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
