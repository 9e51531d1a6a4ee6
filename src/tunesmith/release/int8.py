"""A causal LM with int8 weights, through transformers' torchao integration.

Weight-only int8 (torchao's Int8WeightOnlyConfig): the linear weights in a quarter of their float32 bytes, the
activations left in float. It is an export for size: on the development CPU (benchmarks/compress.py) it generated
at 0.80x-0.89x float32's tokens per second. The folder is a transformers one whose config names the quantisation,
so `from_pretrained` restores it (torchao installed).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch


def write_int8(source: Path, out: Path) -> None:
    """The causal LM in `source` (a transformers folder) with int8 linear weights, saved with its tokenizer to
    `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, TorchAoConfig

    config = TorchAoConfig(int8_config())
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, quantization_config=config)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)


def int8_config():
    """torchao's weight-only int8 config, imported without the notices of its GPU kernels it cannot load here."""
    logging.getLogger("torchao").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.quantization import Int8WeightOnlyConfig

    return Int8WeightOnlyConfig()
