"""The worked preference/RL examples of examples/, run as a user runs them (`tunesmith train examples/<config>`),
with their figures gathered into results/preference.json under "examples" (beside the TRL comparison of
benchmarks/preference.py, which this leaves as it is).

    .venv/bin/python benchmarks/preference_examples.py                 # all three, one after another
    .venv/bin/python benchmarks/preference_examples.py --only dialogsum_grpo
    .venv/bin/python benchmarks/preference_examples.py --runs dialogsum_grpo=RUN_DIR   # figures of finished runs

- hh_rlhf_dpo (examples/hh_rlhf_dpo.yaml): held-out preference accuracy, tuned against untuned (~20 min here);
- arithmetic_grpo (examples/arithmetic/grpo.yaml): exact-answer accuracy and answer format of greedy answers to
  200 held-out problems, tuned against untuned (~25 min);
- dialogsum_grpo (examples/dialogsum_grpo.yaml): each reward's mean over greedy summaries of 100 held-out test
  dialogues, ROUGE-L against the references among them, tuned against untuned (~17 min).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "preference.json"
EXAMPLES = {
    "hh_rlhf_dpo": "examples/hh_rlhf_dpo.yaml",
    "arithmetic_grpo": "examples/arithmetic/grpo.yaml",
    "dialogsum_grpo": "examples/dialogsum_grpo.yaml",
}
NEEDS = {"hh_rlhf_dpo": "hh_rlhf", "dialogsum_grpo": "dialogsum"}  # arithmetic's problems ship in examples/


def figures(run_dir: Path) -> dict:
    """What eval.json says of the run: every number of tuned and untuned, and how it trained."""
    report = json.loads((run_dir / "eval.json").read_text())

    def numbers(side: dict) -> dict:
        return {k: v for k, v in side.items() if isinstance(v, int | float) and not isinstance(v, bool)}

    return {
        "run": str(run_dir),
        "tuned": numbers(report.get("tuned", {})),
        "untuned": numbers(report.get("baseline", {})),
        "train": numbers(report.get("train", {})) | {"precision": report.get("train", {}).get("precision")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=list(EXAMPLES), default=list(EXAMPLES))
    ap.add_argument("--runs", nargs="+", default=[], metavar="NAME=RUN_DIR", help="gather finished runs instead")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    runs = dict(r.split("=", 1) for r in a.runs)
    unknown = sorted(set(runs) - set(EXAMPLES))
    if unknown:
        sys.exit(f"--runs: unknown example {', '.join(unknown)}; known: {', '.join(EXAMPLES)}")
    names = list(runs) or a.only
    to_run = [n for n in names if n not in runs]
    missing = [str(a.data / NEEDS[n]) for n in to_run if n in NEEDS and not (a.data / NEEDS[n]).is_dir()]
    if missing:
        sys.exit(f"missing data: {', '.join(missing)} (the examples read ../shared/data)")
    out = json.loads(a.out.read_text()) if a.out.is_file() else {}
    gathered = out.setdefault("examples", {})
    for name in names:
        if name in runs:
            run_dir = Path(runs[name]).resolve()
        else:
            from tunesmith import api

            run_dir = api.train(str(ROOT / EXAMPLES[name]))
        gathered[name] = figures(run_dir) | {
            "command": f"tunesmith train {EXAMPLES[name]}",
            "machine": platform.processor() or platform.machine(),
            "gathered": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        a.out.write_text(json.dumps(out, indent=2) + "\n")
        print(json.dumps({name: gathered[name]}, indent=2))


if __name__ == "__main__":
    main()
