"""benchmarks/sft_levers.py's profile: each op's share and each matmul shape's rate, from torch.profiler's events."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from sft_levers import op_profile  # noqa: E402


def test_the_profile_counts_each_matmuls_flops_by_shape():
    x, w, b = torch.randn(64, 32), torch.randn(32, 16), torch.randn(4, 8, 32)
    out = torch.zeros(64, 16)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(3):
            x @ w
            out.addmm_(x, w)
            torch.addmm(torch.zeros(16), x, w)
            torch.bmm(b, b.transpose(1, 2))
    got = op_profile(prof)
    rows = {(m["op"], m["k"], m["n"]): m for m in got["matmuls"]}
    assert set(rows) == {("aten::mm", 32, 16), ("aten::addmm_", 32, 16), ("aten::addmm", 32, 16), ("aten::bmm", 32, 8)}
    assert all(m["calls"] == 3 and m["gflops"] > 0 for m in rows.values())
    assert rows[("aten::mm", 32, 16)]["flops"] == rows[("aten::addmm_", 32, 16)]["flops"] == 3 * 2 * 64 * 32 * 16
    assert rows[("aten::bmm", 32, 8)]["flops"] == 3 * 2 * 4 * 8 * 32 * 8
    assert 0 < sum(m["share"] for m in rows.values()) < 1 and "aten::bmm" in got["self_cpu_share"]
