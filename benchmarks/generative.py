"""Generative fine-tuning, measured: the three worked examples of examples/, run as a user runs them
(`tunesmith train examples/<name>.yaml`), with their figures gathered into results/generative.json.

    python benchmarks/generative.py                       # all three (about 2.5 h on 2 CPU cores)
    python benchmarks/generative.py --only domain         # one of them: dialogsum, assistant, domain
    python benchmarks/generative.py --quick --out /tmp/g.json   # a few rows of each, to check the pipeline
    python benchmarks/generative.py --runs dialogsum=RUN_DIR domain=RUN_DIR   # figures of finished CLI runs

- dialogsum (examples/dialogsum_sft.yaml): smollm2-135m-instruct + LoRA, sft on DialogSum validation; base and
  tuned greedy summaries of test dialogues, ROUGE-1/2/L and BLEU against test's three references.
- assistant (examples/oasst_assistant.yaml): chat sft on OpenAssistant conversations; held-out reply perplexity
  before and after, and sampled replies.
- domain (examples/medical_pretrain.yaml): continued pretraining on medical abstracts; held-out domain perplexity
  and WikiText-2 (general text) perplexity before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLES = {"dialogsum": "dialogsum_sft.yaml", "assistant": "oasst_assistant.yaml", "domain": "medical_pretrain.yaml"}
QUICK = {
    "dialogsum": ["data.max_rows=16", "eval.generate=4", "eval.max_new_tokens=32", "train.max_length=512"],
    "assistant": [
        "data.max_rows=12",
        "eval.generate=2",
        "eval.max_new_tokens=32",
        "train.epochs=1",
        "train.max_length=512",
    ],
    "domain": ["data.max_rows=40", "eval.general_tokens=2000"],
}


def config(name: str, overrides: list[str]):
    """The example's config; a clear exit when its data (../shared/data beside the repository) is missing."""
    from tunesmith.config import load_config

    cfg = load_config(HERE.parent / "examples" / EXAMPLES[name], overrides)
    missing = [
        p for p in (cfg.data.train, cfg.data.val, cfg.data.test, cfg.eval.general_text) if p and not Path(p).exists()
    ]
    if missing:
        sys.exit(
            f"{name}: data not found: {', '.join(missing)}. The examples read ../shared/data beside this repository."
        )
    return cfg


def figures(name: str, run: Path) -> dict:
    """What the issue asks to see of each example, from the run's eval.json."""
    ev = json.loads((run / "eval.json").read_text())
    base, tuned = ev["baseline"], ev["tuned"]
    out = {
        "train": ev["data"]["train"],
        "test_rows": ev["test_rows"],
        "train_seconds": ev["train"]["seconds"],
        "steps": ev["train"]["steps"],
        "perplexity_before": round(base["perplexity"], 3),
        "perplexity_after": round(tuned["perplexity"], 3),
    }
    if name == "dialogsum":
        for who, scores in (("base", base), ("tuned", tuned)):
            out |= {f"{who}_{k}": round(scores[k], 2) for k in ("rouge1", "rouge2", "rougeL", "bleu")}
    if name == "domain":
        out = {
            "domain_ppl_before": out.pop("perplexity_before"),
            "domain_ppl_after": out.pop("perplexity_after"),
            "general_ppl_before": round(base["general_perplexity"], 3),
            "general_ppl_after": round(tuned["general_perplexity"], 3),
        } | out
    if "samples" in tuned:
        out["samples"] = [
            {"prompt": t["prompt"][-300:], "base": b["reply"], "tuned": t["reply"], "reference": t["reference"]}
            for b, t in zip(base["samples"][:3], tuned["samples"][:3])
        ]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few rows of each example, to check the pipeline")
    p.add_argument("--only", choices=list(EXAMPLES))
    p.add_argument("--runs", nargs="+", default=[], metavar="NAME=RUN_DIR", help="gather figures of finished runs")
    p.add_argument("--out", type=Path, default=HERE / "results" / "generative.json")
    args = p.parse_args()
    from tunesmith import api

    given = dict(r.split("=", 1) for r in args.runs)
    if set(given) - set(EXAMPLES):
        sys.exit(f"--runs: unknown example {sorted(set(given) - set(EXAMPLES))}; known: {', '.join(EXAMPLES)}")
    names = list(given) if given else [args.only] if args.only else list(EXAMPLES)
    result = {
        "benchmark": "generative",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "loadavg_at_start": os.getloadavg(),
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            if name in given:
                run = Path(given[name])
                result[name] = {"command": f"tunesmith train examples/{EXAMPLES[name]}"} | figures(name, run)
                continue
            overrides = (QUICK[name] if args.quick else []) + [f"output_dir={tmp}"]
            run = api.train(config(name, overrides), quiet=True)
            result[name] = {"command": f"tunesmith train examples/{EXAMPLES[name]}"} | figures(name, run)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({k: {f: v for f, v in result[k].items() if f != "samples"} for k in names}, indent=2))


if __name__ == "__main__":
    main()
