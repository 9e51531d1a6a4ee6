"""Attention kernels on a CPU: one forward and backward of minilm-l6 (bf16 autocast, dropout 0, half the rows
padded by a quarter) with transformers' SDPA, its eager attention, and tunesmith's attention by length
(models/attention.py), at 128 x 24, 32 x 128 and 8 x 512 tokens; ms per step, 10 timed after 3 warm-up steps.

    .venv/bin/python benchmarks/attention_cpu.py        (about a minute)
"""

import json
import time

import torch

from tunesmith.models import zoo
from tunesmith.models.attention import NAME
from tunesmith.models.build import build_classifier


def ms_per_step(impl: str, rows: int, length: int) -> float:
    torch.manual_seed(0)
    model = build_classifier(zoo.resolve("minilm-l6"), ["0", "1"], dropout=0.0).train()
    model.set_attn_implementation(impl)
    ids = torch.randint(1000, 20000, (rows, length))
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[rows // 2 :, length * 3 // 4 :] = 0

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(input_ids=ids, attention_mask=mask).logits.float().sum().backward()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(10):
        step()
    return round((time.perf_counter() - start) * 100, 1)


if __name__ == "__main__":
    shapes = ((128, 24), (32, 128), (8, 512))
    out = {impl: {f"{r}x{t}": ms_per_step(impl, r, t) for r, t in shapes} for impl in ("sdpa", "eager", NAME)}
    print(json.dumps(out, indent=1))
