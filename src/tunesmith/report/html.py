"""Render report.html from the run directory alone (eval.json, metrics.jsonl, data/data_report.json)."""

from __future__ import annotations

import json
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from tunesmith.eval.metrics import SCORES
from tunesmith.report import plots
from tunesmith.runs import atomic_write


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []


def write_report(run_dir: Path) -> Path:
    ev = json.loads((run_dir / "eval.json").read_text())
    data = json.loads((run_dir / "data" / "data_report.json").read_text())
    metrics = _read_jsonl(run_dir / "metrics.jsonl")
    figures = {"loss": plots.loss_curves(metrics), "lengths": plots.length_histograms(data.get("chars", {}))}
    if "perplexity" in ev.get("tuned", {}) and "baseline" in ev:
        figures["before_after"] = plots.before_after(ev["baseline"], ev["tuned"])
    if "confusion" in ev.get("tuned", {}):
        figures["confusion"] = plots.confusion(ev["tuned"]["confusion"], ev["labels"])
        curves = {
            "tuned": ev["tuned"]["reliability"],
            f"tuned, T={ev['temperature']:.2f}": ev["tuned"]["reliability_calibrated"],
        }
        if "baseline" in ev:
            curves["baseline"] = ev["baseline"]["reliability"]
        figures["reliability"] = plots.reliability_diagram(curves)
    env = Environment(loader=PackageLoader("tunesmith", "report"), autoescape=select_autoescape(["html", "j2"]))
    html = env.get_template("report.html.j2").render(
        run=run_dir.name, config=(run_dir / "config.yaml").read_text(), ev=ev, data=data, figures=figures, scores=SCORES
    )
    out = run_dir / "report.html"
    atomic_write(out, html)
    return out
