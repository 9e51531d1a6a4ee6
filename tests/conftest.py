"""Fixtures build a tiny random BERT (and its tokenizer, trained on fixture text) in about a second."""

from __future__ import annotations

import json
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


CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory, fixtures):
    """A 2-layer, 32-wide Llama with a ChatML template and a byte-level BPE learned from fixture text."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-llama")
    texts = [ln.split("\t")[0] for ln in (fixtures / "sst2_train.tsv").read_text().splitlines()[1:]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>", bos_token="<|im_start|>"
    )
    fast.chat_template = CHATML
    fast.save_pretrained(out)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        bos_token_id=fast.bos_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tokenizer(tiny_lm):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_lm)


def conversation(reply="Hello there!"):
    return [{"role": "user", "content": "Say hi to me"}, {"role": "assistant", "content": reply}]


def sft_config(tiny_lm, tmp_path, data_file, **extra):
    cfg = {
        "name": "sft",
        "model": str(tiny_lm),
        "method": "sft",
        "output_dir": str(tmp_path / "runs"),
        "data": {
            "train": str(data_file),
            "val_fraction": 0.1,
            "test_fraction": 0.2,
            "dedup": {"near": False, "exact": False},
            "on_error": "skip",
        },  # a 128-token context leaves some oasst prompts no reply token
        "train": {
            "epochs": 3,
            "batch_size": 4,
            "lr": 3e-3,
            "max_length": 128,
            "log_every": 5,
            "checkpoint_every": 1000,
        },
    }
    for key, value in extra.items():
        cfg[key] = cfg.get(key, {}) | value if isinstance(value, dict) else value
    return cfg


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, training loss) of every logged training step in the run's metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r and r.get("split") is None]
