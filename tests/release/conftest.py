import pytest

from tests.conftest import tiny_config
from tunesmith import api


@pytest.fixture(scope="package")
def classifier_run(tiny_model, fixtures, tmp_path_factory):
    """A tiny LoRA classifier trained on the SST-2 fixture."""
    tmp = tmp_path_factory.mktemp("release-classifier")
    cfg = tiny_config(tiny_model, fixtures / "sst2_train.tsv", tmp, lora={"r": 4, "targets": ["query", "value"]})
    return api.train(cfg, quiet=True)
