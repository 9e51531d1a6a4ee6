"""Causal-LM fine-tuning: `sft` on chat and instruction data (loss on the assistant's tokens, end-of-turn
included, so the tuned model learns to stop), and `pretrain` on raw-text chunks (loss on every token).
The loop lives in train/loop.py; this module builds the model, the token batches and the loss.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from tunesmith import zoo
from tunesmith.config import LoraConfig, RunConfig
from tunesmith.errors import TunesmithError
from tunesmith.methods.classify import freeze_embeddings, order_batches, save_model, set_dropout
from tunesmith.train.loop import Batch, Task, fit

IGNORE = -100
FALLBACK_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"  # for tokenizers without a chat template


def build_model(model_dir, *, dropout: float | None = None, lora: LoraConfig | None = None) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    zoo.quiet_transformers()
    config = AutoConfig.from_pretrained(model_dir)
    if dropout is not None:
        set_dropout(config, dropout)
    model = AutoModelForCausalLM.from_pretrained(model_dir, config=config, dtype=torch.float32)
    if lora:
        from peft import LoraConfig as PeftLora
        from peft import TaskType, get_peft_model

        model = get_peft_model(
            model,
            PeftLora(
                task_type=TaskType.CAUSAL_LM,
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=lora.targets,
            ),
        )
    return model


def as_messages(row: dict) -> list[dict]:
    if "messages" in row:
        return row["messages"]
    return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]


def prompt_text(tokenizer, messages: list[dict]) -> str:
    """The conversation so far, ending where the model's reply starts (with a fallback for template-less
    tokenizers)."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return FALLBACK_TEMPLATE.format(prompt="\n\n".join(m["content"] for m in messages))


