"""Attention that picks its kernel by sequence length on a CPU. torch's fused CPU kernel (SDPA, transformers'
default) works in blocks and pays for them on short rows: minilm-l6, bf16 autocast, one forward and backward on 2
cores of an AMX Xeon took 552 ms at 128 rows of 24 tokens against 230 ms written out as plain matmuls and a
softmax, and 645 vs 406 ms at 32 x 128; at 8 x 512 the fused kernel wins, 640 vs 1,648 ms
(benchmarks/attention_cpu.py; this dispatch: 249, 362 and 633 ms). So rows of up to
EAGER_UP_TO tokens take the plain path, longer ones, every GPU tensor and a compiled or exported model the fused
one; the result is the same. Causal attention's fused backward is slower still: a smollm2-135m LoRA step (batches
of 8 DialogSum rows of up to 508 tokens, in parts of 1,024 tokens, bf16) ran 630-638 tokens/s with rows of up to
512 tokens on the plain path against 606 with SDPA throughout, and 603 with the encoders' 256; so causal rows go
up to CAUSAL_UP_TO. The plain path scales the scores in place and adds the mask as a bias built once per forward:
an out-of-place scale and masked_fill, with masked_fill's own pass over the gradient in the backward, were three
more passes over every layer's batch x heads x T x T scores.
"""

from __future__ import annotations

import functools

import torch

NAME = "tunesmith_cpu"
EAGER_UP_TO = 256  # tokens; between the 128 and 512 measured above
CAUSAL_UP_TO = 512  # tokens: causal attention (longer rows would keep T x T probabilities per layer)


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
    out. The mask comes as SDPA's (boolean, True where attended, or None), since NAME registers SDPA's masks, or
    additive where the caller built its own 4D mask."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    causal = kwargs.get("is_causal", getattr(module, "is_causal", False))
    if (
        torch.compiler.is_compiling()  # compiled or exported (ONNX): first, so no guard on a dynamic length is made
        or query.device.type != "cpu"
        or key.shape[-2] > (CAUSAL_UP_TO if causal else EAGER_UP_TO)
    ):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)  # fmt: skip
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    # in place: matmul's backward needs only its inputs, and adding a mask needs no pass in the backward
    scores = torch.matmul(query, key.transpose(2, 3)).mul_(query.shape[-1] ** -0.5 if scaling is None else scaling)
    if causal and attention_mask is None and query.shape[-2] > 1:  # rows without padding: SDPA's is_causal mask
        attention_mask = _causal(query.shape[-2], query.device)
    if attention_mask is not None and attention_mask.dtype == torch.bool and scores.dtype != torch.float16:
        scores.add_(_bias(attention_mask, scores.dtype))
    elif attention_mask is not None and attention_mask.dtype == torch.bool:  # float16's lowest + a score can be -inf
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    elif attention_mask is not None:  # an additive mask (a caller's own 4D one), as SDPA takes it
        scores = scores + attention_mask
    probs = torch.nn.functional.dropout(scores.softmax(-1), p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


@functools.lru_cache(maxsize=4)
def _causal(length: int, device: torch.device) -> torch.Tensor:
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


_last_bias: list = []  # (mask, its version, dtype, bias): every layer of a forward gets the same mask


def _bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The boolean mask as 0 where attended and dtype's lowest value elsewhere, built once per forward rather than
    once per layer. Adding it gives what masked_fill gives, bit for bit, in bfloat16 and float32: a score is far
    below half a unit in the last place of that lowest value, so the sum rounds back to it."""
    if _last_bias and _last_bias[0] is mask and _last_bias[1] == mask._version and _last_bias[2] == dtype:
        return _last_bias[3]
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)
    _last_bias[:] = [mask, mask._version, dtype, bias]
    return bias


def use_length_dispatch(model: torch.nn.Module) -> None:
    """The model's attention becomes `attention` where it runs transformers' SDPA now (an eager or flash model,
    or one whose architecture has no SDPA path, is left as it is)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if getattr(model.config, "_attn_implementation", None) == "sdpa":
        AttentionInterface.register(NAME, attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
        model.set_attn_implementation(NAME)
