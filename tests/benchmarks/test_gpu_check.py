"""benchmarks/gpu_check.sh on a machine without CUDA (CI, these CPUs): it must stop at once and say why."""

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_without_a_gpu_it_exits_at_once_saying_so(tmp_path):
    out = tmp_path / "gpu.json"
    env = os.environ | {"PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    start = time.perf_counter()
    done = subprocess.run([str(ROOT / "benchmarks" / "gpu_check.sh"), "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 3
    assert "no CUDA GPU is visible" in done.stderr and "nothing ran" in done.stderr
    assert not out.exists()
    assert time.perf_counter() - start < 60


def test_a_python_without_torch_is_named(tmp_path):
    env = os.environ | {"PYTHON": "/bin/false"}
    done = subprocess.run([str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True, text=True)
    assert done.returncode == 3 and "cannot import torch" in done.stderr


def test_a_python_lacking_tunesmiths_packages_names_them_before_running_anything(tmp_path):
    """A GPU machine's own Python: torch (here a stand-in that sees a GPU) but no site-packages for the rest."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("class cuda:\n    is_available = staticmethod(lambda: True)\n")
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH={tmp_path} exec {sys.executable} -S "$@"\n')
    python.chmod(0o755)
    out = tmp_path / "gpu.json"
    env = os.environ | {"PYTHON": str(python)}
    done = subprocess.run([str(ROOT / "benchmarks" / "gpu_check.sh"), "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 3 and "lacks these Python modules" in done.stderr and "nothing ran" in done.stderr
    assert "pydantic" in done.stderr and "transformers" in done.stderr and not out.exists()
