"""What a config implies, checked before the first training step: a run that cannot prove anything, or that
would crash at test scoring, fails in seconds with the key to change, not after hours of training."""

from __future__ import annotations

from pathlib import Path

from tunesmith.config import RunConfig
from tunesmith.errors import TunesmithError
from tunesmith.methods import Method
from tunesmith.train import footprint, zero

POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def check_model(cfg: RunConfig, model_dir: Path) -> None:
    """train.max_length within the model's position limit; a tokenizer whose ids all have an embedding; the peak
    memory of the config within the machine's (train/footprint.py); the engine a distributed strategy names."""
    from transformers import AutoConfig, AutoTokenizer

    if cfg.train.distributed.strategy == "deepspeed":
        zero.check_installed()
    config = AutoConfig.from_pretrained(model_dir)
    limit = next((getattr(config, k) for k in POSITION_KEYS if isinstance(getattr(config, k, None), int)), None)
    if limit is not None and cfg.train.max_length > limit:
        raise TunesmithError(
            f"train.max_length: {cfg.train.max_length} is above the position limit of {cfg.model} ({limit} tokens); "
            f"set it to at most {limit}"
        )
    vocab = getattr(config, "vocab_size", None)
    tokens = len(AutoTokenizer.from_pretrained(model_dir))
    if isinstance(vocab, int) and tokens > vocab:
        raise TunesmithError(
            f"model {cfg.model}: its tokenizer has {tokens} tokens but the model embeds only {vocab}; "
            "the folder mixes a tokenizer and a model that do not belong together"
        )
    footprint.check_fits(cfg, config)


def check_memory(cfg: RunConfig, model_dir: Path) -> None:
    """The peak memory of the config within the machine's, alone: for settings chosen after check_model ran."""
    from transformers import AutoConfig

    footprint.check_fits(cfg, AutoConfig.from_pretrained(model_dir))


def check_data(cfg: RunConfig, method: Method, report: dict, data_dir: Path) -> None:
    """The data fits the method, and leaves a test split to score tuned against untuned (and a validation split
    where early stopping needs one)."""
    shape, rows = report["shape"], report.get("rows", {})
    if shape not in method.shapes:
        hint = (
            "; a .txt file is read as one document: for rows of data set data.format: csv or lines"
            if shape == "text" and str(cfg.data.train).lower().endswith(".txt")
            else ""
        )
        raise TunesmithError(
            f"method {cfg.method} trains on {' or '.join(method.shapes)} data, but "
            f"{cfg.data.train} holds {shape} data (see data_report.json in {data_dir}){hint}"
        )
    kept = ", ".join(f"{n} {s}" for s, n in rows.items()) or "none"
    if not rows.get("test"):
        raise TunesmithError(
            f"{cfg.data.train}: no test rows after preparing (rows kept: {kept}), so the run could not be scored "
            "against the untuned model; give data.test, set data.test_fraction above 0, or bring more rows "
            f"(see data_report.json in {data_dir})"
        )
    if cfg.train.early_stopping is not None and not rows.get("val"):
        raise TunesmithError(
            f"train.early_stopping needs validation rows, and there are none (rows kept: {kept}); give data.val, "
            "set data.val_fraction above 0, or remove train.early_stopping"
        )
