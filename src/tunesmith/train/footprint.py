"""The peak memory a config will need, known before training starts: a config that cannot fit fails in seconds
with the settings to lower, not by an out-of-memory kill halfway through an epoch.

A model from the model's config (no weights loaded) and the precision the run will use (`auto` resolved as the
loop resolves it): fp32 weights (LoRA's frozen linear weights in 16 bits under bf16/fp16, train/frozen.py, but not
where an engine shards them or the method generates with the model), gradients and AdamW's two moments for what
trains (and, under autocast, the 16-bit copies of the linear weights not held that it keeps for the backward), the
activations autograd keeps for the longest forward pass (batch_size x max_length tokens, or one part of
train.batch_tokens where the method runs a batch in parts; the loop runs the longest batch first), the attention
probabilities where attention runs as plain matmuls (on a CPU, rows of up to models/attention.py's EAGER_UP_TO
tokens, CAUSAL_UP_TO for causal ones), the LM head's logits at the target positions, and the runtime (Python,
torch, transformers, the tokenizer, the data).
The constants were fitted on smollm2-135m (LoRA r16 on all linear layers and full fine-tuning, bf16 and fp32,
DialogSum packed into rows of 256 to 2,048 tokens, 4,096 tokens a batch in parts of 1,024: benchmarks/sft_levers.py
--no-levers, which records each estimate beside the measured peak), so that the estimate is above every one of
those peaks, by 1-11%; encoders are not fitted. On a CUDA GPU everything but the runtime lives in the GPU's memory
and is checked against what the GPU has free (not fitted on a GPU: no GPU has been at hand).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from tunesmith.config import RunConfig
from tunesmith.errors import TunesmithError

RUNTIME_MB = 900.0
CUDA_CONTEXT_MB = 500.0  # the CUDA context and kernels torch loads on the GPU
# floats autograd keeps per token and layer, as multiples of the hidden and the MLP width, and the bytes each one
# costs at the peak, in 16-bit autocast or fp32 (fp32 keeps about twice as much: every saved tensor is 4 bytes)
ACTIVATION_FLOATS = {"hidden": 7.5, "mlp": 3.0}
BYTES_PER_FLOAT = {"low": 6.0, "fp32": 11.5}
# bytes per attention probability (heads x length per token and layer) where attention runs as plain matmuls
BYTES_PER_SCORE = {"low": 7.0, "fp32": 14.0}
MB = 1024 * 1024


@dataclass(frozen=True)
class Footprint:
    weights_mb: float
    optimizer_mb: float  # gradients and AdamW's moments of the trained parameters
    activations_mb: float
    logits_mb: float
    runtime_mb: float

    @property
    def total_mb(self) -> float:
        return self.weights_mb + self.optimizer_mb + self.activations_mb + self.logits_mb + self.runtime_mb

    @property
    def on_gpu_mb(self) -> float:
        """What a CUDA GPU holds: all but the host's runtime, and the CUDA context."""
        return self.total_mb - self.runtime_mb + CUDA_CONTEXT_MB

    def report(self) -> dict:
        return {k: round(v) for k, v in asdict(self).items()} | {"total_mb": round(self.total_mb)}


