"""The GPU path, run where a CUDA GPU is: tunesmith's classifier and LoRA SFT on CUDA in bf16 for a few hundred steps,
and TRL's SFTTrainer on the same SFT work, each in a process of its own; throughput, peak GPU memory and losses to
one JSON. Started by benchmarks/gpu_check.sh, which exits at once on a machine without CUDA.

The models are the bundled ones where they are installed (minilm-l6, smollm2-135m-instruct); a GPU machine that
cannot install them gets their architectures, tokenizers and chat template from benchmarks/gpu_models/ with
random weights: the same shapes, so the same speed and memory, but losses that mean only "it trains" (the JSON
says which). The data: the committed fixtures (SST-2 rows, DialogSum dialogues), repeated for the steps asked.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from jobs import answer, run_job

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "targets": "all-linear"}


def model_dir(alias: str, work: Path) -> tuple[str, bool]:
    """The bundled model's folder, or one with its architecture and random weights; and whether it is real."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from tunesmith.errors import TunesmithError
    from tunesmith.models import zoo

    try:
        return str(zoo.resolve(alias)), True
    except TunesmithError:
        pass
    src, out = ROOT / "benchmarks" / "gpu_models" / alias, work / alias
    config = AutoConfig.from_pretrained(src)
    torch.manual_seed(0)
    causal = any(a.endswith("ForCausalLM") for a in config.architectures)
    model = (AutoModelForCausalLM if causal else AutoModelForSequenceClassification).from_config(config)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return str(out), False


def train_job(job: dict) -> dict:
    """One tunesmith run on CUDA in bf16; its rate and the GPU's peak memory."""
    import torch
    import yaml

    from tunesmith import api

    work = Path(job["work"])
    model, real = model_dir(job["alias"], work / "models")
    cfg = {"name": f"gpu-{job['method']}", "model": model, "method": job["method"], "output_dir": str(work / "runs"),
           "data": job["data"] | {"dedup": {"exact": False, "near": False}, "on_error": "skip"},
           "train": {"max_steps": job["steps"], "batch_size": job["batch"], "lr": job["lr"], "precision": "bf16",
                     "device": "cuda", "max_length": job["max_length"], "log_every": 10, "epochs": 1000,
                     "checkpoint_every": 10_000, "seed": 13},
           "eval": {"baseline": False}} | job.get("extra", {})  # fmt: skip
    path = work / f"{job['method']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = api.train(path, quiet=True)
    ev = json.loads((run / "eval.json").read_text())
    logged = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if "loss" in r and "split" not in r]
    return {"real_weights": real, "train": ev["train"], "loss_first": losses[0], "loss_last": losses[-1],
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20}  # fmt: skip


def trl_job(job: dict) -> dict:
    """TRL's SFTTrainer on the same SFT rows, bf16 on CUDA."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    work = Path(job["work"])
    model, real = model_dir(job["alias"], work / "models")
    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = [json.loads(ln) for ln in Path(job["data"]["train"]).read_text().splitlines()]
    chats = [{"prompt": r["messages"][:1], "completion": r["messages"][1:]} for r in rows]
    from peft import LoraConfig

    args = SFTConfig(output_dir=str(work / "trl"), max_steps=job["steps"], per_device_train_batch_size=job["batch"],
                     learning_rate=job["lr"], bf16=True, logging_steps=10, save_strategy="no", report_to="none",
                     max_length=job["max_length"], seed=13)  # fmt: skip
    peft = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules="all-linear", task_type="CAUSAL_LM")  # fmt: skip
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    data = Dataset.from_list(chats)
    trainer = SFTTrainer(model=lm, args=args, train_dataset=data, processing_class=tokenizer, peft_config=peft)
    start = time.perf_counter()
    out = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"real_weights": real, "train_s": time.perf_counter() - start, "steps": out.global_step,
            "samples_per_s": out.metrics["train_samples_per_second"], "loss_first": losses[0],
            "loss_last": losses[-1], "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20}  # fmt: skip


def sft_rows(work: Path) -> Path:
    """The DialogSum fixture as chat rows: user asks for a summary of the dialogue, the assistant gives it."""
    rows = [json.loads(ln) for ln in (FIXTURES / "dialogsum_20.jsonl").read_text().splitlines()]
    chats = [{"messages": [{"role": "user", "content": "Summarise this dialogue:\n" + r["dialogue"]},
                           {"role": "assistant", "content": r["summary"]}]} for r in rows]  # fmt: skip
    path = work / "sft.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in chats))
    return path


def child(job: dict) -> dict:
    """One job in its own process (the GPU's peak memory is then its own); a failure is recorded, not fatal."""
    try:
        return run_job(__file__, job, job["side"])
    except SystemExit as err:
        return {"error": str(err)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_check.json")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return answer(a.child, lambda job: {"train": train_job, "trl": trl_job}[job["side"]](job))
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA GPU is visible to torch here; this check needs one (nothing ran)")
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    sft = {"train": str(sft_rows(work)), "test_fraction": 0.2, "val_fraction": 0}
    classify = {"train": str(FIXTURES / "sst2_train.tsv"), "test": str(FIXTURES / "sst2_dev.tsv"), "val_fraction": 0}
    base = {"work": str(work), "steps": a.steps}
    result = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
              "python": sys.version.split()[0], "steps": a.steps}  # fmt: skip
    result["classify"] = child(base | {"side": "train", "alias": "minilm-l6", "method": "classify", "data": classify,
                                       "batch": 32, "lr": 5e-5, "max_length": 128})  # fmt: skip
    lora = {"alias": "smollm2-135m-instruct", "data": sft, "batch": 8, "lr": 2e-4, "max_length": 512}
    result["sft_lora"] = child(base | lora | {"side": "train", "method": "sft", "extra": {"lora": LORA}})
    try:
        import trl

        result["trl_sft_lora"] = child(base | lora | {"side": "trl"}) | {"trl": trl.__version__}
    except ImportError:
        result["trl_sft_lora"] = {"error": "trl is not installed on this machine"}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
