"""Every shipped example config validates (a typo in an example fails here, not in a user's hands)."""

from pathlib import Path

import pytest

from tunesmith.config import load_config

ROOT = Path(__file__).parents[1] / "examples"
# the shipped configs only: a run of an example writes its own config.yaml under examples/runs/ (git-ignored)
EXAMPLES = sorted(p for p in ROOT.rglob("*.yaml") if "runs" not in p.relative_to(ROOT).parts)


def test_there_are_examples():
    assert len(EXAMPLES) >= 8


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(path):
    cfg = load_config(path)
    assert cfg.model and cfg.data.train
