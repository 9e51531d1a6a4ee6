"""What autograd keeps in one forward pass of smollm2-135m-instruct LoRA SFT (r16 on all linear layers, bf16
autocast): the bytes of the tensors saved for backward, by dtype and last dimension, for one batch of DialogSum
dialogues rendered as chat (the first --rows that fit in 512 tokens). Where activation memory goes, and so which
lever can cut it (benchmarks/results/activations.json).

    .venv/bin/python benchmarks/activations.py [--rows 8] [--dropout 0.05]     # under a minute
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="holds dialogsum/")
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "activations.json")
    a = ap.parse_args()
    source = a.data / "dialogsum" / "validation.jsonl"
    if not source.exists():
        raise SystemExit(f"missing {source}: this benchmark needs ../shared/data/dialogsum (or --data DIR)")
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from tunesmith.config import LoraConfig
    from tunesmith.lm.logprobs import token_loss
    from tunesmith.lm.tokens import Tokens
    from tunesmith.models import zoo
    from tunesmith.models.build import build_causal_lm

    model_dir = zoo.resolve("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for line in source.read_text().splitlines()[: 4 * a.rows]:
        r = json.loads(line)
        rows.append({"messages": [{"role": "user", "content": "Summarise this dialogue:\n" + r["dialogue"]},
                                  {"role": "assistant", "content": r["summary"]}]})  # fmt: skip
    tokens = Tokens(tokenizer, rows, 512, "chat")
    batch = tokens.collate(np.arange(min(a.rows, len(tokens))))
    model = build_causal_lm(model_dir, lora=LoraConfig(r=16, alpha=32, dropout=a.dropout)).train()
    seen: dict[int, int] = {}
    by = collections.Counter()

    def pack(t):
        if isinstance(t, torch.Tensor) and not isinstance(t, torch.nn.Parameter) and t.numel() > 1000:
            key = t.untyped_storage().data_ptr()
            if key not in seen:
                seen[key] = t.untyped_storage().nbytes()
                by[f"{str(t.dtype).removeprefix('torch.')} x{t.shape[-1]}"] += seen[key]
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        token_loss(model, batch)
    padded = batch["input_ids"].numel()
    layers = model.config.num_hidden_layers
    out = {"rows": int(batch["input_ids"].shape[0]), "padded_tokens": padded, "tokens": batch["tokens"],
           "lora_dropout": a.dropout, "saved_mb": sum(seen.values()) / 2**20,
           "kb_per_padded_token_and_layer": sum(seen.values()) / padded / layers / 1024,
           "by_dtype_and_width_mb": {k: round(v / 2**20, 1) for k, v in by.most_common()}}  # fmt: skip
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
