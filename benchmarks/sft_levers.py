"""What each speed lever of causal-LM SFT gives, one at a time, and how speed and memory scale with sequence length,
on the work of sft_speed.py: smollm2-135m-instruct, LoRA r16 alpha 32 on all linear layers, DialogSum dialogues.

Each variant runs in a process of its own: 2 warm-up steps, then `--steps` timed ones (forward, backward, clipping,
AdamW); tokens/s counts non-padding input tokens, peak RSS is the process's high-water mark.
Levers (LoRA, batches of 8 dialogues grouped by length, max length 512): fp32 or bf16 autocast; the adapters'
dropout 0.05 with torch's nn.Dropout in peft's own layers (peft's default), with tunesmith's cheaper dropout (inside
the fused layers), or no dropout at all;
each batch run in parts of at most 2,048 or 1,024 tokens (train.batch_tokens: the same update, less activation
memory), also with the freed heap handed back to the OS after every step (malloc_trim); each LoRA layer as one
fused autograd step (models/fused_lora.py, the default) or as peft's own modules ("lora": "peft"); and, on the
fastest of those, the chunked loss at 4M logits (by default it engages past 16M); each part padded to a multiple of
64 tokens (shape buckets: fewer distinct shapes for oneDNN's kernel cache), also with one inter-op thread; SDPA
throughout instead of attention by length (models/attention.py, the default: plain matmuls for causal rows of up
to 512 tokens); the frozen base weights fp32 under autocast instead of held in bf16 (train/frozen.py, the default
under bf16, as the training loop does); parts of 1,024 tokens without dropout; parts of 1,536 tokens; and full
fine-tuning at the defaults. With --profile the timed steps run under torch.profiler (each op's share of the time,
each matmul shape's rate).
Scaling (LoRA and full fine-tuning, bf16 or --precision fp32, tunesmith's defaults): dialogues packed into rows of
256, 512, 1,024 and 2,048 tokens, 4,096 tokens a batch (16, 8, 4 and 2 rows), in parts of at most 1,024 tokens (a
2,048-token row is a part alone) as train.batch_tokens auto does on a CPU; beside each, tunesmith's memory estimate
for that config.

    .venv/bin/python benchmarks/sft_levers.py          # about 45 minutes on 2 cores
    .venv/bin/python benchmarks/sft_levers.py --variants 4 6 7 8 --no-scaling   # those levers only (VARIANTS' order)
    .venv/bin/python benchmarks/sft_levers.py --variants 7 17 --no-scaling --profile --steps 4 \
        --out benchmarks/results/sft_profile.json       # where a LoRA and a full step's time goes
    .venv/bin/python benchmarks/sft_levers.py --no-levers --steps 4 --out benchmarks/results/sft_scaling.json
    .venv/bin/python benchmarks/sft_levers.py --no-levers --steps 3 --precision fp32 --modes lora \
        --out benchmarks/results/sft_scaling_fp32.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from jobs import answer, run_job

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = [
    {"precision": "fp32", "dropout": "torch"},
    {"precision": "fp32", "dropout": "cheaper"},
    {"precision": "fp32", "dropout": "none"},
    {"precision": "bf16", "dropout": "torch"},
    {"precision": "bf16", "dropout": "cheaper"},
    {"precision": "bf16", "dropout": "none"},
    {"precision": "bf16", "dropout": "cheaper", "batch_tokens": 2048},
    {"precision": "bf16", "dropout": "cheaper", "batch_tokens": 1024},
    {"precision": "bf16", "dropout": "cheaper", "batch_tokens": 1024, "trim": True},
    {"precision": "bf16", "dropout": "cheaper", "batch_tokens": 2048, "lora": "peft"},
    {"precision": "bf16", "dropout": "cheaper", "batch_tokens": 1024, "lora": "peft"},
    {"precision": "bf16", "dropout": "cheaper", "batch_tokens": 1024, "bucket": 64},
    {"precision": "bf16", "dropout": "cheaper", "batch_tokens": 1024, "bucket": 64, "interop_threads": 1},
    {"precision": "bf16", "dropout": "cheaper", "batch_tokens": 1024, "attention": "sdpa"},
    {"precision": "bf16", "dropout": "cheaper", "batch_tokens": 1024, "held": False},
    {"precision": "bf16", "dropout": "none", "batch_tokens": 1024},
    {"precision": "bf16", "dropout": "cheaper", "batch_tokens": 1536},
    {"mode": "full", "precision": "bf16", "batch_tokens": 1024},  # full fine-tuning at the defaults, for --profile
]
MATMULS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm")


def bucketed(batch: dict, multiple: int, pad_id: int) -> dict:
    """The part right-padded to a multiple of `multiple` tokens: fewer distinct shapes for oneDNN to build kernels
    for, at the cost of computing the padding."""
    import torch.nn.functional as F

    from tunesmith.lm.tokens import IGNORE

    extra = -batch["input_ids"].shape[1] % multiple
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": IGNORE}
    return batch | {k: F.pad(batch[k], (0, extra), value=fill[k]) for k in fill}


def job(v: dict) -> dict:
    import torch

    if v.get("interop_threads"):
        torch.set_num_interop_threads(v["interop_threads"])
    from transformers import AutoTokenizer

    import tunesmith.models.build as build
    from tunesmith.config import LoraConfig
    from tunesmith.lm import logprobs
    from tunesmith.lm.tokens import Packed, Tokens
    from tunesmith.models import zoo
    from tunesmith.train.batches import order_batches, split_by_tokens
    from tunesmith.train.memory import release_freed_memory
    from tunesmith.train.optim import build_optimizer

    if v.get("dropout") == "torch":  # peft's own layers, whose dropout is nn.Dropout
        build.cheaper_dropout = lambda model: 0
    if v.get("lora") == "peft" or v.get("dropout") == "torch":
        build.fuse_lora = lambda model: 0
    if v.get("chunked"):
        logprobs.CHUNK_ELEMENTS = 4 * 2**20
    model_dir = zoo.resolve("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    length, batch_size = v.get("max_length", 512), v.get("batch", 8)
    rows = [json.loads(ln) for ln in Path(v["data"]).read_text().splitlines()]
    chats = [{"messages": [{"role": "user", "content": "Summarise this dialogue:\n" + r["dialogue"]},
                           {"role": "assistant", "content": r["summary"]}]} for r in rows]  # fmt: skip
    tokens = Tokens(tokenizer, chats, min(length, 512), "chat")
    data = Packed(tokens, length, 13) if v.get("packed") else tokens
    lora = None
    if v.get("mode", "lora") == "lora":
        lora = LoraConfig(r=16, alpha=32, dropout=0.0 if v.get("dropout") == "none" else 0.05, targets="all-linear")
    torch.manual_seed(13)
    model = build.build_causal_lm(model_dir, lora=lora).train()
    if v.get("attention") == "sdpa":
        getattr(model, "get_base_model", lambda: model)().set_attn_implementation("sdpa")
    if lora and v["precision"] == "bf16" and v.get("held", True):
        from tunesmith.train import frozen

        frozen.hold(model, torch.bfloat16, None)  # as the training loop does; nothing to put back here
    optimizer = build_optimizer(model, lr=2e-4 if lora else 2e-5, weight_decay=0.0)
    plan = order_batches(data.lengths, batch_size, 13, True)[: v["steps"] + 2]
    if len(plan) < v["steps"] + 2:
        raise SystemExit(f"{len(plan)} batches of {batch_size} x {length} tokens; {v['steps'] + 2} needed")
    done, start, prof = 0, None, None
    for step, idx in enumerate(plan):
        if step == 2:
            start, done = time.perf_counter(), 0
            if v.get("profile"):
                prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True)
                prof.__enter__()
        parts = [data.collate(p) for p in split_by_tokens(idx, data.lengths, v.get("batch_tokens") or 10**9)]
        if v.get("bucket"):  # unpacked rows only
            parts = [bucketed(b, v["bucket"], data.pad_id) for b in parts]
        n, step_loss = sum(b["n"] for b in parts), 0.0
        for batch in parts:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=v["precision"] == "bf16"):
                loss = logprobs.token_loss(model, batch) / n
            loss.backward()
            step_loss += float(loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if v.get("trim"):
            release_freed_memory()
        done += sum(b["tokens"] for b in parts)
    out = {"tokens_per_s": done / (time.perf_counter() - start), "loss_last": step_loss}
    if prof is not None:
        prof.__exit__(None, None, None)
        out["profile"] = op_profile(prof)
    return out


def op_profile(prof) -> dict:
    """Where the timed steps' CPU time went (torch.profiler, so the rates above are slowed by it): each op's share of
    all ops' self time (the top 20), and each matmul shape's share and rate. An autograd Function's own self time
    holds what it runs outside torch's ops: the fused LoRA layers' numpy dropout masks."""
    from collections import defaultdict

    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:20]
    by_shape: dict = defaultdict(lambda: [0, 0.0, 0.0])  # calls, seconds, flops
    for e in prof.events():
        if e.name in MATMULS and len(e.input_shapes) >= 2:
            x, w = e.input_shapes[1:3] if e.name.startswith("aten::addmm") else e.input_shapes[:2]  # past the bias
            got = by_shape[(e.name, x[-1], w[-1])]
            got[0], got[1] = got[0] + 1, got[1] + e.self_cpu_time_total / 1e6
            got[2] += 2 * x[-1] * w[-1] * (x[0] * x[1] if e.name == "aten::bmm" else x[0])
    matmuls = [{"op": op, "k": k, "n": n, "calls": c, "flops": f, "share": round(sec / total * 1e6, 4),
                "gflops": round(f / sec / 1e9, 1)}
               for (op, k, n), (c, sec, f) in sorted(by_shape.items(), key=lambda kv: -kv[1][1])]  # fmt: skip
    return {"self_cpu_share": {e.key: round(e.self_cpu_time_total / total, 4) for e in top}, "matmuls": matmuls[:25]}


def estimate_mb(v: dict) -> float:
    """tunesmith's own peak-memory estimate (train/footprint.py) for the variant's config."""
    from transformers import AutoConfig

    from tunesmith.config import config_from_dict
    from tunesmith.models import zoo
    from tunesmith.train import footprint

    raw = {"model": "smollm2-135m-instruct", "method": "sft", "data": {"train": v["data"]},
           "train": {"batch_size": v["batch"], "max_length": v["max_length"], "precision": v["precision"],
                     "batch_tokens": v.get("batch_tokens")}}  # fmt: skip
    if v["mode"] == "lora":
        raw["lora"] = {"r": 16, "alpha": 32}
    config = AutoConfig.from_pretrained(zoo.resolve("smollm2-135m-instruct"))
    return footprint.estimate(config_from_dict(raw), config).total_mb


def child(v: dict) -> dict:
    return run_job(__file__, v, f"variant {v}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sft_levers.json")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="holds dialogsum/")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--variants", type=int, nargs="+", help="indices into VARIANTS; default all, then the chunked loss")
    ap.add_argument("--no-scaling", action="store_true", help="skip the sequence-length scaling table")
    ap.add_argument("--profile", action="store_true", help="the levers' timed steps under torch.profiler")
    ap.add_argument("--no-levers", action="store_true", help="the scaling table only")
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="of the scaling table")
    ap.add_argument("--modes", nargs="+", choices=("lora", "full"), default=["lora", "full"], help="of the scaling")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return answer(a.child, job)
    data = a.data / "dialogsum" / "validation.jsonl"
    if not data.exists():
        raise SystemExit(f"missing {data}: this benchmark needs ../shared/data/dialogsum (or --data DIR)")
    results = []
    for v in [] if a.no_levers else [VARIANTS[i] for i in a.variants] if a.variants else VARIANTS:
        results.append(v | child(v | {"data": str(data), "steps": a.steps, "profile": a.profile}))
        print(results[-1], flush=True)
    if not a.variants and not a.no_levers:
        fastest = max(results, key=lambda r: r["tokens_per_s"])
        chunked = {k: fastest[k] for k in ("precision", "dropout")} | {"chunked": True}
        results.append(chunked | child(chunked | {"data": str(data), "steps": a.steps}))
        print(results[-1], flush=True)
    scaling = []
    for mode in () if a.no_scaling else a.modes:
        for length in (256, 512, 1024, 2048):
            v = {"mode": mode, "precision": a.precision, "max_length": length, "batch": 4096 // length, "packed": True}
            v["batch_tokens"] = 1024
            got = child(v | {"data": str(data), "steps": a.steps})
            scaling.append(v | got | {"estimated_peak_mb": round(estimate_mb(v | {"data": str(data)}))})
            print(scaling[-1], flush=True)
    out = {"machine": {"cores": os.cpu_count(), "loadavg_at_start": os.getloadavg()}, "steps": a.steps,
           "variants_run": [] if a.no_levers else a.variants or "all", "scaling_run": not a.no_scaling,
           "levers": results, "scaling": scaling}  # fmt: skip
    a.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
