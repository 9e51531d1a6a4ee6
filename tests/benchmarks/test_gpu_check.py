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
