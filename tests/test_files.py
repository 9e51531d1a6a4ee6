import errno

import pytest

from tunesmith.errors import TunesmithError
from tunesmith.files import disk_full, staged_dir


def test_a_staged_folder_appears_whole_or_not_at_all(tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(RuntimeError), staged_dir(dest) as tmp:
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("killed halfway")
    assert list(tmp_path.iterdir()) == []  # neither dest nor the hidden staging folder
    with staged_dir(dest) as tmp:
        (tmp / "a.txt").write_text("1")
    assert [p.name for p in dest.iterdir()] == ["a.txt"]


def test_a_folder_written_meanwhile_is_never_mixed_and_replace_swaps_it_whole(tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(TunesmithError, match="another job wrote it"), staged_dir(dest) as tmp:
        (tmp / "mine.txt").write_text("mine")
        dest.mkdir()
        (dest / "theirs.txt").write_text("theirs")
    assert [p.name for p in dest.iterdir()] == ["theirs.txt"]
    with staged_dir(dest, replace=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in dest.iterdir()] == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_disk_full_is_told_from_any_library_error(tmp_path):
    assert "disk is full" in disk_full(OSError(errno.ENOSPC, "No space left on device"), tmp_path)
    assert disk_full(RuntimeError("Error while serializing: I/O error: File too large (os error 27)"), tmp_path)
    assert disk_full(ValueError("a bug, not the disk"), tmp_path) is None
