"""Fixtures build a tiny random BERT (and its tokenizer, trained on fixture text) in about a second."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Caches (the bf16 timing, converted models: about 0.5 GB) go to a temporary home, not the user's
# ~/.cache/tunesmith, and are removed when the session ends.
OWN_HOME = None if "TUNESMITH_HOME" in os.environ else tempfile.mkdtemp(prefix="tunesmith-test-home-")
if OWN_HOME:
    os.environ["TUNESMITH_HOME"] = OWN_HOME


def pytest_sessionfinish(session, exitstatus):
    if OWN_HOME:
        shutil.rmtree(OWN_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with a WordPiece vocabulary learned from the SST-2 fixture."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = tmp_path_factory.mktemp("tiny-bert")
    texts = [ln.split("\t")[0] for ln in (FIXTURES / "sst2_train.tsv").read_text().splitlines()[1:]]
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(texts, vocab_size=600, min_frequency=1)
    tok = BertTokenizerFast(
        tokenizer_object=wp._tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    tok.save_pretrained(out)
    import torch

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(cfg).save_pretrained(out)
    return out


def tiny_config(model: Path, train: Path, tmp: Path, **overrides) -> dict:
    """A full config dict for a fast run of the tiny model; keyword sections are merged in."""
    cfg = {
        "name": "tiny",
        "model": str(model),
        "output_dir": str(tmp / "runs"),
        "data": {"train": str(train), "text": "sentence", "label": "label", "max_rows": 300},
        "train": {"epochs": 2, "batch_size": 16, "lr": 1e-3, "max_length": 48, "log_every": 2, "checkpoint_every": 10},
        "eval": {"baseline": True, "calibrate": True},
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(cfg.get(section), dict):
            cfg[section] = cfg[section] | values
        else:
            cfg[section] = values
    return cfg
