"""Token ids and loss targets for causal LMs: one split at a time (Tokens), several examples per row (Packed),
sequences that share a prompt in one row each (branch_rows), and windows of a general-text file. A target of
IGNORE is no loss; position t predicts token t+1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tunesmith.errors import TunesmithError
from tunesmith.lm.chat import as_messages, render

IGNORE = -100
Batch = dict[str, torch.Tensor | int]


def encode(tokenizer, row: dict, shape: str, loss_on: str = "replies") -> tuple[list[int], list[int]]:
    """Ids and targets of one example: raw text is a target everywhere; a conversation on its assistant replies
    (with their end-of-turn markers), or everywhere with loss_on="all"."""
    if shape == "text":
        ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"]
        return ids, list(ids)
    text, spans = render(tokenizer, as_messages(row))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    if loss_on == "all":
        return ids, list(ids)
    targets = [t if any(a <= s < b for a, b in spans) else IGNORE for t, (s, _) in zip(ids, enc["offset_mapping"])]
    return ids, targets


def reply_tokens(tokenizer, prompt: list[dict], reply: str, max_length: int) -> tuple[list[int], list[int], bool]:
    """Ids and reply targets of prompt turns + one assistant reply, cut to the last max_length tokens (a long
    prompt loses its start, so that the reply, at the end, stays), and whether it was cut."""
    ids, targets = encode(tokenizer, {"messages": [*prompt, {"role": "assistant", "content": reply}]}, "chat")
    return ids[-max_length:], targets[-max_length:], len(ids) > max_length


def has_targets(targets: list[int]) -> bool:
    """Whether a (truncated) example still has a token to learn from; the first token is never predicted."""
    return any(t != IGNORE for t in targets[1:])


def no_target_error(split: str, n: int, max_length: int) -> TunesmithError:
    return TunesmithError(
        f"{split} example {n + 1} (data/{split}.parquet): its prompt fills train.max_length="
        f"{max_length} tokens, so no reply token is left; raise train.max_length, or set "
        f"data.on_error: skip to skip and count such examples"
    )


def pad_rows(rows: list[list[int]], fill: int, *, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids padded with `fill` to the longest row (on the left for generation), and the attention mask."""
    width = max(map(len, rows))
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = slice(width - len(row), width) if left else slice(0, len(row))
        out[r, at] = torch.tensor(row, dtype=torch.long)
        mask[r, at] = 1
    return out, mask


def pad_id(tokenizer) -> int:
    """The id rows are padded with: the tokenizer's pad token, else its end-of-sequence token (causal LMs)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def target_rows(rows: list[tuple[list[int], list[int]]], pad: int) -> Batch:
    """(ids, targets) rows as right-padded input_ids, attention_mask and labels (IGNORE where padded)."""
    input_ids, mask = pad_rows([ids for ids, *_ in rows], pad)  # (B, T)
    labels, _ = pad_rows([targets for _, targets, *_ in rows], IGNORE)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


class Tokens:
    """Token ids and loss targets of one split; counts what truncation cut."""

    def __init__(
        self,
        tokenizer,
        rows: list[dict],
        max_length: int,
        shape: str,
        *,
        split: str = "",
        on_error: str = "skip",
        loss_on: str = "replies",
    ):
        self.ids, self.targets = [], []
        self.truncated = self.replies_cut = self.dropped = 0
        for n, row in enumerate(rows):
            ids, targets = encode(tokenizer, row, shape, loss_on)
            if len(ids) > max_length:
                self.truncated += 1
                self.replies_cut += int(any(t != IGNORE for t in targets[max_length:]))
                ids, targets = ids[:max_length], targets[:max_length]
            if not has_targets(targets):  # the reply lies beyond max_length: nothing to learn from
                if on_error == "fail":
                    raise no_target_error(split, n, max_length)
                self.dropped += 1
                continue
            self.ids.append(ids)
            self.targets.append(targets)
        self.lengths = np.array([len(x) for x in self.ids], dtype=np.int64)
        self.pad_id = pad_id(tokenizer)

    def __len__(self) -> int:
        return len(self.ids)

    def collate(self, idx) -> Batch:
        batch = target_rows([(self.ids[i], self.targets[i]) for i in idx], self.pad_id)
        n_targets = int((batch["labels"][:, 1:] != IGNORE).sum())
        tokens = int(self.lengths[idx].sum())
        return batch | {"n": n_targets, "examples": len(idx), "tokens": tokens, "target_tokens": n_targets}

    def report(self) -> dict:
        return {
            "examples": len(self),
            "truncated": self.truncated,
            "replies_cut": self.replies_cut,
            "dropped_no_target_left": self.dropped,
            "target_tokens": int(sum((np.array(t[1:]) != IGNORE).sum() for t in self.targets)),
        }


class Packed:
    """Examples packed first-fit (in a seeded order) into rows of at most max_length tokens. Each example's first
    token is no target, as unpacked, so the previous example never predicts it."""

    def __init__(self, tokens: Tokens, max_length: int, seed: int):
        self.rows: list[list[int]] = []  # example indices per row
        room: list[int] = []
        for i in np.random.default_rng(seed).permutation(len(tokens)):
            n = int(tokens.lengths[i])
            row = next((r for r, left in enumerate(room) if left >= n), None)
            if row is None:
                self.rows.append([])
                room.append(max_length)
                row = len(room) - 1
            self.rows[row].append(int(i))
            room[row] -= n
        self.tokens = tokens
        self.lengths = np.array([sum(int(tokens.lengths[i]) for i in r) for r in self.rows], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def collate(self, idx) -> Batch:
        tok, width = self.tokens, int(self.lengths[idx].max())
        input_ids = torch.full((len(idx), width), tok.pad_id, dtype=torch.long)
        labels = torch.full((len(idx), width), IGNORE, dtype=torch.long)
        positions = torch.zeros((len(idx), width), dtype=torch.long)
        examples = 0
        for row, r in enumerate(idx):
            at = 0
            for i in self.rows[r]:
                n = int(tok.lengths[i])
                input_ids[row, at : at + n] = torch.tensor(tok.ids[i])
                labels[row, at + 1 : at + n] = torch.tensor(tok.targets[i][1:])
                positions[row, at : at + n] = torch.arange(n)
                at += n
            positions[row, at:] = torch.arange(width - at)  # padding: a block of its own, no targets
            examples += len(self.rows[r])
        n_targets = int((labels[:, 1:] != IGNORE).sum())
        return {
            "input_ids": input_ids,
            "position_ids": positions,
            "attention_mask": block_causal_mask(positions),
            "labels": labels,
            "n": n_targets,
            "examples": examples,
            "tokens": int(self.lengths[idx].sum()),
            "target_tokens": n_targets,
        }


def block_causal_mask(positions: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) additive mask: causal within each example (where positions restart), nothing across."""
    start = positions[:, :1] - 1
    segment = (torch.diff(positions, prepend=start, dim=-1) != 1).cumsum(-1)  # (B, T)
    same = segment[:, :, None] == segment[:, None, :]
    causal = torch.tril(torch.ones(positions.shape[1], positions.shape[1], dtype=torch.bool))
    return torch.zeros(same.shape).masked_fill_(~(same & causal), torch.finfo(torch.float32).min)[:, None]


