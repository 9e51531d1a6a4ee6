"""The real aliases: the GGUF of smollm2-135m-instruct is converted once into a float safetensors folder
that plain transformers loads, and that folder answers coherently and stops at the end of its turn."""

import time

import pytest
import torch

from tunesmith.models import zoo

pytestmark = pytest.mark.integration


def test_gguf_alias_converts_once_and_generates(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("TUNESMITH_HOME", str(tmp_path))
    folder = zoo.resolve("smollm2-135m-instruct")
    assert folder == tmp_path / "models" / "smollm2-135m-instruct"
    assert (folder / "model.safetensors").is_file() and not (folder.parent / (folder.name + ".tmp")).exists()
    started = time.perf_counter()
    assert zoo.resolve("smollm2-135m-instruct") == folder
    assert time.perf_counter() - started < 1.0, "the second resolve reads the cache"
    assert {r["alias"]: r["cached"] for r in zoo.list_models()}["smollm2-135m-instruct"]

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert model.dtype == torch.float32 and "quantization_config" not in model.config.to_dict()
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=40, do_sample=False)
    reply = tok.decode(out[0, ids["input_ids"].shape[1] :])
    assert "Paris" in reply and reply.rstrip().endswith("<|im_end|>"), reply


def test_pull_of_an_installed_alias_is_its_folder():
    assert zoo.pull("minilm-l6") == zoo.resolve("minilm-l6")
