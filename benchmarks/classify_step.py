"""Where a minilm-l6 classification step goes on this CPU: collate, forward, backward, clipping, the AdamW step
and zero_grad, in ms per step, at batches of 32 and 128 random SST-2 train rows (bf16 autocast, as tunesmith picks
on a CPU with native bf16), 20 timed steps after 5 warm-up steps.

clip_flat is the lever of a flat gradient buffer (issue 19): the same clipping when every gradient is a view of one
buffer, so that the norm is one reduction instead of one per tensor (the buffer is filled untimed, as a real one
would be by the backward itself).

    .venv/bin/python benchmarks/classify_step.py        (a minute; needs ../shared/data/sst2)
Result: benchmarks/results/classify_step.json
"""

import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from tunesmith.data.prepared import Split
from tunesmith.infer.classifier import Encoded
from tunesmith.models import zoo
from tunesmith.models.build import build_classifier
from tunesmith.train.optim import build_optimizer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "train.tsv"
if not DATA.is_file():
    sys.exit(f"SST-2 not found: expected {DATA}")
with DATA.open(encoding="utf-8") as f:
    rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:8000]
folder = zoo.resolve("minilm-l6")
tok = AutoTokenizer.from_pretrained(folder)
enc = Encoded(tok, Split([r["sentence"] for r in rows], [r["label"] for r in rows]), ["0", "1"], 128)
torch.manual_seed(0)
model = build_classifier(folder, ["0", "1"]).train()
opt = build_optimizer(model, lr=5e-5, weight_decay=0.01)
rng = np.random.default_rng(0)
out = {}
for bs in (32, 128):
    phases = {"collate": 0, "forward": 0, "backward": 0, "clip": 0, "clip_flat": 0, "optimizer": 0, "zero_grad": 0}
    n = 0
    toks = 0
    for step in range(25):
        idx = rng.choice(len(enc), bs, replace=False)
        t = time.perf_counter()
        b = enc.collate(idx)
        phases["collate"] += time.perf_counter() - t if step >= 5 else 0
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            loss = F.cross_entropy(logits.float(), b["labels"])
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        t3 = time.perf_counter()
        flat = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
        tf = time.perf_counter()
        flat.mul_(torch.clamp(1.0 / (flat.norm() + 1e-6), max=1.0))
        phases["clip_flat"] += time.perf_counter() - tf if step >= 5 else 0
        t3b = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        t5 = time.perf_counter()
        if step >= 5:
            n += 1
            toks += int(b["attention_mask"].numel())
            for k, v in zip(
                ("forward", "backward", "clip", "optimizer", "zero_grad"),
                (t1 - t0, t2 - t1, t3 - t2, t4 - t3b, t5 - t4),
            ):
                phases[k] += v
    out[bs] = {k: round(1000 * v / n, 1) for k, v in phases.items()} | {"padded_tokens_per_step": toks // n}
emb = model.base_model.embeddings.word_embeddings.weight
out = {"ms_per_step": out, "params": sum(p.numel() for p in model.parameters()), "word_embedding_params": emb.numel(),
       "torch_threads": torch.get_num_threads()}  # fmt: skip
path = Path(__file__).resolve().parent / "results" / "classify_step.json"
path.write_text(json.dumps(out, indent=2) + "\n")
print(json.dumps(out, indent=1))