def shared_start(sequences: list[tuple[list[int], list[int]]]) -> int:
    """How many leading tokens all the (ids, targets) sequences have in common and none of them is scored on:
    the prompt that branch_rows computes once."""
    n = min(len(s[0]) for s in sequences) - 1  # each branch keeps at least one token
    first_ids = sequences[0][0]
    for at in range(n):
        if any(ids[at] != first_ids[at] or targets[at] != IGNORE for ids, targets, *_ in sequences):
            return at
    return max(n, 0)


def branch_rows(groups: list[list[tuple[list[int], list[int]]]], pad: int) -> Batch:
    """Each group of (ids, targets) sequences that start alike as one row: their shared start once, then the rest
    of each sequence, which attends to the shared start and to itself only (a 4D mask; positions continue from
    the shared start in every branch). Each target names the position that predicts it ("pred", into the
    flattened (G, T) row), so the last shared token predicts the first token of every branch. The same log-probs
    as one row per sequence, for fewer tokens: chosen and rejected replies (or a group of sampled completions)
    read their prompt once. "seq" numbers the sequences branch-major (sequence j of group g is j * G + g)."""
    starts = [shared_start(group) for group in groups]
    width = max(s + sum(len(seq[0]) - s for seq in group) for s, group in zip(starts, groups))
    input_ids = torch.full((len(groups), width), pad, dtype=torch.long)
    positions = torch.zeros((len(groups), width), dtype=torch.long)
    segment = torch.full((len(groups), width), -1, dtype=torch.long)  # 0: shared, j + 1: branch j, -1: padding
    pred, targets, seq = [], [], []
    for g, (s, group) in enumerate(zip(starts, groups)):
        input_ids[g, :s] = torch.tensor(group[0][0][:s], dtype=torch.long)
        positions[g, :s] = torch.arange(s)
        segment[g, :s] = 0
        at = s
        for j, (ids, tgt, *_) in enumerate(group):
            n = len(ids) - s
            input_ids[g, at : at + n] = torch.tensor(ids[s:], dtype=torch.long)
            positions[g, at : at + n] = torch.arange(s, s + n)
            segment[g, at : at + n] = j + 1
            for t in range(n):
                if tgt[s + t] != IGNORE and (t > 0 or s > 0):
                    pred.append(g * width + (at + t - 1 if t > 0 else s - 1))
                    targets.append(tgt[s + t])
                    seq.append(j * len(groups) + g)
            at += n
    same = (segment[:, :, None] == segment[:, None, :]) | (segment[:, None, :] == 0)
    allowed = same & torch.tril(torch.ones(width, width, dtype=torch.bool))
    mask = torch.zeros(allowed.shape).masked_fill_(~allowed, torch.finfo(torch.float32).min)[:, None]
    return {
        "input_ids": input_ids,
        "position_ids": positions,
        "attention_mask": mask,
        "pred": torch.tensor(pred, dtype=torch.long),
        "targets": torch.tensor(targets, dtype=torch.long),
        "seq": torch.tensor(seq, dtype=torch.long),
        "sequences": len(groups) * len(groups[0]),
    }


def text_windows(tokenizer, path: str, max_length: int, limit: int) -> Tokens:
    """Windows of max_length tokens of a text file (at most `limit` tokens), scored on every token: the general
    text whose perplexity before and after training measures forgetting."""
    from tunesmith.data.readers import read_text

    text = read_text(Path(path))
    enc = tokenizer(text[: limit * 12], add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"][:limit]
    windows = (offsets[i : i + max_length] for i in range(0, len(offsets), max_length))
    rows = [{"text": text[w[0][0] : w[-1][1]]} for w in windows]
    return Tokens(tokenizer, rows, max_length, "text")
