"""The page of a hyperparameter search (studies/<study>/report.html): its trials, the optimisation history, the
validation curves that pruning acted on, Optuna's parameter importances, and the best trial's test scores beside the
default config's."""

from __future__ import annotations

from pathlib import Path

import jinja2

from tunesmith.files import atomic_write
from tunesmith.report.plots import _png, plt

PAGE = jinja2.Template((Path(__file__).parent / "study.html.j2").read_text())


def write_study_report(folder: Path, result: dict) -> Path:
    keys = list(dict.fromkeys(k for t in result["trials"] for k in t["params"]))
    figures = [
        ("Optimisation history", _history(result)),
        ("Validation curves (what pruning compared)", _curves(result)),
        ("Parameter importances (Optuna, PED-ANOVA)", _importances(result["importances"])),
    ]
    atomic_write(folder / "report.html", PAGE.render(r=result, figures=figures, keys=keys))
    return folder / "report.html"


def _history(result: dict) -> str | None:
    done = [t for t in result["trials"] if t["value"] is not None]
    if not done:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    ax.plot([t["number"] for t in done], [t["value"] for t in done], "o", label="finished trial")
    pick = max if result["direction"] == "maximize" else min
    best, line = None, []
    for t in done:
        best = t["value"] if best is None else pick(best, t["value"])
        line.append(best)
    ax.step([t["number"] for t in done], line, where="post", label="best so far")
    pruned = [t for t in result["trials"] if t["state"] == "pruned" and t["validations"]]
    ax.plot([t["number"] for t in pruned], [t["validations"][-1] for t in pruned], "x", label="pruned (last value)")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {result['metric']}")
    ax.legend()
    return _png(fig)


def _curves(result: dict) -> str | None:
    rows = [t for t in result["trials"] if t["validations"]]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for t in rows:
        style = "--" if t["state"] == "pruned" else "-"
        ax.plot(range(1, len(t["validations"]) + 1), t["validations"], style, marker=".", lw=1, alpha=0.8)
    ax.set_xlabel("validation")
    ax.set_ylabel(result["metric"])
    return _png(fig)


def _importances(importances: dict[str, float]) -> str | None:
    if not importances:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 0.5 + 0.4 * len(importances)))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance")
    return _png(fig)
