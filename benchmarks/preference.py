"""tunesmith's dpo and grpo against TRL's DPOTrainer and GRPOTrainer, side by side in one run.

Same model (smollm2-135m-instruct, LoRA r16 alpha 32 dropout 0.05 on all linear layers), same rows, batch,
optimizer steps, learning rate, schedule (linear, no warm-up, no weight decay), clipping at 1.0 and seed on both
sides. DPO: beta 0.1, sigmoid loss, on hh-rlhf pairs whose conversations both fit in max_length (so neither side
truncates). GRPO: the problems and rewards of examples/arithmetic; groups of 8 completions, 16 completions
(2 prompts) per step, one update per sampling, temperature 0.7 with top-k 50 (tunesmith samples with the
transformers default), at most 48 new tokens, KL weight 0.04, clip 0.2, per-completion mean loss (TRL's
loss_type "grpo"), advantages normalised within the group.

Every job (data, each side's training, each scoring) is a child process, so that a side's peak RSS (ru_maxrss
from os.wait4) is its own: the parent never imports torch (a child starts with its parent's RSS high-water
mark). steps_per_s is optimizer steps over training time: the loop's train_seconds for tunesmith, TRL's
train_runtime (plus its trainer construction when it precomputes reference log-probs there). TRL is probed on a
few steps at each setting below, and its fastest runs the timed job; tunesmith runs with its own defaults (it
times bf16 against fp32 itself). Quality comes from one scorer for every model, the untuned one too: held-out
preference accuracy (the model's log-prob of the chosen reply above the rejected one's) for DPO; the mean reward
of greedy completions of held-out problems for GRPO.

    .venv/bin/pip install -e ".[bench]"    # TRL 1.16.0, beside tunesmith's pins (torch and transformers unchanged)
    .venv/bin/python benchmarks/preference.py                 # 27 minutes on 2 idle cores (1,598 s on 2026-12-03)
    .venv/bin/python benchmarks/preference.py --quick --out /tmp/pref.json   # a few minutes: checks the pipeline
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from jobs import TRL, answer, peer_versions, run_job, scratch

ROOT = Path(__file__).resolve().parents[1]
ARITH = ROOT / "examples" / "arithmetic"
MODEL = "smollm2-135m-instruct"
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
SEED = 13
REWARDS = ["exact_answer", "answer_format"]
GRPO = {"group_size": 8, "temperature": 0.7, "max_new_tokens": 48, "beta": 0.04}
# TRL's settings tried: its default (gradient checkpointing on), checkpointing off, bf16, and for DPO reference
# log-probs precomputed once (TRL's precompute_ref_log_probs) on top of the fastest of those.
PROBES = [{"bf16": False, "gc": True}, {"bf16": False, "gc": False}, {"bf16": True, "gc": False}]
EXTRA = {"dpo": {"precompute_ref": True}, "grpo": None}


# ---- the jobs, each run in a child process ----------------------------------------------------------------


def prepare_job(job: dict) -> dict:
    """Seeded hh-rlhf pairs through tunesmith's data stage, kept where both conversations fit in max_length."""
    from transformers import AutoTokenizer

    from tunesmith import api
    from tunesmith.data.prepared import read_rows
    from tunesmith.lm.tokens import reply_tokens
    from tunesmith.models import zoo

    work, n_train, n_test = Path(job["work"]), job["n_train"], job["n_test"]
    cfg = {"model": MODEL, "method": "dpo", "data": {"train": job["hh"], "sample": 8 * (n_train + n_test),
           "test_fraction": 0.25, "val_fraction": 0, "on_error": "skip"}}  # fmt: skip
    rows = read_rows(api.prepare_data(cfg, out=work / "prep"))
    tokenizer = AutoTokenizer.from_pretrained(zoo.resolve(MODEL))

    def fits(r: dict) -> bool:
        return not any(reply_tokens(tokenizer, r["prompt"], r[s], job["max_length"])[2] for s in ("chosen", "rejected"))

    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        kept = [r for r in rows[split] if fits(r)][:n]
        if len(kept) < n:
            raise SystemExit(f"only {len(kept)} {split} pairs of hh-rlhf fit in {job['max_length']} tokens; {n} asked")
        out[split] = str(_jsonl(work / f"dpo_{split}.jsonl", kept))
    return out


