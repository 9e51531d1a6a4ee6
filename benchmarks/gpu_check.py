"""The GPU path, run where a CUDA GPU is: tunesmith's classifier, and its LoRA and full SFT beside TRL's SFTTrainer
on the same rows, in bf16 on CUDA for a few hundred steps, each job in a process of its own; throughput, peak GPU
memory and losses to one JSON; then the FSDP path (train.distributed.strategy fsdp) in one process. Started by
benchmarks/gpu_check.sh, which exits at once on a machine without CUDA.

The models are the bundled ones where they are installed (minilm-l6, smollm2-135m-instruct); a GPU machine that
cannot install them gets their architectures, tokenizers and chat template from benchmarks/gpu_models/ with
random weights: the same shapes, so the same speed and memory, but losses that mean only "it trains" (the JSON
says which). The data: the committed fixtures (SST-2 rows; the 20 DialogSum dialogues, repeated for the steps
asked, as sft_speed.py's chat rows). The SFT jobs are sft_speed.py's own (2 warm-up steps, then the timed ones).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jobs import answer, run_job, scratch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SFT = Path(__file__).with_name("sft_speed.py")  # its tunesmith, TRL, rows and matmul jobs run here on CUDA
PACKAGES = ("torch", "transformers", "tokenizers", "peft", "accelerate", "trl", "datasets", "pydantic")


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


def model_job(job: dict) -> dict:
    """The model's folder, and what this machine runs on (here, not in the parent, which never imports torch, so
    that no child starts from its high-water mark)."""
    import torch

    if job["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA GPU is visible to torch here; this check needs one (nothing ran)")
    folder, real = model_dir(job["alias"], Path(job["work"]) / "models")
    gpu = torch.cuda.get_device_name(0) if job["device"] == "cuda" else None
    return {"dir": folder, "real_weights": real, "gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda}


def train_job(job: dict) -> dict:
    """One tunesmith run on CUDA in bf16; its rate and the GPU's peak memory."""
    import yaml
    from sft_speed import gpu_peak

    from tunesmith import api

    work = Path(job["work"])
    model, real = model_dir(job["alias"], work / "models")
    cfg = {"name": f"gpu-{job['method']}", "model": model, "method": job["method"], "output_dir": str(work / "runs"),
           "data": job["data"] | {"dedup": {"exact": False, "near": False}, "on_error": "skip"},
           "train": {"max_steps": job["steps"], "batch_size": job["batch"], "lr": job["lr"], "precision": "bf16",
                     "device": job["device"], "max_length": job["max_length"], "log_every": 10, "epochs": 1000,
                     "checkpoint_every": job.get("checkpoint_every", 10_000), "seed": 13,
                     "distributed": {"strategy": job.get("strategy", "ddp")}},
           "eval": {"baseline": False}}  # fmt: skip
    path = work / f"{job['method']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = api.train(path, quiet=True)
    ev = json.loads((run / "eval.json").read_text())
    logged = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "loss" in r and "split" not in r]
    return {"real_weights": real, "train": ev["train"], "accuracy": ev["tuned"].get("accuracy"),
            "examples_per_s_after_first_log": _window_rate(steps), "loss_first": steps[0]["loss"],
            "loss_last": steps[-1]["loss"]} | gpu_peak()  # fmt: skip


def _window_rate(steps: list[dict]) -> float | None:
    """Examples per second from the first logged step to the last: without the first steps' CUDA start-up, which
    the run's cumulative examples_per_s includes."""
    first, last = steps[0], steps[-1]
    if len(steps) < 2 or last["train_s"] <= first["train_s"]:
        return None
    return (last["examples"] - first["examples"]) / (last["train_s"] - first["train_s"])


def sft_side_by_side(mode: str, base: dict, params: int, peak: float | None) -> dict:
    """tunesmith's sft and TRL's SFTTrainer on the same rows in bf16 on CUDA, TRL with gradient checkpointing
    off and on (its padding_free needs flash attention, which this check does not install); the faster TRL counts."""
    ours = child(base | {"side": "tunesmith", "mode": mode, "generate": 4 if mode == "lora" else 0}, SFT)
    trl = {f"gc_{gc}": child(base | {"side": "trl", "mode": mode, "bf16": True, "gc": gc, "padding_free": False}, SFT)
           for gc in (False, True)}  # fmt: skip
    out = {"tunesmith": ours, "trl": trl}
    timed = [t for t in trl.values() if "tokens_per_s" in t]
    if "tokens_per_s" in ours and timed:
        best = max(timed, key=lambda t: t["tokens_per_s"])
        out["speed_ratio"] = ours["tokens_per_s"] / best["tokens_per_s"]
        if "peak_gpu_mb" in ours and "peak_gpu_mb" in best:
            out["gpu_memory_ratio"] = ours["peak_gpu_mb"] / best["peak_gpu_mb"]
    if "tokens_per_s" in ours and peak:
        ours["mfu"] = (4 if mode == "lora" else 6) * params * ours["tokens_per_s"] / (peak * 1e9)
    return out


