"""One loaded model, many threads (a server's requests): each call gets exactly what it gets alone."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from tunesmith.infer.classifier import Classifier
from tunesmith.infer.generator import Generator, Sampling
from tunesmith.models.build import build_classifier
from tunesmith.models.saved import CLASSIFIER, load_classifier, save_model

PROMPTS = [
    "Say hi to me",
    "the film was good and the actors were better than I had been told they would be",
    "bad",
    "a long and winding story about a dog, a cat and the rain that would not stop",
]
SAMPLINGS = [
    Sampling(10),
    Sampling(14, stop=("e",)),
    Sampling(8, repetition_penalty=3.0),
    Sampling(12, stop=("an", ".")),
]


@pytest.fixture(scope="module")
def classifier(tiny_model, tmp_path_factory):
    from transformers import AutoTokenizer

    torch.manual_seed(3)
    folder = tmp_path_factory.mktemp("clf") / "model"
    model = build_classifier(tiny_model, ["neg", "neutral", "pos"])
    meta = {"method": "x", "kind": CLASSIFIER, "base_model": str(tiny_model), "labels": ["neg", "neutral", "pos"],
            "temperature": 1.7, "max_length": 24, "lora": False}  # fmt: skip
    save_model(model, AutoTokenizer.from_pretrained(tiny_model), meta, folder)
    return Classifier(*load_classifier(folder))


@pytest.fixture(scope="module")
def generator(tiny_lm, tokenizer):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return Generator(AutoModelForCausalLM.from_pretrained(tiny_lm).eval(), tokenizer)


def job(i: int) -> tuple:
    """Thread i's calls: prompts of mixed lengths in a batch (so left padding matters), a stream, labels."""
    batch = [[{"role": "user", "content": p}] for p in PROMPTS[i % 4 :] + PROMPTS[: i % 4]][: 2 + i % 3]
    texts = [p[: 8 + 9 * i] for p in PROMPTS]
    return batch, SAMPLINGS[i % 4], texts


def run(i: int, generator: Generator, classifier: Classifier) -> tuple:
    batch, sampling, texts = job(i)
    replies = generator.replies(batch, sampling, batch_size=2)
    streamed = "".join(generator.stream(batch[-1], sampling))
    return replies, streamed, classifier.predict(texts)


def test_eight_threads_generate_and_classify_at_once_as_they_would_alone(generator, classifier):
    alone = [run(i, generator, classifier) for i in range(8)]
    assert len({str(a[0]) for a in alone}) > 1  # the jobs differ, so a mix-up would show
    with ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            together = list(pool.map(lambda i: run(i, generator, classifier), range(8)))
            assert together == alone
    assert generator.tokenizer.padding_side == "right" and not generator.model.training
