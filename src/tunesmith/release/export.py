"""`tunesmith export RUN --format onnx|int8|gguf|merged`: a run's model in a deployable format, in
run_dir/exports/FORMAT/, checked against the run's own model before it is published.

The check runs the source and the export on the same inputs: a classifier labels the run's test split (label
agreement), a causal LM answers 20 test prompts greedily (exact replies, and the share of leading tokens that
match). An export below `min_agreement` is refused and nothing is written.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from tunesmith.errors import TunesmithError
from tunesmith.files import staged_dir, write_json
from tunesmith.infer.load import model_dir
from tunesmith.models.saved import CAUSAL_LM, CLASSIFIER, REWARD, read_meta

FORMATS = ("onnx", "int8", "gguf", "merged")
ALLOWED = {CLASSIFIER: ("onnx", "int8", "merged"), CAUSAL_LM: ("int8", "gguf", "merged"), REWARD: ("merged",)}
MIN_AGREEMENT = {CLASSIFIER: 0.98, CAUSAL_LM: 0.5}  # labels equal; leading greedy tokens equal
CHECK_PROMPTS, CHECK_TOKENS = 20, 32


def export(
    run: str | Path,
    fmt: str,
    *,
    gguf_type: str = "q8_0",
    min_agreement: float | None = None,
    output_dir: str | Path | None = None,
) -> dict:
    """Write the export, check it against the run's model, and return what export.json records."""
    source = model_dir(run, output_dir)
    run_dir, meta = source.parent, read_meta(source)
    _refuse(run, meta, fmt)
    dest = run_dir / "exports" / fmt
    dest.parent.mkdir(exist_ok=True)
    started = time.perf_counter()
    with staged_dir(dest, replace=True, fault="export") as tmp:
        _write(source, meta, fmt, tmp, gguf_type)
        out_meta = meta | {"format": fmt, "lora": False} | ({"gguf_type": gguf_type} if fmt == "gguf" else {})
        write_json(tmp / "tunesmith.json", out_meta)
        check = _check(run_dir, source, tmp, meta["kind"])
        floor = MIN_AGREEMENT.get(meta["kind"], 1.0) if min_agreement is None else min_agreement
        if check["agreement"] < floor:
            raise TunesmithError(
                f"{run}: the {fmt} export agrees with the run's model on {check['agreement']:.3f} of "
                f"{check['measure']} (at least {floor} was asked); nothing was written. "
                + ("Try --gguf-type f16, or " if fmt == "gguf" else "")
                + "lower the bar with --min-agreement if that loss is acceptable"
            )
        summary = {
            "run": str(run_dir),
            "format": fmt,
            "folder": str(dest),
            "size_mb": round(_size(tmp) / 1e6, 2),
            "source_size_mb": round(_size(source) / 1e6, 2),
            "seconds": round(time.perf_counter() - started, 1),
            "check": check,
        } | ({"gguf_type": gguf_type} if fmt == "gguf" else {})
        write_json(tmp / "export.json", summary)
    return summary


def _refuse(run, meta: dict, fmt: str) -> None:
    if fmt not in FORMATS:
        raise TunesmithError(f"export format {fmt!r} is not one of {', '.join(FORMATS)}")
    allowed = ALLOWED.get(meta["kind"], ())
    if fmt not in allowed:
        why = {
            "gguf": "GGUF holds causal LMs for llama.cpp and Ollama, not classifiers",
            "onnx": "ONNX export covers classifiers (generation would need its key-value cache exported too)",
        }.get(fmt, f"a {meta['kind']} has no {fmt} form")
        raise TunesmithError(
            f"{run}: cannot export a {meta['kind']} ({meta['method']} run) as {fmt}: {why}; "
            f"this run exports as {', '.join(allowed) or 'nothing'}"
        )


def _write(source: Path, meta: dict, fmt: str, out: Path, gguf_type: str) -> None:
    from tunesmith.models.saved import load_causal_lm, load_classifier

    if fmt == "merged" and meta["kind"] != CLASSIFIER:  # causal LMs and reward heads are merged when saved
        for f in source.iterdir():
            if f.is_file():
                shutil.copy2(f, out / f.name)
        return
    if meta["kind"] == CLASSIFIER:
        model, tokenizer, _ = load_classifier(source)
        if fmt == "merged":
            (model.merge_and_unload() if meta.get("lora") else model).save_pretrained(out)
        else:
            from tunesmith.release.onnx import write_onnx

            write_onnx(model, out, int8=fmt == "int8")
        tokenizer.save_pretrained(out)
        return
    if fmt == "int8":  # quantised while transformers loads it from the folder
        from tunesmith.release.int8 import write_int8

        write_int8(source, out)
        return
    from tunesmith.models import zoo
    from tunesmith.release.gguf import GGUF_FILE, source_pre, write_gguf

    model, tokenizer, _ = load_causal_lm(source)
    base = zoo.source_gguf(meta["base_model"])
    write_gguf(model, tokenizer, out / GGUF_FILE, outtype=gguf_type, pre=(base and source_pre(base)) or "default")
    tokenizer.save_pretrained(out)


