"""Device and precision chosen at run time: many CPUs run bf16 far slower than fp32, so we time it."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from tunesmith.errors import TunesmithError


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise TunesmithError("train.device is cuda but no CUDA GPU is visible; use device: auto or cpu")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise TunesmithError("train.device is mps but MPS is not available; use device: auto or cpu")
    return torch.device(requested)


def _time_step(dtype: torch.dtype | None, reps: int = 3) -> float:
    """Seconds for a small training-shaped step (matmuls, GELU, layer norm, backward) under autocast."""
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):  # the probe must not move the training RNG
        layer = torch.nn.Sequential(
            torch.nn.Linear(384, 1536), torch.nn.GELU(), torch.nn.Linear(1536, 384), torch.nn.LayerNorm(384)
        )
    x = torch.randn(512, 384, generator=gen)
    best = float("inf")
    for _ in range(reps + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = layer(x).float().pow(2).mean()
        loss.backward()
        best = min(best, time.perf_counter() - start)
    return best


def cpu_bf16_is_faster() -> bool:
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    return _time_step(torch.bfloat16) < 0.8 * _time_step(None)


def _cpu_key() -> str:
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def cpu_bf16_is_faster_cached() -> bool:
    """Measured once per CPU model (in a child process, so that the probe's oneDNN state does not stay in
    the training process's memory) and remembered in $TUNESMITH_HOME/cpu_precision.json."""
    from tunesmith.models.zoo import home

    cache = home() / "cpu_precision.json"
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    key = _cpu_key()
    if key not in known:
        probe = "from tunesmith.train.precision import cpu_bf16_is_faster as f; print(int(f()))"
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            return cpu_bf16_is_faster()
        known[key] = done.stdout.strip().endswith("1")
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(known, indent=2))
        os.replace(tmp, cache)
    return bool(known[key])


def pick_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """(precision, why): the choice and the reason, reported in the run's metrics and eval.json."""
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if requested == "auto":
            return (
                ("bf16", "CUDA GPU with bf16") if bf16_ok else ("fp16", "CUDA GPU without bf16: fp16 with loss scaling")
            )
        if requested == "bf16" and not bf16_ok:
            raise TunesmithError("train.precision is bf16 but this GPU does not support it; use auto, fp16 or fp32")
        return requested, "requested"
    if device.type == "mps":
        return ("fp32", "MPS: fp32") if requested == "auto" else (requested, "requested")
    if requested == "fp16":
        raise TunesmithError("train.precision fp16 needs a CUDA GPU; on a CPU use auto, bf16 or fp32")
    if requested == "auto":
        if cpu_bf16_is_faster_cached():
            return "bf16", "CPU bf16 measured faster than fp32 on this CPU"
        return "fp32", "CPU bf16 not faster than fp32 on this CPU (measured once, cached)"
    return requested, "requested"


def compute_dtype(precision: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def autocast(device: torch.device, precision: str):
    """bf16/fp16 autocast with fp32 master weights, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=compute_dtype(precision))
