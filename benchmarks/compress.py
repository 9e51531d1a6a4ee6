"""Benchmark: the release table (issue 21). What a fine-tuned model costs and keeps in each deployable form.

Classifiers (SST-2 and Banking77, minilm-l6): a teacher fine-tuned on a seeded sample of the training rows, a
student distilled from it (3 of its 6 layers, with unlabeled training texts), and their exports. For each form:
test accuracy, size on disk, and p50/p99 latency of `Classifier.probabilities` (tokenising included) at batch 1
(100 test texts one at a time) and batch 32 (20 batches), on this CPU. The int8 export of a classifier is
onnxruntime's dynamic quantisation of the ONNX graph, so "int8" and "ONNX+int8" are one artifact; torchao's
dynamic int8 of the teacher is timed beside it (in memory) as the alternative the export did not choose.

Causal LM (smollm2-135m-instruct + LoRA, examples/dialogsum_sft.yaml trained as it is): float32, int8 (torchao
weight-only) and GGUF q8_0. ROUGE-L of greedy summaries of the first --dialogues test dialogues, and tokens/s of
one greedy reply of 64 tokens at a time. tunesmith loads GGUF through transformers, which dequantises it to
float32; where llama-cpp-python imports, the GGUF file is also run by llama.cpp and its greedy tokens compared
(32 at most per reply, on 5 prompts). Build it with CMAKE_ARGS=-DGGML_NATIVE=OFF: the native build died of an
illegal instruction on this machine's first call.

Targets: a student at >= 97% of its teacher's accuracy at <= 50% of its p50 latency; int8 at >= 99% of its
source's accuracy.

    .venv/bin/python benchmarks/compress.py                 # about 45 minutes on 2 cores; runs kept in .work/
    .venv/bin/python benchmarks/compress.py --only sst2     # sst2, banking77 or dialogsum
Needs ../shared/data (sst2, banking77, dialogsum). Result: benchmarks/results/compress.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
WORK = HERE / ".work" / "compress"
RECIPE = {"lr": 2.19e-5, "head_lr": 8.2e-3, "epochs": 6, "batch_size": 32, "dropout": 0.17, "max_length": 64}
CLASSIFIERS = {  # train file, test file, text and label columns, training sample
    "sst2": ("sst2/train.tsv", "sst2/dev.tsv", "sentence", "label", 4000),
    "banking77": ("banking77/train.csv", "banking77/test.csv", "text", "category", 2000),
}


def run_of(name: str, cfg: dict) -> Path:
    """The finished run of this name in WORK, trained once."""
    from tunesmith import api
    from tunesmith.errors import TunesmithError
    from tunesmith.runs import find_run_dir

    try:
        return find_run_dir(name, WORK / "runs", done=True)
    except TunesmithError:  # none yet, or the latest one failed
        return api.train(cfg | {"name": name, "output_dir": str(WORK / "runs")}, quiet=True)


def size_mb(folder: Path) -> float:
    return round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6, 2)


def percentiles(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def latencies(models: dict, texts: list[str]) -> dict[str, dict]:
    """p50/p99 per model at batch 1 (100 texts) and batch 32 (20 batches), the models taking turns."""
    from tunesmith.release.export import in_turns

    for clf in models.values():
        clf.probabilities(texts[:32])  # warm up
    one = in_turns(list(models.values()), [[t] for t in texts[:100]])
    many = in_turns(list(models.values()), [texts[at : at + 32] for at in range(0, 32 * 20, 32)])
    return {name: {"batch1": percentiles(a), "batch32": percentiles(b)} for name, a, b in zip(models, one, many)}


def classifier_runs(name: str, unlabeled: int) -> tuple[Path, Path]:
    """The teacher and the student, trained once."""
    train, test, text, label, sample = CLASSIFIERS[name]
    data = {"train": str(DATA / train), "test": str(DATA / test), "text": text, "label": label, "sample": sample}
    base = {"model": "minilm-l6", "train": RECIPE | {"checkpoint_every": 10**6}}
    teacher = run_of(f"{name}-teacher", base | {"data": data})
    pool = WORK / f"{name}-unlabeled.csv"
    if not pool.is_file():
        with (DATA / train).open(newline="") as f:
            texts = [r[text] for r in csv.DictReader(f, delimiter="\t" if train.endswith(".tsv") else ",")]
        with pool.open("w", newline="") as f:
            csv.writer(f).writerows([[text], *([t] for t in random.Random(7).sample(texts, unlabeled))])
    student = run_of(f"{name}-student", base | {"method": "distill", "data": data | {"unlabeled": str(pool)},
                                                "distill": {"teacher": str(teacher), "layers": 3}})  # fmt: skip
    return teacher, student


def classifier_table(name: str, unlabeled: int) -> dict:
    from tunesmith import api
    from tunesmith.data.prepared import read_prepared
    from tunesmith.infer.classifier import Classifier

    teacher, student = classifier_runs(name, unlabeled)
    split = read_prepared(teacher / "data").splits["test"]
    texts = (split.texts * (1 + 640 // len(split.texts)))[:640]
    models, rows = {}, {}
    for who, run in (("teacher", teacher), ("student", student)):
        for fmt in (None, "onnx", "int8"):
            form = who + (f" {fmt}" if fmt else "")
            rows[form] = {}
            if fmt:  # a 77-label model keeps fewer labels under int8 than the default floor of 0.98 asks
                rows[form]["agreement"] = api.export(run, fmt, min_agreement=0.95)["check"]["agreement"]
            models[form] = Classifier.load(run, fmt)
            rows[form]["size_mb"] = size_mb(run / ("model" if fmt is None else f"exports/{fmt}"))
    models["teacher torchao-int8-dynamic"], rows["teacher torchao-int8-dynamic"] = torchao_model(teacher)
    for form, clf in models.items():
        rows[form]["accuracy"] = accuracy(clf, split)
    for form, timing in latencies(models, texts).items():
        rows[form] |= timing
    return {"test_rows": len(split), "train_sample": CLASSIFIERS[name][4], "unlabeled_rows": unlabeled,
            "rows": rows, "targets": classifier_targets(rows)}  # fmt: skip


def accuracy(clf, split) -> float:
    gold = np.array([clf.labels.index(y) for y in split.labels])
    return round(float((clf.probabilities(split.texts).argmax(1) == gold).mean()), 4)


def torchao_model(teacher: Path):
    """torchao's dynamic int8 of the teacher, in memory: the alternative the int8 export did not take."""
    import copy
    import tempfile

    import torch
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    from tunesmith.infer.classifier import Classifier

    clf = Classifier.load(teacher)
    model = copy.deepcopy(clf.model)
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(model.state_dict(), Path(tmp) / "model.pt")
        size = size_mb(Path(tmp))
    return Classifier(model, clf.tokenizer, clf.meta), {"size_mb": size, "in_memory_only": True}


