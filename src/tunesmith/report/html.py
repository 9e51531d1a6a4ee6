"""Render report.html from the run directory alone (eval.json, metrics.jsonl, data/data_report.json)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from jinja2 import Environment, PackageLoader, select_autoescape

from tunesmith import faults, methods
from tunesmith.files import atomic_write
from tunesmith.report import plots


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []


def _confusion(ev: dict, method) -> str:
    return plots.confusion(ev["tuned"]["confusion"], ev["labels"])


def _reliability(ev: dict, method) -> str:
    curves = {
        "tuned": ev["tuned"]["reliability"],
        f"tuned, T={ev['temperature']:.2f}": ev["tuned"]["reliability_calibrated"],
    }
    if "baseline" in ev:
        curves["baseline"] = ev["baseline"]["reliability"]
    return plots.reliability_diagram(curves)


def _before_after(ev: dict, method) -> str | None:
    return plots.before_after(ev["baseline"], ev["tuned"], method.panels) if "baseline" in ev else None


FIGURES = {"confusion": _confusion, "reliability": _reliability, "before_after": _before_after}  # Method.figures


def write_report(run_dir: Path) -> Path:
    """Every report has the training curves and the data; the method declares its scores and its figures."""
    ev = json.loads((run_dir / "eval.json").read_text())
    config = (run_dir / "config.yaml").read_text()
    method = methods.get(ev.get("method") or yaml.safe_load(config)["method"])
    data = json.loads((run_dir / "data" / "data_report.json").read_text())
    metrics = _read_jsonl(run_dir / "metrics.jsonl")
    figures = {
        "loss": plots.loss_curves(metrics, method.curve),
        "lengths": plots.length_histograms(data.get("chars", {})),
    }
    if "tuned" in ev:
        figures |= {name: FIGURES[name](ev, method) for name in method.figures}
    if ev.get("continual"):
        c = ev["continual"]
        figures["continual"] = plots.task_matrix(
            c["matrix"], [t["name"] for t in c["tasks"]], c.get("metric", "accuracy")
        )
    env = Environment(loader=PackageLoader("tunesmith", "report"), autoescape=select_autoescape(["html", "j2"]))
    exports = [json.loads(f.read_text()) for f in sorted(run_dir.glob("exports/*/export.json"))]
    audit = json.loads((run_dir / "audit.json").read_text()) if (run_dir / "audit.json").is_file() else None
    html = env.get_template("report.html.j2").render(
        run=run_dir.name,
        config=config,
        ev=ev,
        data=data,
        figures=figures,
        scores=method.scores,
        exports=exports,
        audit=audit,
    )
    out = run_dir / "report.html"
    faults.point("report")
    atomic_write(out, html)
    return out