def tunesmith_job(job: dict) -> dict:
    """Train with tunesmith's own defaults on the job's rows; report the loop's own training time."""
    import yaml

    from tunesmith import api

    work = Path(job["work"])
    section = {"dpo": {"beta": 0.1}}
    if job["method"] == "grpo":
        rewards = [{"function": f"{ARITH / 'rewards.py'}:{n}"} for n in REWARDS]
        section = {"grpo": {"rewards": rewards, "eval_prompts": 4} | GRPO}
    cfg = {
        "name": f"bench-{job['method']}",
        "model": MODEL,
        "method": job["method"],
        "output_dir": str(work / "runs"),
        "data": {"train": job["train"], "test": job["probe_test"], "val_fraction": 0, "on_error": "skip",
                 "dedup": {"exact": False, "near": False}},
        "lora": LORA | {"targets": "all-linear"},
        "train": {"max_steps": job["steps"], "batch_size": job["batch"], "lr": job["lr"], "warmup": 0,
                  "weight_decay": 0.0, "max_length": job["max_length"], "seed": SEED, "log_every": 1},
        "eval": {"baseline": False},
    } | section  # fmt: skip
    path = work / f"{job['method']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = api.train(path, quiet=True)
    summary = json.loads((run / "eval.json").read_text())["train"]
    logged = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "loss" in r and "split" not in r]
    out = {"train_s": summary["seconds"], "steps": summary["steps"], "model": str(run / "model")}
    if job["method"] == "grpo":
        out["generate_s_per_step"] = sum(r["generate_s"] for r in steps) / len(steps)
        out["rollout_s_per_step"] = sum(r["rollout_s"] for r in steps) / len(steps)
    return out | {"precision": next(r["precision"] for r in logged if r.get("split") == "setup")}


def _peft():
    from peft import LoraConfig

    return LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules="all-linear", task_type="CAUSAL_LM")  # fmt: skip


def _as_text(items) -> list[str]:
    """TRL hands conversational prompts and completions as message lists; the reward functions take text."""
    return [c[-1]["content"] if isinstance(c, list) else c for c in items]


