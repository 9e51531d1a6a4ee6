"""Where the loop is (saved in every checkpoint, so resume continues exactly) and what it hands back."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class LoopState:
    step: int = 0  # optimiser steps done
    epoch: int = 0
    batch: int = 0  # micro-batches of this epoch's plan done
    examples: int = 0
    tokens: int = 0  # input tokens computed (batches that count them: causal LMs)
    target_tokens: int = 0  # of those, the tokens that carry a loss
    train_seconds: float = 0.0
    eval_seconds: float = 0.0  # validation during training: not in train_seconds
    sync_seconds: float = 0.0  # summing gradients across processes (in train_seconds)
    precision: str = "fp32"
    best: float | None = None  # best value of the early-stopping metric
    best_metrics: dict | None = None  # the validation metrics of that evaluation, with its step
    bad_evals: int = 0  # evaluations since the best one
    last_eval: dict | None = None
    stopped_early: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FitResult:
    steps: int
    epochs_done: float
    examples: int
    train_seconds: float
    precision: str
    precision_reason: str
    device: str
    tokens: int = 0
    target_tokens: int = 0
    best: dict | None = None  # validation metrics of the restored best evaluation
    last_eval: dict | None = None
    stopped_early: bool = False
    eval_seconds: float = 0.0
    processes: int = 1
    sync_seconds: float = 0.0

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.train_seconds if self.train_seconds else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.train_seconds if self.train_seconds else 0.0

    def summary(self) -> dict:
        """eval.json's "train" section."""
        return {
            "steps": self.steps,
            "epochs": round(self.epochs_done, 3),
            "examples": self.examples,
            "seconds": round(self.train_seconds, 2),
            "eval_seconds": round(self.eval_seconds, 2),
            "examples_per_s": round(self.examples_per_s, 2),
            **({"tokens_per_s": round(self.tokens_per_s, 2)} if self.tokens else {}),
            "precision": self.precision,
            "precision_reason": self.precision_reason,
            "device": self.device,
            "stopped_early": self.stopped_early,
            "best_val": self.best,
            "last_val": self.last_eval,
            **(
                {"processes": self.processes, "sync_seconds": round(self.sync_seconds, 2)} if self.processes > 1 else {}
            ),
        }