def classifier_targets(rows: dict) -> dict:
    t, s = rows["teacher"], rows["student"]
    return {
        "student_accuracy_share": round(s["accuracy"] / t["accuracy"], 4),
        "student_latency_ratio_b1_p50": round(s["batch1"]["p50_ms"] / t["batch1"]["p50_ms"], 3),
        "teacher_int8_accuracy_share": round(rows["teacher int8"]["accuracy"] / t["accuracy"], 4),
        "student_int8_accuracy_share": round(rows["student int8"]["accuracy"] / s["accuracy"], 4),
        "met": {
            "student >= 97% of teacher": s["accuracy"] >= 0.97 * t["accuracy"],
            "student p50 <= 50% of teacher": s["batch1"]["p50_ms"] <= 0.5 * t["batch1"]["p50_ms"],
            "int8 >= 99% of source": rows["teacher int8"]["accuracy"] >= 0.99 * t["accuracy"]
            and rows["student int8"]["accuracy"] >= 0.99 * s["accuracy"],
        },
    }


def dialogsum_run() -> Path:
    from tunesmith.config import load_config

    cfg = load_config(HERE.parent / "examples" / "dialogsum_sft.yaml", ["eval.generate=0"]).model_dump(mode="json")
    return run_of("dialogsum-sft", cfg)


def dialogsum_table(dialogues: int) -> dict:
    from tunesmith import api
    from tunesmith.data.prepared import read_rows
    from tunesmith.eval.generation import text_metrics
    from tunesmith.infer.generator import Generator, Sampling
    from tunesmith.lm.chat import as_messages

    run = dialogsum_run()
    rows = read_rows(run / "data")["test"][:dialogues]
    prompts, refs = [as_messages(r)[:-1] for r in rows], [r["references"] for r in rows]
    sampling = Sampling(96, repetition_penalty=1.0)
    out = {}
    for fmt in (None, "int8", "gguf"):
        if fmt:
            api.export(run, fmt, min_agreement=0.0)
        gen = Generator.load(run, fmt)
        start = time.perf_counter()
        said = gen.replies(prompts, sampling)
        seconds = time.perf_counter() - start
        folder = run / ("model" if fmt is None else f"exports/{fmt}")
        check = {} if fmt is None else json.loads((folder / "export.json").read_text())["check"]
        out[fmt or "fp32"] = {
            "size_mb": size_mb(folder),
            "rougeL": round(text_metrics(said, refs)["rougeL"], 2),
            "summaries_seconds": round(seconds, 1),
            "tokens_per_s_batch1": tokens_per_second(gen, prompts[:5]),
        } | ({"agreement_with_fp32": check["agreement"], "exact_replies": check["exact_replies"]} if check else {})
    out["gguf llama.cpp"] = llama_cpp_in_child(run)
    return {"test_dialogues": len(rows), "rows": out}