def render(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The conversation as the model sees it, and the character spans the loss is taken on: each assistant
    reply with its end-of-turn marker. Spans come from rendering growing prefixes of the conversation."""
    if not tokenizer.chat_template:
        head = prompt_text(tokenizer, messages[:-1])
        text = head + messages[-1]["content"] + tokenizer.eos_token
        return text, [(len(head), len(text))]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for k, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=True) if k else ""
        through = tokenizer.apply_chat_template(messages[: k + 1], tokenize=False)
        if not (text.startswith(through) and through.startswith(before)):
            raise TunesmithError(
                "the tokenizer's chat template does not render a conversation as a sequence of "
                "turns (prefixes differ); sft needs one that does"
            )
        spans.append((len(before), len(through)))
    return text, spans


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
            if shape == "text":
                ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"]
                targets = list(ids)
            else:
                text, spans = render(tokenizer, as_messages(row))
                enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
                ids = enc["input_ids"]
                targets = (
                    list(ids)
                    if loss_on == "all"
                    else [
                        t if any(a <= s < b for a, b in spans) else IGNORE
                        for t, (s, _) in zip(ids, enc["offset_mapping"])
                    ]
                )
            if len(ids) > max_length:
                self.truncated += 1
                self.replies_cut += int(any(t != IGNORE for t in targets[max_length:]))
                ids, targets = ids[:max_length], targets[:max_length]
            if sum(t != IGNORE for t in targets[1:]) == 0:  # the reply lies beyond max_length: nothing to learn from
                if on_error == "fail":
                    raise TunesmithError(
                        f"{split} example {n + 1} (data/{split}.parquet): its prompt fills train.max_length="
                        f"{max_length} tokens, so no reply token is left; raise train.max_length, or set "
                        f"data.on_error: skip to skip and count such examples"
                    )
                self.dropped += 1
                continue
            self.ids.append(ids)
            self.targets.append(targets)
        self.lengths = np.array([len(x) for x in self.ids], dtype=np.int64)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def __len__(self) -> int:
        return len(self.ids)

    def collate(self, idx) -> Batch:
        width = int(self.lengths[idx].max())
        input_ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)  # (B, T)
        labels = torch.full((len(idx), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            n = self.lengths[i]
            input_ids[row, :n] = torch.tensor(self.ids[i])
            labels[row, :n] = torch.tensor(self.targets[i])
            mask[row, :n] = 1
        n_targets = int((labels[:, 1:] != IGNORE).sum())
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "n": n_targets, "examples": len(idx)}

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
        }


def block_causal_mask(positions: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) additive mask: causal within each example (where positions restart), nothing across."""
    start = positions[:, :1] - 1
    segment = (torch.diff(positions, prepend=start, dim=-1) != 1).cumsum(-1)  # (B, T)
    same = segment[:, :, None] == segment[:, None, :]
    causal = torch.tril(torch.ones(positions.shape[1], positions.shape[1], dtype=torch.bool))
    return torch.zeros(same.shape).masked_fill_(~(same & causal), torch.finfo(torch.float32).min)[:, None]


def token_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Cross-entropy summed over target tokens; position t predicts token t+1. The LM head runs on the target
    positions only: full (B, T, vocab) logits of a 49k-token vocabulary would be most of the memory."""
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE  # (B, T-1)
    # Packed rows carry position_ids that restart per example and a block-diagonal causal mask (4D), so no token
    # attends across an example boundary. (transformers' own detection of packing from position_ids alone did not
    # take effect here: measured, the loss then matched the unmasked one.)
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch.get("attention_mask"),
        "position_ids": batch.get("position_ids"),
    }
    if getattr(model.config, "final_logit_softcapping", None):  # logits are post-processed: take the full path
        logits = model(**inputs).logits[:, :-1][keep]
    else:
        hidden = model.get_decoder()(**inputs).last_hidden_state
        logits = model.get_output_embeddings()(hidden[:, :-1][keep])  # (N, vocab)
    return F.cross_entropy(logits.float(), labels[keep], reduction="sum")


@torch.no_grad()
def mean_loss(model: torch.nn.Module, data: Tokens, batch_size: int = 8) -> float:
    """Mean loss per target token over a split (its exp is the perplexity)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, n = 0.0, 0
    order = np.argsort(-data.lengths, kind="stable")
    for i in range(0, len(order), batch_size):
        b = data.collate(order[i : i + batch_size])
        total += token_loss(model, {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}).item()
        n += b["n"]
    model.train(was_training)
    return total / max(n, 1)


def loss_metrics(loss: float) -> dict[str, float]:
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def make_task(model: torch.nn.Module, tokens: Tokens, val: Tokens | None, cfg: RunConfig) -> Task:
    t = cfg.train
    train = Packed(tokens, t.max_length, t.seed) if t.packing else tokens

    def batches(epoch: int) -> list[np.ndarray]:
        return order_batches(train.lengths, t.batch_size, t.seed + epoch, t.group_by_length)

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        return loss_metrics(mean_loss(m, val, t.batch_size))

    return Task(
        model=model,
        batches=batches,
        loss=token_loss,
        collate=train.collate,
        evaluate=evaluate if val is not None and len(val) else None,
    )


def read_rows(folder: Path) -> dict[str, list[dict]]:
    return {
        name: pq.read_table(folder / f"{name}.parquet").to_pylist()
        for name in ("train", "val", "test")
        if (folder / f"{name}.parquet").is_file()
    }


# ---- the recipe: read top to bottom ---------------------------------------------------------------------


def run(cfg: RunConfig, run_dir: Path, *, resume: bool = False, quiet: bool = False) -> dict:
    """Prepared data -> base model's test loss -> fine-tune -> save model/ (LoRA merged) -> tuned test loss."""
    from transformers import AutoTokenizer

    report_data = json.loads((run_dir / "data" / "data_report.json").read_text())
    model_dir = zoo.resolve(cfg.model)
    zoo.quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    shape = report_data["shape"]
    rows = read_rows(run_dir / "data")
    tokens = {
        name: Tokens(
            tokenizer,
            split,
            cfg.train.max_length,
            shape,
            split=name,
            on_error=cfg.data.on_error,
            loss_on=cfg.train.loss_on,
        )
        for name, split in rows.items()
    }
    if not len(tokens["train"]):
        raise TunesmithError(f"no training example has a target token within train.max_length={cfg.train.max_length}")
    torch.manual_seed(cfg.train.seed)
    model = build_model(model_dir, dropout=cfg.train.dropout, lora=cfg.lora)
    freeze_embeddings(model, cfg)
    scores = Scores(cfg, tokenizer, tokens, rows.get("test") if shape != "text" else None)
    base = scores(model) if cfg.eval.baseline else None
    result = fit(
        make_task(model, tokens["train"], tokens.get("val"), cfg), cfg.train, run_dir, resume=resume, quiet=quiet
    )
    if cfg.lora:
        model = model.merge_and_unload()
    meta = {
        "method": cfg.method,
        "base_model": cfg.model,
        "base_path": str(model_dir),
        "max_length": cfg.train.max_length,
        "lora_merged": cfg.lora is not None,
    }
    save_model(model, tokenizer, meta, run_dir / "model")
    report = {
        "method": cfg.method,
        "data": {name: tok.report() for name, tok in tokens.items()},
        "train": {
            "steps": result.steps,
            "epochs": round(result.epochs_done, 3),
            "examples": result.examples,
            "seconds": round(result.train_seconds, 2),
            "examples_per_s": round(result.examples_per_s, 2),
            "precision": result.precision,
            "precision_reason": result.precision_reason,
            "device": result.device,
            "stopped_early": result.stopped_early,
            "best_val": result.best,
        },
    }
    tuned = scores(model)
    if tuned:
        report |= {"test_rows": len(tokens["test"]) if "test" in tokens else 0, "tuned": tuned}
        if base:
            report["baseline"] = base
        if base and "general_perplexity" in tuned:
            report["forgetting"] = {
                "general_text": cfg.eval.general_text,
                "general_tokens": cfg.eval.general_tokens,
                "ppl_ratio": tuned["general_perplexity"] / base["general_perplexity"],
            }
    return report


def load(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    zoo.quiet_transformers()
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(
        model_dir
    )


@dataclass(frozen=True)
class Sampling:
    """How replies are drawn: greedy at temperature 0. A reply ends at the end-of-turn token, after max_new_tokens,
    or before the first stop string (which, as in the OpenAI API, is not part of it)."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    repetition_penalty: float = 1.0  # > 1 makes tokens already in the text less likely (CTRL's penalty)

    def kwargs(self, tokenizer) -> dict:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        out = {
            "max_new_tokens": self.max_new_tokens,
            "pad_token_id": pad,
            "repetition_penalty": self.repetition_penalty,
        }
        out |= (
            {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
            if self.temperature > 0
            else {"do_sample": False}
        )
        return out | ({"stop_strings": list(self.stop), "tokenizer": tokenizer} if self.stop else {})

    def end(self, text: str) -> int | None:
        """Where the first stop string starts in text, if one does."""
        found = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def cut(self, text: str) -> str:
        """text up to its first stop string."""
        return text[: self.end(text)]


class ChatSession:
    """A conversation with a saved model: send() streams the reply piece by piece and keeps the history."""

    def __init__(self, model_dir: Path, *, system: str | None = None, sampling: Sampling = Sampling(256, 0.7, 0.9)):
        self.model, self.tokenizer = load(model_dir)
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        self.sampling = sampling

    def send(self, text: str):
        """Yields the reply as it is generated. Text that may be the start of a stop string is held back until
        it is known not to be one."""
        from threading import Thread

        from transformers import TextIteratorStreamer

        self.messages.append({"role": "user", "content": text})
        enc = self.tokenizer(prompt_text(self.tokenizer, self.messages), return_tensors="pt", add_special_tokens=False)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        worker = Thread(
            target=self.model.generate, kwargs={**enc, "streamer": streamer, **self.sampling.kwargs(self.tokenizer)}
        )
        worker.start()
        said, shown, hold = "", 0, max(map(len, self.sampling.stop), default=1) - 1
        for piece in streamer:
            said += piece
            end = self.sampling.end(said)
            upto = end if end is not None else len(said) - hold
            if upto > shown:
                yield said[shown:upto]
                shown = upto
        worker.join()
        said = self.sampling.cut(said)
        if len(said) > shown:
            yield said[shown:]
        self.messages.append({"role": "assistant", "content": said.strip()})


def generate(model_dir: Path, prompts: list[str], sampling: Sampling = Sampling()) -> list[str]:
    """Replies of a saved model to single-turn prompts."""
    model, tokenizer = load(model_dir)
    return replies(model, tokenizer, [[{"role": "user", "content": p}] for p in prompts], sampling)


@torch.no_grad()
def replies(
    model, tokenizer, conversations: list[list[dict]], sampling: Sampling = Sampling(), *, batch_size: int = 16
) -> list[str]:
    """The next assistant reply to each conversation, in batches of prompts of similar length (left-padded)."""
    was_training = model.training
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    texts = [prompt_text(tokenizer, c) for c in conversations]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[str] = [""] * len(texts)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        enc = tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False)
        rows = model.generate(**enc, **sampling.kwargs(tokenizer))
        for i, r in zip(batch, rows):
            said = tokenizer.decode(r[enc["input_ids"].shape[1] :], skip_special_tokens=True)
            out[i] = sampling.cut(said).strip()
    tokenizer.padding_side = side
    model.train(was_training)
    return out


def general_tokens(tokenizer, path: str, max_length: int, limit: int) -> Tokens:
    """Windows of max_length tokens of a general-text file (at most `limit` tokens), scored on every token."""
    from tunesmith.data.readers import read_text

    text = read_text(Path(path))
    enc = tokenizer(text[: limit * 12], add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"][:limit]
    rows = [
        {"text": text[w[0][0] : w[-1][1]]}
        for w in (offsets[i : i + max_length] for i in range(0, len(offsets), max_length))
    ]
    return Tokens(tokenizer, rows, max_length, "text")


class Scores:
    """What is scored before training and again after: test loss, generation metrics, general-text loss."""

    def __init__(self, cfg: RunConfig, tokenizer, tokens: dict[str, Tokens], test_rows: list[dict] | None):
        self.cfg, self.tokenizer, self.tokens = cfg, tokenizer, tokens
        self.general = (
            general_tokens(tokenizer, cfg.eval.general_text, cfg.train.max_length, cfg.eval.general_tokens)
            if cfg.eval.general_text
            else None
        )
        rows = (test_rows or [])[: cfg.eval.generate]
        self.prompts = [as_messages(r)[:-1] for r in rows]
        self.references = [r.get("references") or [as_messages(r)[-1]["content"]] for r in rows]

    def __call__(self, model) -> dict:
        from tunesmith.eval.generation import text_metrics

        out, test, bs = {}, self.tokens.get("test"), self.cfg.train.batch_size
        if test is not None and len(test):
            out |= loss_metrics(mean_loss(model, test, bs))
        if self.general is not None:
            out["general_perplexity"] = loss_metrics(mean_loss(model, self.general, bs))["perplexity"]
        if self.prompts:
            said = replies(
                model,
                self.tokenizer,
                self.prompts,
                Sampling(self.cfg.eval.max_new_tokens, repetition_penalty=self.cfg.eval.repetition_penalty),
            )
            out |= text_metrics(said, self.references) | {"replies_scored": len(said)}
            out["samples"] = [
                {"prompt": p[-1]["content"][:500], "reply": r[:500], "reference": ref[0][:500]}
                for p, r, ref in list(zip(self.prompts, said, self.references))[:5]
            ]
        return out
