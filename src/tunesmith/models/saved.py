"""A run's model/ folder: written whole or not at all, and read back as a classifier or a causal LM.

tunesmith.json beside the weights says what the folder holds: its kind (classifier or causal-lm), the base
model, and what inference needs (labels, temperature, max_length).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tunesmith.config import RunConfig
from tunesmith.errors import TunesmithError
from tunesmith.files import staged_dir
from tunesmith.models import zoo
from tunesmith.models.build import build_classifier

CLASSIFIER, CAUSAL_LM, REWARD = "classifier", "causal-lm", "reward-model"


def save_model(model, tokenizer, meta: dict, out: Path) -> None:
    """model/ appears whole or not at all: written beside it and renamed into place."""
    with staged_dir(out, replace=True, fault="model") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "tunesmith.json").write_text(json.dumps(meta, indent=2))


def save_merged(model, tokenizer, cfg: RunConfig, base_path: Path, out: Path, kind: str = CAUSAL_LM) -> torch.nn.Module:
    """A trained model (a causal LM, or a reward head) as a plain transformers folder: a LoRA adapter is merged
    first. Returns the model saved (the merged one under LoRA), which is what later scoring must use."""
    if cfg.lora:
        model = model.merge_and_unload()
    meta = {
        "method": cfg.method,
        "kind": kind,
        "base_model": cfg.model,
        "base_path": str(base_path),
        "max_length": cfg.train.max_length,
        "lora_merged": cfg.lora is not None,
    }
    save_model(model, tokenizer, meta, out)
    return model


def read_meta(model_dir: Path) -> dict:
    meta = json.loads((model_dir / "tunesmith.json").read_text())
    meta.setdefault("kind", CLASSIFIER if "labels" in meta else CAUSAL_LM)  # runs saved before "kind" existed
    return meta


def load_classifier(model_dir: Path) -> tuple[torch.nn.Module, object, dict]:
    """A saved classifier (full weights, or base + LoRA adapter) in eval mode, its tokenizer and tunesmith.json."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    zoo.quiet_transformers()
    meta = read_meta(model_dir)
    if meta["kind"] != CLASSIFIER:
        use = "it scores (prompt, completion) pairs" if meta["kind"] == REWARD else "use tunesmith generate or chat"
        raise TunesmithError(
            f"{model_dir.parent}: a {meta['method']} run is not a classifier; {use} (its test scores are in eval.json)"
        )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if meta.get("format") in ("onnx", "int8"):
        from tunesmith.release.onnx import OnnxClassifier

        model = OnnxClassifier(model_dir, len(meta["labels"]))
    elif meta.get("head") == "pooled":
        from tunesmith.models.pooled import PooledClassifier

        model = PooledClassifier.from_pretrained(model_dir)
    elif meta["lora"]:
        from peft import PeftModel

        base = build_classifier(zoo.resolve(meta["base_model"]), meta["labels"])
        model = PeftModel.from_pretrained(base, model_dir)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
    return model.eval(), tokenizer, meta


def load_causal_lm(model_dir: Path) -> tuple[torch.nn.Module, object, dict]:
    """A saved causal LM (LoRA merged at save time) in eval mode, its tokenizer and tunesmith.json. An export
    folder loads as its format says: GGUF dequantised by transformers' reader, int8 through torchao."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    zoo.quiet_transformers()
    meta = read_meta(model_dir)
    if meta["kind"] != CAUSAL_LM:
        raise TunesmithError(f"{model_dir.parent}: a {meta['method']} run has no text generator; use tunesmith predict")
    if meta.get("format") == "gguf":
        from tunesmith.release.gguf import GGUF_FILE

        model = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=GGUF_FILE, dtype=torch.float32)
    elif meta.get("format") == "int8":
        from tunesmith.release.int8 import int8_config

        int8_config()  # torchao, imported quietly before transformers reads its quantisation config
        model = AutoModelForCausalLM.from_pretrained(model_dir)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(model_dir), meta


def load_reward(model_dir: Path) -> tuple[torch.nn.Module, object, dict]:
    """A saved reward model (a one-output sequence-classification head, LoRA merged) in eval mode."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    zoo.quiet_transformers()
    meta = read_meta(model_dir)
    if meta["kind"] != REWARD:
        raise TunesmithError(f"{model_dir.parent}: a {meta['method']} run is not a reward model")
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(model_dir), meta
