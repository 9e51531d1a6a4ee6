"""Attention that picks its kernel by sequence length on a CPU. torch's fused CPU kernel (SDPA, transformers'
default) works in blocks and pays for them on short rows: minilm-l6, bf16 autocast, one forward and backward on 2
cores of an AMX Xeon took 552 ms at 128 rows of 24 tokens against 230 ms written out as plain matmuls and a
softmax, and 645 vs 406 ms at 32 x 128; at 8 x 512 the fused kernel wins, 640 vs 1,648 ms
(benchmarks/attention_cpu.py; this dispatch: 249, 362 and 633 ms). So rows of up to
EAGER_UP_TO tokens take the plain path, longer ones, every GPU tensor and a compiled or exported model the fused
one; the result is the same.
"""

from __future__ import annotations

import torch

NAME = "tunesmith_cpu"
EAGER_UP_TO = 256  # tokens; between the 128 and 512 measured above


def attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: (batch, heads, length, head_dim) in; (batch, length, heads, head_dim)
    out. The mask comes as SDPA's (boolean, True where attended, or None), since NAME registers SDPA's masks."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    causal = kwargs.get("is_causal", getattr(module, "is_causal", False))
    if (
        torch.compiler.is_compiling()  # compiled or exported (ONNX): first, so no guard on a dynamic length is made
        or query.device.type != "cpu"
        or key.shape[-2] > EAGER_UP_TO
        or (causal and attention_mask is None)
    ):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)  # fmt: skip
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    probs = torch.nn.functional.dropout(scores.softmax(-1), p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def use_length_dispatch(model: torch.nn.Module) -> None:
    """The model's attention becomes `attention` where it runs transformers' SDPA now (an eager or flash model,
    or one whose architecture has no SDPA path, is left as it is)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if getattr(model.config, "_attn_implementation", None) == "sdpa":
        AttentionInterface.register(NAME, attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
        model.set_attn_implementation(NAME)
