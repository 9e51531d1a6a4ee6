"""metrics.jsonl (one line per logged step and per evaluation) and TensorBoard, side by side."""

from __future__ import annotations

import json
from pathlib import Path


class MetricsLog:
    def __init__(self, run_dir: Path, resume_step: int | None):
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            # Lines written after the checkpoint we resume from would be written again: drop them.
            kept = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        self.file = self.path.open("a")
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step)

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        prefix = row.get("split", "train")
        for key, value in row.items():
            if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                self.tb.add_scalar(f"{prefix}/{key}", value, row["step"])

    def close(self) -> None:
        self.file.close()
        self.tb.close()
