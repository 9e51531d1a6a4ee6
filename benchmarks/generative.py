"""Generative fine-tuning, measured: DialogSum summaries (ROUGE of base vs tuned on the test set's three
references) and domain adaptation on medical abstracts (domain and general-text perplexity before and after).

    python benchmarks/generative.py                       # full runs (hours on 2 CPU cores), writes results/generative.json
    python benchmarks/generative.py --quick --out /tmp/g.json   # a few rows of each, to check the pipeline

DialogSum: smollm2-135m-instruct + LoRA fine-tuned with `method: sft` on the validation dialogues (the prompt is
built by a template), then base and tuned models summarise the test dialogues greedily; ROUGE-1/2/L take the best
of the three references. Domain: `method: pretrain` on the train documents of medical_abstracts (256-token chunks),
perplexity on the held-out documents (test split) and on WikiText-2 (general text) before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "data"
MODEL = "smollm2-135m-instruct"
TEMPLATE = "Summarise this dialogue:\n{dialogue}"


def need(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        sys.exit(f"data not found: {', '.join(missing)}. Pass the folder holding dialogsum/, medical_abstracts/ and "
                 f"general_text/ (../shared/data) with --data.")


def dialogsum(data: Path, work: Path, args) -> dict:
    from tunesmith import api, zoo
    from tunesmith.eval.generation import text_metrics
    from tunesmith.methods import sft

    dev, test = data / "dialogsum" / "validation.jsonl", data / "dialogsum" / "test.jsonl"
    need(dev, test)
    tests = [json.loads(line) for line in test.read_text(encoding="utf-8").splitlines()][: args.test_rows]
    config = {"name": "dialogsum", "model": MODEL, "method": "sft", "output_dir": str(work / "runs"),
              "data": {"train": str(dev), "response": "summary", "prompt_template": TEMPLATE, "max_rows": args.train_rows,
                       "val_fraction": 0.05, "test_fraction": 0},
              "lora": {"r": 16, "alpha": 32, "targets": "all-linear"},
              "train": {"epochs": args.epochs, "batch_size": 4, "lr": 2e-4, "max_length": 768, "checkpoint_every": 1000}}
    started = time.perf_counter()
    run = api.train(config, quiet=True)
    train_s = time.perf_counter() - started
    conversations = [[{"role": "user", "content": TEMPLATE.format(dialogue=r["dialogue"])}] for r in tests]
    references = [[r[k] for k in ("summary1", "summary2", "summary3") if r.get(k)] for r in tests]
    tuned_model, tokenizer = sft.load(run / "model")
    base_model, _ = sft.load(zoo.resolve(MODEL))
    out = {"train_rows": json.loads((run / "eval.json").read_text())["data"]["train"], "test_rows": len(tests),
           "train_seconds": round(train_s, 1), "run": str(run)}
    for who, model in (("base", base_model), ("tuned", tuned_model)):
        preds = sft.replies(model, tokenizer, conversations, max_new_tokens=args.max_new_tokens)
        scores = text_metrics(preds, references)
        out |= {f"{who}_{k}": round(v, 2) for k, v in scores.items()}
        out[f"{who}_samples"] = [{"reply": p, "reference": r[0]} for p, r in list(zip(preds, references))[:3]]
    return out


def domain(data: Path, work: Path, args) -> dict:
    from tunesmith import api

    abstracts, general = data / "medical_abstracts" / "abstracts.csv", data / "general_text" / "wikitext2_raw_test.txt"
    need(abstracts, general)
    config = {"name": "medical", "model": MODEL, "method": "pretrain", "output_dir": str(work / "runs"),
              "data": {"train": str(abstracts), "shape": "text", "text": "medical_abstract", "split_column": "split",
                       "max_rows": args.domain_rows, "chunk_tokens": 256, "chunk_overlap": 32, "val_fraction": 0.05},
              "train": {"epochs": args.epochs, "batch_size": 8, "lr": 5e-5, "max_length": 256, "checkpoint_every": 1000},
              "eval": {"general_text": str(general), "general_tokens": args.general_tokens}}
    run = api.train(config, quiet=True)
    ev = json.loads((run / "eval.json").read_text())
    return {"domain_ppl_before": round(ev["baseline"]["perplexity"], 3), "domain_ppl_after": round(ev["tuned"]["perplexity"], 3),
            "general_ppl_before": round(ev["baseline"]["general_perplexity"], 3),
            "general_ppl_after": round(ev["tuned"]["general_perplexity"], 3), "test_chunks": ev["test_rows"],
            "train": ev["data"]["train"], "train_seconds": ev["train"]["seconds"], "run": str(run)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--quick", action="store_true", help="a few rows of each part, to check the pipeline")
    p.add_argument("--only", choices=["dialogsum", "domain"])
    p.add_argument("--out", type=Path, default=HERE / "results" / "generative.json")
    args = p.parse_args()
    args.epochs = 1
    args.train_rows, args.test_rows, args.max_new_tokens = (12, 4, 40) if args.quick else (None, None, 96)
    args.domain_rows, args.general_tokens = (40, 2000) if args.quick else (None, 20000)
    result = {"benchmark": "generative", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "quick": args.quick, "model": MODEL,
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "loadavg_at_start": os.getloadavg()}}
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "dialogsum"):
            result["dialogsum"] = dialogsum(args.data, Path(tmp), args)
        if args.only in (None, "domain"):
            result["domain"] = domain(args.data, Path(tmp), args)
    for part in ("dialogsum", "domain"):
        result.get(part, {}).pop("run", None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k in ("dialogsum", "domain")}, indent=2, ensure_ascii=False)[:3000])


if __name__ == "__main__":
    main()