def _sizes(config) -> dict[str, int]:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    d = int(text.hidden_size)
    heads = int(text.num_attention_heads)
    kv = int(getattr(text, "num_key_value_heads", None) or heads) * (d // heads)
    f = int(getattr(text, "intermediate_size", None) or 4 * d)
    gated = getattr(text, "hidden_act", "gelu") in ("silu", "swiglu") or hasattr(text, "mlp_bias")
    layer = d * (d + 2 * kv) + d * d + (3 if gated else 2) * d * f
    vocab, layers = int(text.vocab_size), int(text.num_hidden_layers)
    linear = layers * layer  # the blocks' linear weights
    return {"d": d, "f": f, "layers": layers, "vocab": vocab, "params": vocab * d + linear, "linear": linear,
            "heads": heads}  # fmt: skip


def _lora_params(s: dict[str, int], r: int) -> int:
    """A and B of every linear layer of a block (all-linear: the upper bound)."""
    d, f = s["d"], s["f"]
    return s["layers"] * r * (4 * (d + d) + 3 * (d + f))


def estimate(cfg: RunConfig, config) -> Footprint:
    """The footprint of the run config on the model whose transformers config is `config`."""
    from tunesmith import methods
    from tunesmith.lm.logprobs import CHUNK_ELEMENTS
    from tunesmith.models.attention import CAUSAL_UP_TO, EAGER_UP_TO
    from tunesmith.train.batches import token_budget
    from tunesmith.train.frozen import held
    from tunesmith.train.precision import pick_device, pick_precision

    causal = any(a.endswith("ForCausalLM") for a in (config.architectures or []))
    s = _sizes(config)
    t = cfg.train
    device = pick_device(t.device)
    precision = pick_precision(t.precision, device)[0]
    low = precision != "fp32"
    method = methods.get(cfg.method)
    kind = "low" if low else "fp32"
    trained = _lora_params(s, cfg.lora.r) if cfg.lora else s["params"]
    tokens = t.batch_size * t.max_length
    budget = token_budget(t.batch_tokens, device.type)
    if budget and "train.batch_tokens" in method.options:  # the method runs a batch in parts
        tokens = min(tokens, max(budget, t.max_length))
    per_token = (ACTIVATION_FLOATS["hidden"] * s["d"] + ACTIVATION_FLOATS["mlp"] * s["f"]) * BYTES_PER_FLOAT[kind]
    if device.type == "cpu" and t.max_length <= (CAUSAL_UP_TO if causal else EAGER_UP_TO):  # as attention.py
        per_token += s["heads"] * t.max_length * BYTES_PER_SCORE[kind]
    # the LM head's logits, log-softmax and gradient, for at most every token, in chunks past CHUNK_ELEMENTS
    logits = 3 * min(tokens * s["vocab"], CHUNK_ELEMENTS) * 4 if causal else 0
    weights = s["params"] * 4
    if cfg.lora and held(precision, t.distributed.strategy, method.samples_from_model):
        weights -= s["linear"] * 2  # the frozen linear weights held in 16 bits
    elif low:
        weights += s["linear"] * 2  # autocast's 16-bit copies of the linear weights, kept for the backward
    return Footprint(
        weights_mb=weights / MB,
        optimizer_mb=trained * 12 / MB,
        activations_mb=s["layers"] * tokens * per_token / MB,
        logits_mb=logits / MB,
        runtime_mb=RUNTIME_MB,
    )


def memory_limit_mb() -> float:
    """The memory this process may use: the machine's, or its cgroup's limit where lower."""
    limit = psutil.virtual_memory().total
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            value = Path(path).read_text().strip()
        except OSError:
            continue
        if value.isdigit():
            limit = min(limit, int(value))
    return limit / MB


def gpu_free_mb(device) -> float:
    """What the CUDA GPU has free now (other processes' memory excluded)."""
    import torch

    return torch.cuda.mem_get_info(device)[0] / MB


def check_fits(cfg: RunConfig, config) -> Footprint:
    """The estimate, or an error naming what to lower when it is above the memory this process may use: the
    machine's, or on a CUDA GPU the GPU's free memory for all but the runtime (which stays in the host's)."""
    from tunesmith.train.precision import pick_device

    need = estimate(cfg, config)
    device = pick_device(cfg.train.device)
    if device.type == "cuda":
        _fail_if_above(cfg, need, need.on_gpu_mb, gpu_free_mb(device), f"the GPU ({device}) has free")
        _fail_if_above(cfg, need, need.runtime_mb + need.weights_mb, memory_limit_mb(), "this machine allows")
    else:
        _fail_if_above(cfg, need, need.total_mb, memory_limit_mb(), "this machine allows")
    return need


def _fail_if_above(cfg: RunConfig, need: Footprint, mb: float, limit: float, where: str) -> None:
    if mb <= limit:
        return
    t = cfg.train
    parts = ", ".join(f"{k.removesuffix('_mb')} {v:,} MB" for k, v in need.report().items() if k != "total_mb")
    raise TunesmithError(
        f"this config needs about {mb:,.0f} MB at its peak ({parts}) and {where} {limit:,.0f} MB: lower "
        f"train.batch_size ({t.batch_size}; raise train.grad_accum to keep the effective batch) or train.max_length "
        f"({t.max_length})" + ("" if cfg.lora else ", or train a LoRA adapter (lora: {r: 16})")
    )
