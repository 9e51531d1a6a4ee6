"""Matplotlib figures as base64 PNGs, embedded in the report so it is one self-contained file."""

from __future__ import annotations

import base64
import io

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def loss_curves(metrics: list[dict], curve: tuple[str, ...] = ()) -> str | None:
    """Train (and validation) loss, with the first of the method's `curve` scores on a second axis: from
    validation, or else from the training steps (an RL method's reward curve)."""
    train = [m for m in metrics if "loss" in m and "split" not in m]
    val = [m for m in metrics if m.get("split") == "val"]
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.plot([m["step"] for m in train], [m["loss"] for m in train], label="train loss", lw=1.4)
    if val and "loss" in val[0]:
        ax.plot([m["step"] for m in val], [m["loss"] for m in val], "o-", label="val loss", lw=1.4)
    for rows, who, style in ((val, "val", "s--"), (train, "train", "-")):
        key = next((k for k in curve if rows and k in rows[0]), None)
        if key:
            ax2 = ax.twinx()
            ax2.plot([m["step"] for m in rows], [m[key] for m in rows], style, color="tab:green", label=f"{who} {key}")
            ax2.set_ylabel(f"{who} {key}")
            ax2.legend(loc="center right")
            break
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    return _png(fig)


def confusion(matrix: list[list[int]], labels: list[str]) -> str:
    n = len(labels)
    size = min(12, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(
        range(n), labels, rotation=60 if n > 4 else 0, ha="right" if n > 4 else "center", fontsize=8 if n > 12 else 10
    )
    ax.set_yticks(range(n), labels, fontsize=8 if n > 12 else 10)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        peak = max(max(r) for r in matrix) or 1
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color="white" if v > peak / 2 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _png(fig)


def task_matrix(matrix: list[list[float | None]], tasks: list[str], metric: str) -> str:
    """Continual learning: the score (accuracy, or a causal LM's test loss) on task j (column) after training on
    task i (row); below the diagonal is what was kept of the earlier tasks."""
    n = len(tasks)
    grid = np.full((n, n), np.nan)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            grid[i, j] = np.nan if v is None else v
    fig, ax = plt.subplots(figsize=(2.8 + 0.9 * n, 2.2 + 0.8 * n))
    loss = metric == "loss"  # lower is better: the colours run the other way
    im = ax.imshow(grid, cmap="viridis_r" if loss else "viridis", vmin=None if loss else 0, vmax=None if loss else 1)
    short = [t if len(t) <= 18 else t[:17] + "…" for t in tasks]
    ax.set_xticks(range(n), short, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(n), [f"after {t}" for t in short], fontsize=8)
    ax.set_xlabel(f"{metric} on the test rows of")
    for i in range(n):
        for j in range(n):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=9,
                        color="black" if im.norm(grid[i, j]) > 0.6 else "white")  # fmt: skip
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _png(fig)


def reliability_diagram(curves: dict[str, list[dict]]) -> str:
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], ":", color="gray", label="perfectly calibrated")
    for name, bins in curves.items():
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", label=name)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def length_histograms(text_chars: dict) -> str | None:
    stats = {k: v for k, v in text_chars.items() if v}
    if not stats:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.0))
    for name, s in stats.items():
        h = s["histogram"]
        xs = [i * h["bin_width"] for i in range(len(h["counts"]))]
        ax.step(xs, h["counts"], where="post", label=name)
    ax.set_xlabel("text length (characters)")
    ax.set_ylabel("rows")
    ax.legend()
    ax.grid(alpha=0.3)
    return _png(fig)


def before_after(base: dict, tuned: dict, panels: tuple[tuple[str, tuple[str, ...]], ...]) -> str | None:
    """Bars of the base and the tuned model's scores side by side, one panel per (title, keys) the method
    declares, so that scores of different scales stay apart."""
    panels = [(title, [k for k in keys if k in tuned and k in base]) for title, keys in panels]
    panels = [(t, keys) for t, keys in panels if keys]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        at = range(len(keys))
        for shift, who, scores in ((-0.2, "base", base), (0.2, "tuned", tuned)):
            bars = ax.bar([x + shift for x in at], [scores[k] for k in keys], width=0.4, label=who)
            ax.bar_label(bars, fmt="%.3g", fontsize=8)
        ax.set_xticks(list(at), [k.replace("_", " ") for k in keys], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    return _png(fig)
