"""The order of training examples: shuffled per epoch, and grouped by length so that batches pad little; and a
batch cut into parts that bound the tokens of one forward pass."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def order_batches(lengths: np.ndarray, batch_size: int, seed: int, group_by_length: bool) -> list[np.ndarray]:
    """Shuffled batches. With grouping, the shuffled rows are cut into windows of about 50 batches, each
    sorted by length so that a batch pads little, and the batches are then shuffled again so that lengths do
    not drift through the epoch. The longest batch of all comes first: out-of-memory shows at step 1."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    if group_by_length:
        parts = np.array_split(order, max(1, -(-len(order) // (batch_size * 50))))
        order = np.concatenate([w[np.argsort(-lengths[w], kind="stable")] for w in parts])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
        longest = max(range(len(batches)), key=lambda i: lengths[batches[i]].max())
        batches[0], batches[longest] = batches[longest], batches[0]
    return batches


CPU_BATCH_TOKENS = 1024  # train.batch_tokens auto on a CPU (config.py says what it was measured on)


def token_budget(setting: int | str | None, device_type: str) -> int | None:
    """train.batch_tokens resolved for the device: None means one forward pass per batch."""
    if setting == "auto":
        return CPU_BATCH_TOKENS if device_type == "cpu" else None
    return setting


def split_by_tokens(rows: np.ndarray, lengths: np.ndarray, budget: int) -> list[np.ndarray]:
    """The batch's rows, longest first, cut into parts of at most `budget` padded tokens (rows x the part's
    longest row); a row longer than the budget is a part of its own."""
    order = rows[np.argsort(-lengths[rows], kind="stable")]
    parts, at = [], 0
    while at < len(order):
        take = max(1, budget // max(1, int(lengths[order[at]])))
        parts.append(order[at : at + take])
        at += take
    return parts


def splitter(lengths: np.ndarray) -> Callable[[np.ndarray, int], list[np.ndarray]]:
    """Task.split for a method whose plan items are rows of these lengths and whose loss is a sum over rows."""
    return lambda rows, budget: split_by_tokens(rows, lengths, budget)