def child(job: dict, script: Path = Path(__file__)) -> dict:
    """One job of this script (or of sft_speed.py) in its own process, so the GPU's peak memory is its own; a
    failure is recorded, not fatal."""
    try:
        return run_job(script, job, job["side"])
    except SystemExit as err:
        return {"error": str(err)}


def matmul(shape: tuple[int, int, int], device: str) -> float | None:
    return child({"side": "matmul", "dtype": "bfloat16", "device": device, "shape": shape}, SFT).get("gflops")


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_check.json")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: a dry run of the script's plumbing
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return answer(a.child, lambda job: {"train": train_job, "model": model_job}[job["side"]](job))
    work = scratch("gpu-check-")
    classify = {"train": str(FIXTURES / "sst2_train.tsv"), "test": str(FIXTURES / "sst2_dev.tsv"), "val_fraction": 0}
    base = {"work": str(work), "steps": a.steps, "device": a.device}
    smollm = child({"side": "model", "work": str(work), "alias": "smollm2-135m-instruct", "device": a.device})
    if "error" in smollm and "no CUDA GPU" in smollm["error"]:
        raise SystemExit(smollm["error"])
    machine = {k: smollm.get(k) for k in ("gpu", "torch", "cuda")}
    result = machine | {"python": sys.version.split()[0], "versions": versions(), "steps": a.steps}
    a.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every part: a run cut short by its time limit keeps what it measured
        a.out.write_text(json.dumps(result, indent=2))

    result["classify"] = child(base | {"side": "train", "alias": "minilm-l6", "method": "classify", "data": classify,
                                       "batch": 32, "lr": 5e-5, "max_length": 128})  # fmt: skip
    save()
    square = (8192,) * 3 if a.device == "cuda" else (1024,) * 3  # the GPU's peak; a CPU dry run stays short
    shapes = {"mlp_4096x576x1536": (4096, 576, 1536), "square": square}
    result["matmul_bf16_gflops"] = {name: matmul(shape, a.device) for name, shape in shapes.items()}
    rows = {"error": "no model"} if "error" in smollm else child(
        {"side": "rows", "work": str(work), "model_dir": smollm["dir"], "n": a.steps * 8,
         "dialogsum": str(FIXTURES / "dialogsum_20.jsonl"), "repeat": True}, SFT)  # fmt: skip
    if "error" in rows:
        result["sft"] = {"error": f"{smollm.get('error') or rows['error']}: the SFT parts did not run"}
        save()
    else:
        test = work / "test.jsonl"
        test.write_text("".join(Path(rows["train"]).read_text().splitlines(keepends=True)[:4]))
        sft = base | {"model_dir": smollm["dir"], "train": rows["train"], "test": str(test)}
        peak = result["matmul_bf16_gflops"]["square"]
        result["sft"] = {"model_real_weights": smollm["real_weights"], "rows": a.steps * 8, "batch": 8,
                         "max_length": 512}  # fmt: skip
        for mode in ("lora", "full"):
            result["sft"][mode] = sft_side_by_side(mode, sft, rows["params"], peak)
            save()
    # FSDP2 (train.distributed.strategy fsdp) in one process, bf16: the sharded path's forward, backward, optimiser,
    # gathered checkpoint (every 20 steps) and final unshard on CUDA; a few steps each, last, so that a cut run keeps
    # the rest
    fsdp = base | {"side": "train", "strategy": "fsdp", "steps": min(a.steps, 60), "checkpoint_every": 20}
    result["fsdp"] = {}
    result["fsdp"]["classify"] = child(fsdp | {"alias": "minilm-l6", "method": "classify", "data": classify,
                                               "batch": 32, "lr": 5e-5, "max_length": 128})  # fmt: skip
    save()
    if "error" not in rows:
        result["fsdp"]["sft_full"] = child(fsdp | {"alias": "smollm2-135m-instruct", "method": "sft", "batch": 8,
                                                   "lr": 2e-5, "max_length": 512,
                                                   "data": {"train": rows["train"], "test": str(test)}})  # fmt: skip
        save()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
