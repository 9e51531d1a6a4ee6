"""Faults, as a user meets them: the CLI in its own process, stopped by SIGKILL or SIGINT at the worst moment of
each write (faults.point), run twice at once, or out of disk (a file-size limit). Afterwards nothing half-written
is trusted: the run resumes or fails cleanly, and its registry row says what happened."""

from __future__ import annotations

import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import tiny_config
from tunesmith import api
from tunesmith.errors import TunesmithError

KILLED, INTERRUPTED = -9, 130


def cli(*args: str, kill_at: str | None = None, file_limit: int | None = None, wait: bool = True):
    env = {k: v for k, v in os.environ.items() if k != "TUNESMITH_KILL_AT"} | (
        {"TUNESMITH_KILL_AT": kill_at} if kill_at else {}
    )

    def limit():
        # a suite started in the background by a shell without job control ignores SIGINT, and a child would inherit
        # that: the SIGINT test then interrupts nothing
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if file_limit:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    proc = subprocess.Popen(
        [sys.executable, "-m", "tunesmith.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=limit,
    )
    if not wait:
        return proc
    output, _ = proc.communicate(timeout=300)
    return proc.returncode, output


@pytest.fixture
def config(tmp_path, tiny_model, fixtures) -> Path:
    """A run that checkpoints at steps 10, 20 and 30 and saves its model at step 34."""
    cfg = tiny_config(tiny_model, fixtures / "sst2_train.tsv", tmp_path, eval={"baseline": False})
    cfg["train"]["precision"] = "fp32"  # auto may pick bf16 by a timing, which differs between processes
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def only_run(tmp_path: Path) -> tuple[dict, Path]:
    rows = api.list_runs(tmp_path / "runs")
    assert len(rows) == 1, rows
    return rows[0], Path(rows[0]["path"])


def no_staged_leftovers_trusted(run_dir: Path) -> None:
    """A kill leaves at most hidden staging folders, which no command reads."""
    for p in run_dir.rglob("*.tmp"):
        assert p.name.startswith("."), p


def test_sigkill_while_preparing_leaves_no_folder_and_a_rerun_works(tmp_path, config):
    out = tmp_path / "prepared"
    code, _ = cli("prepare", str(config), "--out", str(out), kill_at="prepare")
    assert code == KILLED and not out.exists()
    code, output = cli("prepare", str(config), "--out", str(out))
    assert code == 0, output
    assert {p.name for p in out.iterdir()} == {"train.parquet", "val.parquet", "test.parquet", "data_report.json"}


def test_sigkill_while_training_prepares_reads_killed_and_cannot_be_trusted(tmp_path, config):
    code, _ = cli("train", str(config), "-q", kill_at="prepare")
    assert code == KILLED
    row, run_dir = only_run(tmp_path)
    assert row["status"] == "killed" and not (run_dir / "data").exists()
    with pytest.raises(TunesmithError, match="is killed"):
        api.predict(run_dir, ["hi"])
    with pytest.raises(TunesmithError, match="stopped before its data was prepared"):
        api.train(None, resume=run_dir)
    assert api.clean_runs(tmp_path / "runs")[0]["id"] == row["id"]
    assert api.list_runs(tmp_path / "runs")[0]["status"] == "killed"  # written now, not only read


@pytest.mark.parametrize(
    "point, signal_code", [("checkpoint@2", KILLED), ("model", KILLED), ("checkpoint@2:SIGINT", INTERRUPTED)]
)
def test_a_stopped_run_resumes_to_the_weights_of_a_straight_run(tmp_path, config, point, signal_code):
    code, output = cli("train", str(config), "-q", kill_at=point)
    assert code == signal_code, output
    row, run_dir = only_run(tmp_path)
    assert row["status"] == ("killed" if signal_code == KILLED else "failed")
    assert not (run_dir / "model").exists() and not (run_dir / "eval.json").exists()
    no_staged_leftovers_trusted(run_dir)
    steps = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if not p.name.startswith("."))
    assert steps == (["step-10"] if point.startswith("checkpoint") else ["step-20", "step-30"])
    code, output = cli("train", "--resume", str(run_dir), "-q")
    assert code == 0, output
    code, output = cli("train", str(config), "-q", "--set", f"output_dir={tmp_path / 'straight'}")  # its own process
    assert code == 0, output
    straight = next(p for p in (tmp_path / "straight").iterdir() if p.is_dir())
    a, b = (load_file(d / "model" / "model.safetensors") for d in (run_dir, straight))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    resumed = json.loads((run_dir / "eval.json").read_text())["tuned"]
    assert resumed == json.loads((straight / "eval.json").read_text())["tuned"]
    assert api.list_runs(tmp_path / "runs")[0]["status"] == "done"


def test_sigkill_while_writing_the_report_keeps_the_done_run(tmp_path, config):
    code, _ = cli("train", str(config), "-q", kill_at="report")
    assert code == KILLED
    row, run_dir = only_run(tmp_path)
    assert row["status"] == "done" and (run_dir / "eval.json").is_file() and not (run_dir / "report.html").exists()
    assert api.predict(run_dir, ["a fine film"])[0]["label"] in {"0", "1"}


def test_a_full_disk_while_checkpointing_is_a_clear_error_and_the_last_checkpoint_resumes(tmp_path, config):
    code, _ = cli("train", str(config), "-q", kill_at="checkpoint@2")
    assert code == KILLED
    _, run_dir = only_run(tmp_path)
    code, output = cli("train", "--resume", str(run_dir), "-q", file_limit=100_000)  # a checkpoint is ~0.7 MB
    assert code == 2 and "Traceback" not in output, output
    assert "could not be written" in output and "file-size limit" in output and "step-20" in output
    row, _ = only_run(tmp_path)
    assert row["status"] == "failed" and "could not be written" in row["error"]
    assert [p.name for p in (run_dir / "checkpoints").iterdir() if not p.name.startswith(".")] == ["step-10"]
    code, output = cli("train", "--resume", str(run_dir), "-q")
    assert code == 0, output
    assert only_run(tmp_path)[0]["status"] == "done"


def test_a_full_disk_while_preparing_is_a_clear_error_and_writes_nothing(tmp_path, config):
    out = tmp_path / "prepared"
    code, output = cli("prepare", str(config), "--out", str(out), file_limit=4_000)
    assert code == 2 and "Traceback" not in output and "could not be written" in output, output
    assert not out.exists()


def test_two_trains_and_two_prepares_at_once_never_collide(tmp_path, config):
    trains = [cli("train", str(config), "-q", wait=False) for _ in range(2)]
    out = tmp_path / "prepared"
    prepares = [cli("prepare", str(config), "--out", str(out), wait=False) for _ in range(2)]
    done = [(p.wait(timeout=300), p.stdout.read()) for p in trains + prepares]
    assert [c for c, _ in done[:2]] == [0, 0], done[:2]
    rows = api.list_runs(tmp_path / "runs")
    assert [r["status"] for r in rows] == ["done", "done"] and len({r["path"] for r in rows}) == 2
    with sqlite3.connect(tmp_path / "runs" / "registry.sqlite") as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    codes = sorted(c for c, _ in done[2:])
    assert codes == [0, 2], done[2:]  # the second is refused: before it starts, or when it would publish
    refused = [o for c, o in done[2:] if c == 2]
    assert all("not empty" in o or "another job wrote it" in o for o in refused), refused
    report = json.loads((out / "data_report.json").read_text())
    assert {s: pq.read_metadata(out / f"{s}.parquet").num_rows for s in report["rows"]} == report["rows"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".prepared.")]