def tokens_per_second(gen, prompts: list[list[dict]], new: int = 64) -> float:
    import torch

    from tunesmith.lm.chat import prompt_text

    total, seconds = 0, 0.0
    for p in prompts:
        ids = gen.tokenizer(prompt_text(gen.tokenizer, p), return_tensors="pt", add_special_tokens=False)
        start = time.perf_counter()
        with torch.no_grad():
            gen.model.generate(**ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        seconds += time.perf_counter() - start
        total += new
    return round(total / seconds, 2)


def llama_cpp_in_child(run: Path) -> dict:
    """llama_cpp_row in a child process: a llama.cpp build whose CPU kernels this machine cannot run dies of
    SIGILL, which is then recorded rather than ending the benchmark."""
    import subprocess

    done = subprocess.run([sys.executable, __file__, "--llama-cpp", str(run)], capture_output=True, text=True)
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"failed": f"the child running llama.cpp exited with {done.returncode} ({tail})"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def llama_cpp_row(run: Path, prompts: list[list[dict]]) -> dict:
    """The GGUF file run by llama.cpp, where llama-cpp-python is installed: its greedy tokens against
    transformers' on the same file, and its speed."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return {
            "skipped": "llama-cpp-python is not installed (CMAKE_ARGS=-DGGML_NATIVE=OFF pip install "
            "llama-cpp-python==0.3.36 builds it, about 6 minutes on 2 cores)"
        }
    from tunesmith.infer.generator import Generator
    from tunesmith.lm.chat import prompt_text

    gen = Generator.load(run, "gguf")
    llm = Llama(str(run / "exports" / "gguf" / "model.gguf"), n_ctx=2048, n_threads=os.cpu_count(), verbose=False)
    same, total, seconds = 0, 0, 0.0
    for p in prompts:
        text = prompt_text(gen.tokenizer, p)
        ids = gen.tokenizer(text, add_special_tokens=False)["input_ids"]
        start = time.perf_counter()
        ours = []
        for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
            if token == llm.token_eos() or len(ours) == 32:
                break
            ours.append(token)
        seconds += time.perf_counter() - start
        total += len(ours)
        theirs = gen.model.generate(
            **gen.tokenizer(text, return_tensors="pt", add_special_tokens=False), max_new_tokens=32, do_sample=False
        )[0][len(ids) :].tolist()
        same += ours == [t for t in theirs if t != gen.tokenizer.eos_token_id][: len(ours)]
    return {"same_greedy_tokens": f"{same} of {len(prompts)}", "tokens_per_s_batch1": round(total / seconds, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=[*CLASSIFIERS, "dialogsum"])
    p.add_argument("--unlabeled", type=int, default=4000)
    p.add_argument("--dialogues", type=int, default=50)
    p.add_argument("--out", type=Path, default=HERE / "results" / "compress.json")
    p.add_argument("--llama-cpp", type=Path, help=argparse.SUPPRESS)  # the child of llama_cpp_in_child
    args = p.parse_args()
    if args.llama_cpp:
        from tunesmith.data.prepared import read_rows
        from tunesmith.lm.chat import as_messages

        rows = read_rows(args.llama_cpp / "data")["test"][:5]
        print(json.dumps(llama_cpp_row(args.llama_cpp, [as_messages(r)[:-1] for r in rows])))
        return
    need = [DATA / f for f in ("sst2/train.tsv", "banking77/train.csv", "dialogsum/test.jsonl")]
    if missing := [str(f) for f in need if not f.is_file()]:
        sys.exit(f"missing {', '.join(missing)}: this benchmark reads ../shared/data beside the repository")
    WORK.mkdir(parents=True, exist_ok=True)
    result = json.loads(args.out.read_text()) if args.out.is_file() and args.only else {}
    result |= {"benchmark": "compress", "date": datetime.now(UTC).isoformat(timespec="seconds"),
               "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}}  # fmt: skip
    names = [args.only] if args.only else [*CLASSIFIERS, "dialogsum"]
    for name in names:  # all training first, so that nothing else runs while latency is measured
        dialogsum_run() if name == "dialogsum" else classifier_runs(name, args.unlabeled)
    print("measuring", flush=True)
    for name in names:
        result[name] = (
            dialogsum_table(args.dialogues) if name == "dialogsum" else classifier_table(name, args.unlabeled)
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({name: result[name]}, indent=2))


if __name__ == "__main__":
    main()
