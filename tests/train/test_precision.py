import pytest
import torch

from tunesmith.errors import TunesmithError
from tunesmith.train.precision import autocast, pick_device, pick_precision


def test_cpu_auto_picks_by_measurement_and_says_why():
    precision, why = pick_precision("auto", torch.device("cpu"))
    assert precision in ("bf16", "fp32") and "CPU" in why


def test_fp16_on_cpu_is_a_clear_error():
    with pytest.raises(TunesmithError, match="fp16 needs a CUDA GPU"):
        pick_precision("fp16", torch.device("cpu"))


def test_cuda_requested_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(TunesmithError, match="no CUDA GPU"):
        pick_device("cuda")


def test_bf16_autocast_keeps_fp32_master_weights():
    layer = torch.nn.Linear(8, 8)
    with autocast(torch.device("cpu"), "bf16"):
        y = layer(torch.randn(2, 8))
    assert y.dtype == torch.bfloat16 and layer.weight.dtype == torch.float32
