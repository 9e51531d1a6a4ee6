import pytest

from tunesmith.errors import TunesmithError
from tunesmith.files import atomic_write
from tunesmith.runs import Registry, new_run_dir


def test_registry_lifecycle(tmp_path):
    reg = Registry(tmp_path)
    d = new_run_dir(tmp_path, "exp")
    reg.start(d, "exp", "abc", "minilm-l6", "classify")
    assert reg.list()[0]["status"] == "running"
    reg.finish(d, "done", metrics={"tuned_accuracy": 0.9})
    row = reg.find("exp")
    assert (
        row["status"] == "done"
        and row["metrics"] == {"tuned_accuracy": 0.9}
        and reg.find(str(row["id"]))["path"] == str(d)
    )
    with pytest.raises(TunesmithError, match="no run 'nope'"):
        reg.find("nope")


def test_run_dirs_never_collide(tmp_path):
    assert new_run_dir(tmp_path, "x") != new_run_dir(tmp_path, "x")


def test_atomic_write_leaves_no_temp_file(tmp_path):
    atomic_write(tmp_path / "a.json", "{}")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
