"""The peak memory a config will need, known before training starts: a config that cannot fit fails in seconds
with the settings to lower, not by an out-of-memory kill halfway through an epoch.

An upper-bound model from the model's config (no weights loaded): fp32 weights (LoRA's frozen linear weights in 16
bits where the precision is set to bf16 or fp16; auto may stay fp32), gradients and AdamW's two moments for what
trains, the activations autograd keeps for the longest forward pass (batch_size x max_length
tokens, or train.batch_tokens where the method runs a batch in parts; the loop runs the longest batch first),
the LM head's logits at the target positions, and the runtime (Python, torch, transformers, the tokenizer).
ACTIVATION_FLOATS was fitted on one config: smollm2-135m, LoRA r16 on all linear layers, bf16 autocast, one
forward pass of 8 rows of up to 503 tokens (benchmarks/sft_speed.py, which records each estimate beside the
measured peak: 7,743 vs 7,748 MB), HEAP_KEPT on the same batches in parts; fp32 and encoders are not fitted yet.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from tunesmith.config import RunConfig
from tunesmith.errors import TunesmithError

RUNTIME_MB = 700.0
# floats autograd keeps per token and layer, as multiples of the hidden and the MLP width
ACTIVATION_FLOATS = {"hidden": 7.5, "mlp": 3.0}
# A batch run in parts (train.batch_tokens) peaks above one part's activations: glibc's heap keeps about this share
# of what the rest of the batch would have held, as parts of different lengths come and go. Fitted on
# benchmarks/sft_speed.py of 2026-12-04 (smollm2-135m, batches of 8 x 512 in parts of 1,024 tokens): LoRA 4,819 MB
# measured, 4,824 estimated; full fine-tuning 6,112 measured, 6,302 estimated.
HEAP_KEPT = 0.38
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
    from tunesmith.train.batches import token_budget
    from tunesmith.train.precision import pick_device

    causal = any(a.endswith("ForCausalLM") for a in (config.architectures or []))
    s = _sizes(config)
    t = cfg.train
    trained = _lora_params(s, cfg.lora.r) if cfg.lora else s["params"]
    low = t.precision != "fp32"  # auto may choose bf16: the upper bound
    held = cfg.lora is not None and t.precision in ("bf16", "fp16")  # frozen weights in 16 bits: train/frozen.py
    per_float = 4 + (2 if low else 0)  # autocast keeps a 16-bit copy beside most fp32 activations
    tokens = whole = t.batch_size * t.max_length
    budget = token_budget(t.batch_tokens, pick_device(t.device).type)
    if budget and "train.batch_tokens" in methods.get(cfg.method).options:  # the method runs a batch in parts
        part = min(whole, max(budget, t.max_length))
        tokens = part + HEAP_KEPT * (whole - part)
    per_token = ACTIVATION_FLOATS["hidden"] * s["d"] + ACTIVATION_FLOATS["mlp"] * s["f"]
    if not causal:
        per_token += s["heads"] * t.max_length  # encoders: attention probabilities (dropout needs the math path)
    # the LM head's logits, log-softmax and gradient, for at most every token, in chunks past CHUNK_ELEMENTS
    logits = 3 * min(tokens * s["vocab"], CHUNK_ELEMENTS) * 4 if causal else 0
    return Footprint(
        weights_mb=(s["params"] * 4 - (s["linear"] * 2 if held else 0)) / MB,
        optimizer_mb=trained * 12 / MB,
        activations_mb=s["layers"] * tokens * per_token * per_float / MB,
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


def check_fits(cfg: RunConfig, config) -> Footprint:
    """The estimate, or an error naming what to lower when it is above the memory this process may use."""
    need = estimate(cfg, config)
    limit = memory_limit_mb()
    if need.total_mb > limit:
        t = cfg.train
        parts = ", ".join(f"{k.removesuffix('_mb')} {v:,} MB" for k, v in need.report().items() if k != "total_mb")
        raise TunesmithError(
            f"this config needs about {need.total_mb:,.0f} MB at its peak ({parts}) and this machine allows "
            f"{limit:,.0f} MB: lower train.batch_size ({t.batch_size}; raise train.grad_accum to keep the effective "
            f"batch) or train.max_length ({t.max_length})"
            + ("" if cfg.lora else ", or train a LoRA adapter (lora: {r: 16})")
        )
    return need