def _rewards_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("rewards", ARITH / "rewards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def trl_job(job: dict) -> dict:
    """Train with TRL at the job's setting; report TRL's own train_runtime."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.models import zoo

    model_dir = zoo.resolve(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    rows = _rows(Path(job["train"]))
    common = dict(
        output_dir=str(Path(job["work"]) / "trl"), max_steps=job["steps"], per_device_train_batch_size=job["batch"],
        learning_rate=job["lr"], lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        seed=SEED, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=job["bf16"],
        gradient_checkpointing=job["gc"], dataloader_num_workers=0,
    )  # fmt: skip
    built = time.perf_counter()
    if job["method"] == "dpo":
        from trl import DPOConfig, DPOTrainer

        reply = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
        data = Dataset.from_list(
            [{"prompt": r["prompt"], "chosen": reply(r["chosen"]), "rejected": reply(r["rejected"])} for r in rows]
        )
        args = DPOConfig(**common, beta=0.1, loss_type=["sigmoid"], max_length=job["max_length"],
                         precompute_ref_log_probs=job.get("precompute_ref", False))  # fmt: skip
        trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                             peft_config=_peft())  # fmt: skip
    else:
        from trl import GRPOConfig, GRPOTrainer

        rewards = _rewards_module()

        def wrap(fn):
            def reward(prompts, completions, references, **_):
                return fn(_as_text(prompts), _as_text(completions), references=references)

            reward.__name__ = fn.__name__
            return reward

        data = Dataset.from_list([{"prompt": r["prompt"], "references": r["references"]} for r in rows])
        args = GRPOConfig(**common, num_generations=GRPO["group_size"], temperature=GRPO["temperature"], top_k=50,
                          max_completion_length=GRPO["max_new_tokens"], beta=GRPO["beta"], epsilon=0.2,
                          loss_type="grpo", scale_rewards="group", num_iterations=1)  # fmt: skip
        trainer = GRPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                              reward_funcs=[wrap(getattr(rewards, n)) for n in REWARDS],
                              peft_config=_peft())  # fmt: skip
    built = time.perf_counter() - built
    result = trainer.train()
    out = {"train_s": result.metrics["train_runtime"] + (built if job.get("precompute_ref") else 0.0),
           "steps": result.global_step}  # fmt: skip
    if job.get("save"):
        where = Path(job["work"]) / f"trl-{job['method']}-model"
        trainer.model.merge_and_unload().save_pretrained(where)
        tokenizer.save_pretrained(where)
        out["model"] = str(where)
    return out


def score_job(job: dict) -> dict:
    """One scorer for every model: DPO's held-out preference accuracy, or GRPO's held-out greedy reward."""
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = job["model"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
    rows = _rows(Path(job["test"]))
    if job["method"] == "dpo":
        from tunesmith.lm.logprobs import split_logprobs
        from tunesmith.methods.dpo import Pairs

        lp = split_logprobs(model, Pairs(tokenizer, rows, job["max_length"]), batch_size=8)
        return {"heldout_pref_acc": float((lp[:, 0] > lp[:, 1]).float().mean())}
    from tunesmith.infer.generator import Generator, Sampling

    sampling = Sampling(GRPO["max_new_tokens"], 0.0, 1.0, (), 1.0)
    replies = Generator(model, tokenizer).replies([r["prompt"] for r in rows], sampling)
    rewards = _rewards_module()
    prompts, refs = _as_text([r["prompt"] for r in rows]), [r["references"] for r in rows]
    each = {n: np.asarray(getattr(rewards, n)(prompts, replies, references=refs), float) for n in REWARDS}
    return {"heldout_reward": float(np.mean(sum(each.values())))} | {k: float(np.mean(v)) for k, v in each.items()}


JOBS = {"prepare": prepare_job, "tunesmith": tunesmith_job, "trl": trl_job, "score": score_job}


def run_child_job(job: dict) -> dict:
    if job.get("model") == "zoo":  # the untuned model, resolved in the child: the parent never imports torch
        from tunesmith.models import zoo

        job["model"] = str(zoo.resolve(MODEL))
    return JOBS[job["side"]](job)


def child(job: dict) -> dict:
    """Run one job in a process of its own; its result, its peak RSS and its steps per second."""
    result = run_job(__file__, job, f"{job['side']} {job.get('method', '')}")
    return result | ({"steps_per_s": result["steps"] / result["train_s"]} if "steps" in result else {})


# ---- data -----------------------------------------------------------------------------------------------


def grpo_rows(work: Path, n_train: int, n_test: int) -> tuple[Path, Path]:
    def rows(name: str, n: int) -> list[dict]:
        raw = [json.loads(ln) for ln in (ARITH / name).read_text().splitlines()[:n]]
        return [{"prompt": [{"role": "user", "content": r["prompt"]}], "references": [r["response"]]} for r in raw]

    return _jsonl(work / "grpo_train.jsonl", rows("train.jsonl", n_train)), _jsonl(
        work / "grpo_test.jsonl", rows("test.jsonl", n_test)
    )


def _rows(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _tunesmith_grpo_rows(src: Path, dst: Path) -> Path:
    """The same problems in the fields tunesmith reads: the prompt turn, and the reference as the reply."""
    rows = [{"messages": r["prompt"] + [{"role": "assistant", "content": r["references"][0]}]} for r in _rows(src)]
    return _jsonl(dst, rows)


# ---- the run --------------------------------------------------------------------------------------------


def side_by_side(base: dict, test: Path) -> dict:
    """TRL probed on a few steps (on as many rows as those steps take), then TRL at its fastest and tunesmith."""
    method, probed = base["method"], []
    probe_rows = _jsonl(Path(base["work"]) / f"{method}_probe_train.jsonl",
                        _rows(Path(base["train"]))[: base["probe_steps"] * base["batch"]])  # fmt: skip
    settings = PROBES[-1:] if base["quick"] else list(PROBES)  # quick: checks the pipeline, not the settings
    for n in range(len(settings) + 1):
        if n == len(settings):
            if not EXTRA[method]:
                break
            settings.append(max(probed, key=lambda p: p["steps_per_s"])["setting"] | EXTRA[method])
        got = child(base | settings[n] | {"side": "trl", "steps": base["probe_steps"], "train": str(probe_rows)})
        probed.append({"setting": settings[n], "steps_per_s": got["steps_per_s"], "peak_rss_mb": got["peak_rss_mb"]})
        print(f"{method} trl probe {settings[n]}: {got['steps_per_s']:.4f} steps/s", flush=True)
    fastest = max(probed, key=lambda p: p["steps_per_s"])["setting"]
    trl = child(base | fastest | {"side": "trl", "save": True})
    ours = child(base | {"side": "tunesmith", "train": base["tunesmith_train"]})
    score = {"side": "score", "method": method, "test": str(test), "max_length": base["max_length"]}
    out = {"trl_settings_tried": probed, "trl_setting": fastest}
    for name, got in (("trl", trl), ("tunesmith", ours)):
        out[name] = {k: got[k] for k in ("steps_per_s", "peak_rss_mb", "train_s", "steps")}
        out[name] |= {k: v for k, v in got.items() if k.endswith("per_step") or k == "precision"}
        out[name] |= {k: v for k, v in child(score | {"model": got["model"]}).items() if k != "peak_rss_mb"}
        print(f"{method} {name}: {out[name]}", flush=True)
    from_zoo = child(score | {"model": "zoo"})
    out["untuned"] = {k: v for k, v in from_zoo.items() if k != "peak_rss_mb"}
    out["speed_ratio"] = ours["steps_per_s"] / trl["steps_per_s"]
    out["rss_ratio"] = ours["peak_rss_mb"] / trl["peak_rss_mb"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "preference.json")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="holds hh_rlhf/")
    ap.add_argument("--quick", action="store_true", help="a few steps and rows: checks the pipeline")
    ap.add_argument("--only", choices=["dpo", "grpo"])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return answer(a.child, run_child_job)
    versions = peer_versions(("trl", "torch", "transformers", "peft"), TRL)
    hh = a.data / "hh_rlhf" / "train.jsonl"
    if not hh.exists() and a.only != "grpo":
        raise SystemExit(f"missing {hh}: the DPO side needs ../shared/data/hh_rlhf (or --data DIR, or --only grpo)")
    # (held-out rows, optimizer steps, probe steps); each side trains on as many rows as its steps take
    sizes = {"dpo": (16, 2, 1), "grpo": (8, 2, 1)} if a.quick else {"dpo": (100, 8, 1), "grpo": (100, 8, 1)}
    work = scratch("pref-bench-")
    shared = {"work": str(work), "quick": a.quick, "max_length": 256}
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "loadavg_at_start": os.getloadavg()} | versions,
              "model": MODEL, "lora": LORA | {"targets": "all-linear"}, "quick": a.quick}  # fmt: skip
    started = time.perf_counter()
    if a.only in (None, "dpo"):
        n_test, steps, probe_steps = sizes["dpo"]
        n_train = 8 * steps
        data = child(shared | {"side": "prepare", "hh": str(hh), "n_train": n_train, "n_test": n_test})
        probe_test = _jsonl(work / "dpo_probe_test.jsonl", _rows(Path(data["test"]))[:4])
        base = shared | {"method": "dpo", "train": data["train"], "tunesmith_train": data["train"],
                "probe_test": str(probe_test), "steps": steps, "probe_steps": probe_steps, "batch": 8,
                "lr": 5e-5}  # fmt: skip
        result["dpo"] = side_by_side(base, Path(data["test"])) | {"rows": {"train": n_train, "heldout": n_test}}
    if a.only in (None, "grpo"):
        n_test, steps, probe_steps = sizes["grpo"]
        train, test = grpo_rows(work, 2 * steps, n_test)
        base = shared | {"method": "grpo", "train": str(train), "steps": steps, "probe_steps": probe_steps,
                "tunesmith_train": str(_tunesmith_grpo_rows(train, work / "grpo_train_ts.jsonl")),
                "probe_test": str(_tunesmith_grpo_rows(test, work / "grpo_probe_test.jsonl")),
                "batch": 16, "lr": 1e-4}  # fmt: skip
        result["grpo"] = side_by_side(base, test) | {"rows": {"train_prompts": 2 * steps, "heldout": n_test}}
    result["seconds"] = time.perf_counter() - started
    a.out.parent.mkdir(parents=True, exist_ok=True)
    # the sections not run (--only; the worked examples of preference_examples.py) stay as they were
    kept = json.loads(a.out.read_text()) if a.out.is_file() else {}
    a.out.write_text(json.dumps(kept | result, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
