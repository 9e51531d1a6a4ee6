"""Writing outputs so that no reader, no concurrent job and no kill ever sees half of one.

Every output is written into a fresh sibling with a unique name (so two jobs never share a temporary path), then
renamed into place in one step. A sibling left behind by a kill is hidden (a leading dot) and never read.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tunesmith import faults
from tunesmith.errors import TunesmithError


def atomic_write(path: Path, text: str) -> None:
    """A reader sees the old file or the new one, never half; a failed write leaves the old one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2, default=str))


def is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


@contextmanager
def staged_dir(dest: Path, *, replace: bool = False, fault: str | None = None) -> Iterator[Path]:
    """A fresh folder beside `dest` to write into; when the block ends it becomes `dest` in one rename, and
    when it fails it is removed. With `replace`, an existing `dest` is swapped out whole and then removed (only
    for folders tunesmith wrote); without it, a `dest` that is not empty by then is an error, not a mixed folder."""
    dest = Path(dest)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        yield tmp
        if fault:
            faults.point(fault)
        _publish(tmp, dest, replace)
    except Exception as err:
        full = disk_full(err, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise TunesmithError(
                f"{dest}: could not be written: {full}; nothing was changed there (an earlier complete one is kept)"
            ) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


DISK_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
DISK_MESSAGES = ("No space left", "File too large", "Disk quota", "os error 28", "os error 27", "os error 122")
PROBE = 1 << 20


def disk_full(err: BaseException, folder: Path) -> str | None:
    """Why a write failed, if the disk is full or a file-size limit was hit: torch, safetensors and pyarrow each
    raise their own type, so the error is read, and else a probe write of 1 MiB into `folder` says it."""
    if getattr(err, "errno", None) in DISK_ERRNOS or any(m in str(err) for m in DISK_MESSAGES):
        return f"the disk is full or a file-size limit was reached ({err})"
    try:
        with open(folder / ".probe", "wb") as f:
            f.write(b"\0" * PROBE)
    except OSError as probe:
        if probe.errno in DISK_ERRNOS:
            return f"the disk is full or a file-size limit was reached ({probe.strerror}; first: {err})"
    finally:
        (folder / ".probe").unlink(missing_ok=True)
    return None


def _publish(tmp: Path, dest: Path, replace: bool) -> None:
    if replace and dest.exists() and not is_empty_dir(dest):
        old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".old"))
        os.replace(dest, old / dest.name)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.replace(tmp, dest)  # onto an empty folder it succeeds; onto a non-empty one it fails, atomically
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise
        raise TunesmithError(
            f"{dest}: another job wrote it while this one ran; nothing of this job was written there"
        ) from None
