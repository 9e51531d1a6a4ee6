"""A fine-tuned Llama-family causal LM as one GGUF file, the format llama.cpp and Ollama run.

llama.cpp's own converter (convert_hf_to_gguf.py) is a script in its repository, not part of the `gguf` package,
so the few steps it takes for the Llama architecture are written here with the package's writer, names and
quantiser: hyperparameters under `llama.*`, the tokenizer's BPE vocabulary and merges, tensors renamed to GGUF's
names, and the query/key rows permuted to llama.cpp's rotary layout (transformers' GGUF reader undoes this).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from tunesmith.errors import TunesmithError

GGUF_FILE = "model.gguf"
TYPES = {"q8_0": "MOSTLY_Q8_0", "f16": "MOSTLY_F16", "f32": "ALL_F32"}  # linear weights' type: the file's (norms F32)
_NAMES = {  # transformers' Llama parameter -> GGUF tensor (per block where {i} appears)
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "blk.{i}.attn_q.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "blk.{i}.attn_k.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "blk.{i}.attn_v.weight",
    "model.layers.{i}.self_attn.o_proj.weight": "blk.{i}.attn_output.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "blk.{i}.ffn_gate.weight",
    "model.layers.{i}.mlp.up_proj.weight": "blk.{i}.ffn_up.weight",
    "model.layers.{i}.mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
}


def write_gguf(model: torch.nn.Module, tokenizer, out: Path, *, outtype: str = "q8_0", pre: str = "default") -> None:
    """model (a transformers LlamaForCausalLM, LoRA merged) and its tokenizer as the GGUF file `out`. `pre` names
    llama.cpp's pre-tokenizer; the exporter passes the base model's own where it came from a GGUF file."""
    import gguf

    cfg = model.config
    if cfg.model_type != "llama":
        raise TunesmithError(
            f"GGUF export covers the Llama architecture (SmolLM2, Llama, TinyLlama); this model is {cfg.model_type!r}: "
            "export it with --format merged and convert that folder with llama.cpp's convert_hf_to_gguf.py"
        )
    if outtype not in TYPES:
        raise TunesmithError(f"GGUF type {outtype!r} is not one of {', '.join(TYPES)}")
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name(out.stem)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(_head_dim(cfg))
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(getattr(gguf.LlamaFileType, TYPES[outtype]).value)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_tokenizer(w, tokenizer, cfg.vocab_size, pre)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        _add_tensor(w, gguf_name(name), _layout(name, tensor.float().numpy(), cfg), outtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def gguf_name(name: str) -> str:
    parts = name.split(".")
    block = parts[2] if name.startswith("model.layers.") else None
    key = name.replace(f".{block}.", ".{i}.", 1) if block else name
    if key not in _NAMES:
        raise TunesmithError(f"GGUF export: the tensor {name} has no GGUF name; only plain Llama weights convert")
    return _NAMES[key].format(i=block)


def _head_dim(cfg) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def _layout(name: str, data: np.ndarray, cfg) -> np.ndarray:
    """Query and key rows reordered from transformers' rotate-half layout to llama.cpp's interleaved pairs."""
    if name.endswith("q_proj.weight"):
        return _permute(data, cfg.num_attention_heads)
    if name.endswith("k_proj.weight"):
        return _permute(data, cfg.num_key_value_heads)
    return data


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _add_tensor(w, name: str, data: np.ndarray, outtype: str) -> None:
    import gguf

    if data.ndim == 1 or outtype == "f32":
        w.add_tensor(name, data.astype(np.float32))
    elif outtype == "f16":
        w.add_tensor(name, data.astype(np.float16))
    else:
        qtype = gguf.GGMLQuantizationType.Q8_0
        w.add_tensor(name, gguf.quants.quantize(data.astype(np.float32), qtype), raw_dtype=qtype)


def _add_tokenizer(w, tokenizer, vocab_size: int, pre: str) -> None:
    """The byte-level BPE vocabulary (GGUF's "gpt2" model): tokens by id, their kinds, the merges, special ids."""
    import gguf

    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    if backend["model"]["type"] != "BPE":
        raise TunesmithError(f"GGUF export covers byte-level BPE tokenizers; this one is {backend['model']['type']}")
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {a["id"]: a["special"] for a in backend.get("added_tokens", [])}
    tokens, kinds = [], []
    for i in range(vocab_size):
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        if i not in by_id:
            kinds.append(gguf.TokenType.UNUSED)
        elif i in added:
            kinds.append(gguf.TokenType.CONTROL if added[i] else gguf.TokenType.USER_DEFINED)
        else:
            kinds.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([k.value for k in kinds])
    w.add_token_merges(merges)
    w.add_add_bos_token(False)
    w.add_add_space_prefix(False)
    for key, add in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id), ("pad", w.add_pad_token_id),
                     ("unk", w.add_unk_token_id)):  # fmt: skip
        if (token_id := getattr(tokenizer, f"{key}_token_id", None)) is not None:
            add(token_id)
    if tokenizer.chat_template:
        w.add_chat_template(tokenizer.chat_template)


def source_pre(gguf_file: Path) -> str | None:
    """The pre-tokenizer name in a GGUF file (the base model's, where it came as one)."""
    import gguf

    field = gguf.GGUFReader(gguf_file).fields.get("tokenizer.ggml.pre")
    return field.contents() if field is not None else None
