"""A rich progress bar with loss, throughput and ETA on a terminal; a plain line now and then elsewhere (CI logs)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


class Progress:
    def __init__(self, total: int, *, quiet: bool = False, start: int = 0):
        self.total, self.quiet = total, quiet
        self.console = Console(stderr=True)
        self.bar = None
        self.next_line = start + max(1, total // 10)
        if not quiet and self.console.is_terminal:
            self.bar = RichProgress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}"),
                TextColumn("{task.fields[extra]}"),
                TextColumn("{task.fields[speed]:.1f} ex/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.task = self.bar.add_task("train", total=total, completed=start, loss=float("nan"), speed=0.0, extra="")
            self.bar.start()

    def update(self, step: int, loss: float, speed: float, metrics: dict[str, float] | None = None) -> None:
        """The loss and a method's own training metrics (e.g. reward_margin), averaged since the last log line."""
        extra = "  ".join(f"{k} {v:.4f}" for k, v in (metrics or {}).items())
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=loss, speed=speed, extra=extra)
        elif not self.quiet and (step >= self.next_line or step == self.total):
            self.next_line = step + max(1, self.total // 10)
            line = f"train step {step}/{self.total}  loss {loss:.4f}  " + (f"{extra}  " if extra else "")
            print(f"{line}{speed:.1f} ex/s", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text) if self.bar is not None else print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
