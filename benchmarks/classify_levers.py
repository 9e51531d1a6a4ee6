"""The classifier recipe's speed levers, one process each: minilm-l6 on 8,000 SST-2 train rows, bf16 autocast,
batches grouped by length, 60 timed optimiser steps (forward, backward, clipping, AdamW) after 5 warm-up ones;
examples/s and the process's peak RSS. Levers: the model's dropout (0.1) or none; transformers' SDPA or eager
attention, or tunesmith's attention by length; batch 32 or 128, in parts of at most N tokens; the input token
embeddings trained or frozen.

    .venv/bin/python benchmarks/classify_levers.py                  (about 5 minutes; needs ../shared/data/sst2)
    .venv/bin/python benchmarks/classify_levers.py --variants 4 8   (those only: indices into VARIANTS)
"""

import argparse
import csv
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "train.tsv"
VARIANTS = [  # (dropout, attention, batch, part tokens, frozen embeddings)
    (None, "sdpa", 32, None, False),
    (None, "eager", 32, None, False),
    (0.0, "sdpa", 32, None, False),
    (0.0, "tunesmith_cpu", 32, None, False),
    (0.0, "tunesmith_cpu", 128, 1024, False),
    (0.0, "tunesmith_cpu", 128, 2048, False),
    (0.0, "tunesmith_cpu", 128, 4096, False),
    (0.0, "tunesmith_cpu", 128, None, False),
    (0.0, "tunesmith_cpu", 32, None, True),
    (0.0, "tunesmith_cpu", 128, 1024, True),
    (0.0, "tunesmith_cpu", 128, 512, True),
]


def run(dropout: float | None, attention: str, batch: int, part: int | None, frozen: bool) -> dict:
    import torch
    from transformers import AutoTokenizer

    from tunesmith.data.prepared import Split
    from tunesmith.infer.classifier import Encoded
    from tunesmith.models import zoo
    from tunesmith.models.build import build_classifier
    from tunesmith.train.batches import order_batches, split_by_tokens
    from tunesmith.train.optim import build_optimizer

    with DATA.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:8000]
    folder = zoo.resolve("minilm-l6")
    enc = Encoded(AutoTokenizer.from_pretrained(folder), Split([r["sentence"] for r in rows],
                  [r["label"] for r in rows]), ["0", "1"], 128)  # fmt: skip
    torch.manual_seed(0)
    model = build_classifier(folder, ["0", "1"], dropout=dropout).train()
    model.set_attn_implementation(attention)
    model.get_input_embeddings().weight.requires_grad_(not frozen)
    opt = build_optimizer(model, lr=5e-5, weight_decay=0.01)

    def step(idx) -> None:
        for rows_of_part in split_by_tokens(idx, enc.lengths, part or 10**9):
            b = enc.collate(rows_of_part)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            torch.nn.functional.cross_entropy(logits.float(), b["labels"], reduction="sum").div(len(idx)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    plan = order_batches(enc.lengths, batch, 0, True)
    for idx in plan[:5]:
        step(idx)
    done, start = 0, time.perf_counter()
    for idx in plan[5:65]:
        step(idx)
        done += len(idx)
    return {"examples_per_s": round(done / (time.perf_counter() - start), 1),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("["):  # a variant, in a process of its own
        print(json.dumps(run(*json.loads(sys.argv[1]))))
        sys.exit()
    if not DATA.is_file():
        sys.exit(f"missing {DATA}: this benchmark needs ../shared/data/sst2")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", type=int, nargs="+", help="indices into VARIANTS; default all")
    for v in [VARIANTS[i] for i in ap.parse_args().variants or range(len(VARIANTS))]:
        got = subprocess.run([sys.executable, __file__, json.dumps(v)], capture_output=True, text=True, check=True)
        keys = ("dropout", "attention", "batch", "part_tokens", "frozen_embeddings")
        print(json.dumps(dict(zip(keys, v)) | json.loads(got.stdout.strip().splitlines()[-1])), flush=True)
