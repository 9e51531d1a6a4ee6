"""Every shipped example config validates (a typo in an example fails here, not in a user's hands)."""

from pathlib import Path

import pytest

from tunesmith.config import load_config

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").rglob("*.yaml"))


def test_there_are_examples():
    assert len(EXAMPLES) >= 8


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(path):
    cfg = load_config(path)
    assert cfg.model and cfg.data.train