def _check(run_dir: Path, source: Path, export: Path, kind: str) -> dict:
    if kind == CLASSIFIER:
        return _check_labels(run_dir, source, export)
    if kind == CAUSAL_LM:
        return _check_replies(run_dir, source, export)
    return {"measure": "weights copied unchanged", "agreement": 1.0}


def _check_labels(run_dir: Path, source: Path, export: Path) -> dict:
    from tunesmith.data.prepared import read_prepared
    from tunesmith.infer.classifier import Classifier
    from tunesmith.models.saved import load_classifier

    splits = read_prepared(run_dir / "data").splits
    name = "test" if len(splits.get("test", ())) else "val"
    split = splits[name]
    ours, theirs = (Classifier(*load_classifier(f)) for f in (source, export))
    p, q = ours.probabilities(split.texts), theirs.probabilities(split.texts)
    latency = [round(float(np.median(t)) * 1000, 2) for t in in_turns([ours, theirs], [[x] for x in split.texts[:50]])]
    gold = np.array([ours.labels.index(y) if y in ours.labels else -1 for y in split.labels])
    return {
        "measure": f"labels of the {len(split)} {name} texts",
        "agreement": round(float((p.argmax(1) == q.argmax(1)).mean()), 4),
        "accuracy_source": round(float((p.argmax(1) == gold).mean()), 4),
        "accuracy_export": round(float((q.argmax(1) == gold).mean()), 4),
        "max_probability_change": round(float(np.abs(p - q).max()), 4),
        "p50_ms_source": latency[0],
        "p50_ms_export": latency[1],
    }


def in_turns(classifiers: list, batches: list[list[str]]) -> list[list[float]]:
    """Seconds each classifier takes to label each batch of texts (tokenising included), the classifiers taking
    turns batch by batch, so that a slow spell of a shared machine falls on all of them alike."""
    times: list[list[float]] = [[] for _ in classifiers]
    for batch in batches:
        for clf, out in zip(classifiers, times):
            start = time.perf_counter()
            clf.probabilities(batch)
            out.append(time.perf_counter() - start)
    return times


def _check_replies(run_dir: Path, source: Path, export: Path) -> dict:
    from tunesmith.data.prepared import read_rows
    from tunesmith.infer.generator import Generator, Sampling
    from tunesmith.lm.chat import as_messages
    from tunesmith.models.saved import load_causal_lm

    rows = read_rows(run_dir / "data")
    rows = (rows.get("test") or rows.get("val") or rows["train"])[:CHECK_PROMPTS]
    prompts = [as_messages(r)[:-1] if "text" not in r else [{"role": "user", "content": r["text"][:300]}] for r in rows]
    sampling = Sampling(CHECK_TOKENS, repetition_penalty=1.0)
    ours = Generator(*load_causal_lm(source)[:2])
    started = time.perf_counter()
    a = ours.replies(prompts, sampling)
    middle = time.perf_counter()
    b = Generator(*load_causal_lm(export)[:2]).replies(prompts, sampling)
    seconds = (round(middle - started, 2), round(time.perf_counter() - middle, 2))
    tok = ours.tokenizer
    shares = [_common_share(tok.encode(x, add_special_tokens=False), tok.encode(y, add_special_tokens=False))
              for x, y in zip(a, b)]  # fmt: skip
    return {
        "measure": f"greedy tokens ({CHECK_TOKENS} at most) for {len(prompts)} prompts",
        "agreement": round(float(np.mean(shares)), 4),
        "exact_replies": round(float(np.mean([x == y for x, y in zip(a, b)])), 4),
        "seconds_source": seconds[0],
        "seconds_export": seconds[1],
        "samples": [{"source": x[:200], "export": y[:200]} for x, y in list(zip(a, b))[:3]],
    }


def _common_share(x: list[int], y: list[int]) -> float:
    """The share of the longer reply's tokens that both replies begin with."""
    n = 0
    for s, t in zip(x, y):
        if s != t:
            break
        n += 1
    return n / max(len(x), len(y), 1)


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
