"""Log-probabilities of target tokens: summed as a loss (supervised tuning), per sequence (preference methods,
distillation, RL), and the mean loss of a split. The LM head runs on the target positions only: full
(B, T, vocab) logits of a 49k-token vocabulary would be most of the memory."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tunesmith.lm.tokens import IGNORE, Batch, Tokens


def target_logits(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, vocab) logits at the N target positions, their (N,) target ids, and the (N,) sequence of each: a row,
    or, for branch_rows, the sequence that "seq" names (each target then names the position that predicts it)."""
    # Packed rows carry position_ids that restart per example and a block-diagonal causal mask (4D), so no token
    # attends across an example boundary. (transformers' own detection of packing from position_ids alone did not
    # take effect here: measured, the loss then matched the unmasked one.)
    inputs = _inputs(batch)
    softcapped = _full_logits(model)
    if "pred" in batch:
        if softcapped:
            return model(**inputs).logits.flatten(0, 1)[batch["pred"]], batch["targets"], batch["seq"]
        hidden = model.get_decoder()(**inputs).last_hidden_state.flatten(0, 1)
        return model.get_output_embeddings()(hidden[batch["pred"]]), batch["targets"], batch["seq"]
    if softcapped:
        labels = batch["labels"][:, 1:]
        keep = labels != IGNORE
        logits = model(**inputs).logits[:, :-1][keep]
        return logits, labels[keep], _rows_of(keep)
    hidden, targets, rows = _target_hidden(model, batch)
    return model.get_output_embeddings()(hidden), targets, rows


def _full_logits(model: torch.nn.Module) -> bool:
    """The whole forward, logits at every position: where logits are post-processed (softcapping), or under FSDP,
    whose sharded weights are gathered by the model's own forward, not when its parts are called one by one."""
    from tunesmith.train.dist import is_sharded

    return bool(getattr(model.config, "final_logit_softcapping", None)) or is_sharded(model)


def _inputs(batch: Batch) -> dict:
    return {k: batch.get(k) for k in ("input_ids", "attention_mask", "position_ids")}


def _rows_of(keep: torch.Tensor) -> torch.Tensor:
    return torch.arange(keep.shape[0], device=keep.device)[:, None].expand_as(keep)[keep]


def _target_hidden(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, hidden) final hidden states at the target positions of a labelled batch, the targets and their rows."""
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE  # (B, T-1)
    hidden = model.get_decoder()(**_inputs(batch)).last_hidden_state
    return hidden[:, :-1][keep], labels[keep], _rows_of(keep)


CHUNK_ELEMENTS = 16 * 2**20  # logits (targets x vocab) past which the loss runs in chunks: 64 MB of fp32 each


def token_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Cross-entropy summed over target tokens; position t predicts token t+1. Many targets (raw text, where every
    token is one) are scored in chunks whose logits are recomputed in the backward, so the full (N, vocab) logits,
    their log-softmax and gradient (three times 800 MB for 8 x 512 tokens of a 49k vocabulary) are never held."""
    if "pred" in batch or _full_logits(model):
        logits, targets, _ = target_logits(model, batch)
        return F.cross_entropy(logits.float(), targets, reduction="sum")
    hidden, targets, _ = _target_hidden(model, batch)
    head = model.get_output_embeddings()
    rows = max(1, CHUNK_ELEMENTS // head.weight.shape[0])
    if len(targets) <= rows:
        return _chunk_loss(head, hidden, targets)
    total = hidden.new_zeros((), dtype=torch.float32)
    for at in range(0, len(targets), rows):
        part = (head, hidden[at : at + rows], targets[at : at + rows])
        total = total + checkpoint(_chunk_loss, *part, use_reentrant=False)
    return total


def _chunk_loss(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def sequence_logprobs(model: torch.nn.Module, batch: Batch, mean: bool = False) -> torch.Tensor:
    """(B,) log-probability of each row's targets (e.g. a response given its prompt), summed over its tokens, or
    with `mean` averaged over them (IPO compares length-normalised log-probs)."""
    logits, targets, rows = target_logits(model, batch)
    per_token = -F.cross_entropy(logits.float(), targets, reduction="none")  # (N,)
    n = batch["sequences"] if "pred" in batch else batch["labels"].shape[0]
    total = torch.zeros(n, device=per_token.device).index_add_(0, rows, per_token)
    if not mean:
        return total
    return total / torch.zeros_like(total).index_add_(0, rows, torch.ones_like(per_token)).clamp(min=1)


def reference_logprobs(model: torch.nn.Module, batch: Batch, mean: bool = False) -> torch.Tensor:
    """The reference model's sequence log-probs: precomputed in the batch (full fine-tuning: once, before
    training), or the same model with its LoRA adapter switched off. Never a second copy of the model."""
    if "ref" in batch:
        return batch["ref"]
    with torch.no_grad(), model.disable_adapter():
        return sequence_logprobs(model, batch, mean)


@torch.no_grad()
def split_logprobs(model: torch.nn.Module, data, batch_size: int, mean: bool = False) -> torch.Tensor:
    """(N, k) sequence log-probs over a split whose collate(idx) puts k rows per item (k groups of B rows, e.g.
    chosen then rejected); longest items first. The model should be in eval mode."""
    device = next(model.parameters()).device
    out = None
    order = np.argsort(-data.lengths, kind="stable")
    for at in range(0, len(order), batch_size):
        idx = order[at : at + batch_size]
        b = data.collate(idx)
        lp = sequence_logprobs(model, {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}, mean)
        per_item = lp.float().cpu().reshape(-1, len(idx)).T  # (B, k)
        if out is None:
            out = torch.zeros(len(data), per_item.shape[1])
        out[torch.as_tensor(idx)] = per_item
    return out if out is not None else torch.zeros(0, 1)


def precompute_references(model: torch.nn.Module, splits: dict, lora: bool, batch_size: int, mean: bool = False):
    """Reference log-probs of the untrained model, stored as each split's `ref`: for every split under full
    fine-tuning; under LoRA for all but train, whose batches switch the adapter off instead (reference_logprobs)."""
    model.eval()
    for name, split in splits.items():
        if not lora or name != "train":
            split.ref = split_logprobs(model, split, batch_size, mean)


@torch.no_grad()
def mean_loss(model: torch.nn.Module, data: Tokens, batch_size: int = 8) -> float:
    """Mean loss per target token over a split (its exp is the perplexity). The model should be in eval mode."""
    device = next(model.parameters()).device
    total, n = 0.0, 0
    order = np.argsort(-data.lengths, kind="stable")
    for i in range(0, len(order), batch_size):
        b = data.collate(order[i : i + batch_size])
        total += token_loss(model, {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}).item()
        n += b["n"]
    return total / max(n, 1)


def loss_metrics(loss: float) -> dict[str, float]:
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
