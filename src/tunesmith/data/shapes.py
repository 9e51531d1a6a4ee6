"""Data shapes: tell from the field names what a file holds and map each row to one canonical example.

Canonical examples (the columns of the prepared Parquet files):
- classify:    text, label
- instruction: prompt, response (+ references: every reference answer, when data.references names them)
- chat:        messages = [{role, content}, ...] (system?, then user/assistant alternating, ending with assistant)
- preference:  prompt = [{role, content}, ...], chosen, rejected (the two final assistant replies)
- feedback:    prompt = [{role, content}, ...], completion, label (true: a desirable reply, false: not; thumbs
               up/down, unpaired)
- text:        text (raw documents; chunked by tokens later)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from tunesmith.config import SHAPES, DataConfig
from tunesmith.errors import TunesmithError, close_match

KNOWN = {
    "text": ("text", "sentence", "content", "document", "review", "utterance", "tweet", "body"),
    "label": ("label", "labels", "category", "class", "intent", "sentiment"),
    "prompt": ("prompt", "instruction", "question", "query"),
    "response": ("response", "output", "completion", "answer"),
    "messages": ("messages", "conversations", "conversation"),
    "chosen": ("chosen",),
    "rejected": ("rejected",),
}
NEEDS = {
    "classify": ("text", "label"),
    "instruction": ("prompt", "response"),
    "chat": ("messages",),
    "preference": ("chosen", "rejected"),
    "feedback": ("prompt", "response", "label"),
    "text": ("text",),
}
ROLES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "prompter": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "chatbot": "assistant",
}
MISSING_LABELS = {"", "nan", "none", "null"}
FLAGS = {"true": True, "1": True, "yes": True, "up": True, "good": True, "1.0": True,
         "false": False, "0": False, "no": False, "down": False, "bad": False, "0.0": False}  # fmt: skip
TURN = re.compile(r"\n\n(Human|Assistant): ")


class RowProblem(ValueError):
    """A row that cannot become an example: an error with its file and line, or skipped and counted."""


@dataclass
class Mapper:
    shape: str
    fields: dict[str, str]  # canonical name -> the file's field name
    template: str | None = None
    references: tuple[str, ...] | None = None  # instruction: the fields holding reference answers
    label_names: dict[str, str] | None = None  # classify: data.label_names, label -> name

    def example(self, row: dict) -> dict:
        missing = [f for f in self.fields.values() if f not in row]
        if missing:
            raise RowProblem(f"missing field {missing[0]!r}" + _looks_like(row, self.shape))
        return getattr(self, "_" + self.shape)(row)

    def _classify(self, row: dict) -> dict:
        text, label = row[self.fields["text"]], label_name(row[self.fields["label"]], self.fields["label"])
        if self.label_names is not None:
            if label not in self.label_names:
                known = ", ".join(list(self.label_names)[:10])
                raise RowProblem(f"label {label!r} is not in data.label_names (which names {known})")
            label = self.label_names[label]
        return {"text": _string(text, self.fields["text"]), "label": label}

    def _text(self, row: dict) -> dict:
        return {"text": _string(row[self.fields["text"]], self.fields["text"])}

    def _instruction(self, row: dict) -> dict:
        if self.template:
            try:
                prompt = self.template.format_map(row)
            except (KeyError, IndexError, ValueError) as err:
                raise RowProblem(
                    f"data.prompt_template cannot be filled from this row ({type(err).__name__}: {err})"
                ) from None
        else:
            prompt = _string(row[self.fields["prompt"]], self.fields["prompt"])
            extra = row.get("input") if self.fields["prompt"] == "instruction" else None  # Alpaca's optional input
            if isinstance(extra, str) and extra.strip():
                prompt = f"{prompt}\n\n{extra}"
        response = row[self.fields["response"]]
        if not isinstance(response, str) or not response.strip():
            raise RowProblem("empty response")
        ex = {"prompt": _string(prompt, "prompt"), "response": response}
        if self.references is not None:
            given = [row.get(f) for f in self.references]
            ex["references"] = [r for r in given if isinstance(r, str) and r.strip()] or [response]
        return ex

    def _feedback(self, row: dict) -> dict:
        prompt = row[self.fields["prompt"]]
        turns = (
            conversation(prompt, self.fields["prompt"], need_reply=False)
            if isinstance(prompt, list)
            else [{"role": "user", "content": _string(prompt, self.fields["prompt"])}]
        )
        completion = _reply(row[self.fields["response"]], self.fields["response"])
        return {
            "prompt": turns,
            "completion": completion,
            "label": flag(row[self.fields["label"]], self.fields["label"]),
        }

    def _chat(self, row: dict) -> dict:
        return {"messages": conversation(row[self.fields["messages"]], self.fields["messages"])}

    def _preference(self, row: dict) -> dict:
        chosen, rejected = row[self.fields["chosen"]], row[self.fields["rejected"]]
        prompt = row.get(self.fields["prompt"]) if "prompt" in self.fields else None
        if prompt is not None:
            turns = (
                conversation(prompt, self.fields["prompt"], need_reply=False)
                if isinstance(prompt, list)
                else [{"role": "user", "content": _string(prompt, self.fields["prompt"])}]
            )
            better, worse = _reply(chosen, "chosen"), _reply(rejected, "rejected")
            if better.strip() == worse.strip():
                raise RowProblem("chosen and rejected are the same reply")
            return {"prompt": turns, "chosen": better, "rejected": worse}
        return split_shared_prefix(chosen, rejected)


def label_name(value, field: str) -> str:
    """One rule for every label, from any file format: empty, NaN and None (or "nan", "none", "null") are a
    malformed row, never a class; labels equal as numbers (0, "0", 0.0, "0.0") are one class, named like an
    integer where they are one."""
    if value is None or isinstance(value, (dict, list)):
        raise RowProblem(f"missing or invalid label in {field!r}: {value!r}")
    text = str(value).strip()
    if text.lower() in MISSING_LABELS or (isinstance(value, float) and math.isnan(value)):
        raise RowProblem(f"missing label in {field!r}: {value!r}")
    if isinstance(value, bool):
        return text
    try:
        number = Decimal(text)
    except InvalidOperation:
        return text
    if number.is_nan():
        raise RowProblem(f"missing label in {field!r}: {value!r}")
    if not number.is_finite():
        return text
    return str(int(number)) if number == number.to_integral_value() else format(number.normalize(), "f")


def flag(value, field: str) -> bool:
    """A feedback label: desirable or not (true/false, 1/0, yes/no, up/down, good/bad)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if value is not None else ""
    if text in FLAGS:
        return FLAGS[text]
    raise RowProblem(f"label in {field!r} is {value!r}; allowed: true/false, 1/0, yes/no, up/down, good/bad")


def _string(value, field: str) -> str:
    if not isinstance(value, str):
        raise RowProblem(f"field {field!r} is {type(value).__name__}, not text")
    if not value.strip():
        raise RowProblem("empty text" if field != "response" else "empty response")
    return value


def _reply(value, field: str) -> str:
    if isinstance(value, list):  # a whole conversation: its last message is the reply
        turns = conversation(value, field)
        return turns[-1]["content"]
    if not isinstance(value, str) or not value.strip():
        raise RowProblem(f"empty {field} response")
    return value


def conversation(value, field: str, need_reply: bool = True) -> list[dict]:
    """Checked chat turns: optional system first, then user and assistant alternating, no empty message."""
    if not isinstance(value, list) or not value:
        raise RowProblem(f"field {field!r} is not a non-empty list of messages")
    turns = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict):
            raise RowProblem(f"message {i} is {type(msg).__name__}, not an object with role and content")
        role, content = msg.get("role", msg.get("from")), msg.get("content", msg.get("value"))
        if role is None or content is None:
            raise RowProblem(f"message {i} needs role and content (or ShareGPT's from and value)")
        norm = ROLES.get(str(role).strip().lower())
        if norm is None:
            raise RowProblem(f"message {i} has role {role!r}; allowed: system, user, assistant (or human, gpt)")
        if not isinstance(content, str) or not content.strip():
            raise RowProblem(f"message {i} ({norm}) is empty")
        expected = "user" if not turns or turns[-1]["role"] in ("system", "assistant") else "assistant"
        if norm != expected and not (norm == "system" and i == 0):
            raise RowProblem(f"roles out of order at message {i}: expected {expected}, got {norm}")
        turns.append({"role": norm, "content": content})
    if need_reply and turns[-1]["role"] != "assistant":
        raise RowProblem(
            "no assistant turn to learn from"
            if all(t["role"] != "assistant" for t in turns)
            else "the conversation ends with a user message that has no reply"
        )
    return turns


def transcript(text: str) -> list[dict]:
    """ "\\n\\nHuman: ...\\n\\nAssistant: ..." (Anthropic hh-rlhf) as chat turns."""
    parts = TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise RowProblem("not a transcript of \\n\\nHuman: / \\n\\nAssistant: turns")
    return [
        {"role": "user" if who == "Human" else "assistant", "content": body.strip()}
        for who, body in zip(parts[1::2], parts[2::2])
    ]


def split_shared_prefix(chosen, rejected) -> dict:
    """Two transcripts sharing their prompt -> prompt turns + the two final assistant replies."""
    a = transcript(chosen) if isinstance(chosen, str) else conversation(chosen, "chosen")
    b = transcript(rejected) if isinstance(rejected, str) else conversation(rejected, "rejected")
    if a[:-1] != b[:-1] or a[-1]["role"] != "assistant" or b[-1]["role"] != "assistant":
        raise RowProblem("chosen and rejected do not share a prompt followed by one assistant reply each")
    if not a[-1]["content"] or not b[-1]["content"]:
        raise RowProblem("empty chosen or rejected response")
    if a[-1]["content"] == b[-1]["content"]:
        raise RowProblem("chosen and rejected are the same reply")
    return {
        "prompt": conversation(a[:-1], "prompt", need_reply=False),
        "chosen": a[-1]["content"],
        "rejected": b[-1]["content"],
    }


def _find(row: dict, canonical: str, given: str | None) -> str | None:
    if given:
        return given
    lower = {str(k).lower(): k for k in row}
    return next((lower[n] for n in KNOWN[canonical] if n in lower), None)


def detect(row: dict, cfg: DataConfig, where: str) -> Mapper:
    """The shape and field names, from the config or else from the first row's field names. A column the
    config names must exist: a typo never turns into another shape."""
    _check_named_columns(row, cfg, where)
    found = {c: _find(row, c, getattr(cfg, c)) for c in KNOWN}
    if cfg.references and found["response"] not in row:  # e.g. a test file holding only reference answers
        found["response"] = next((f for f in cfg.references if f in row), found["response"])
    shape = cfg.shape
    if shape == "auto":
        shape = _guess(found, row, bool(cfg.prompt_template))
        if shape is None:
            raise TunesmithError(
                f"{where}: cannot tell the data shape from the fields {list(row)}; set data.shape to one of "
                f"{', '.join(SHAPES)} and the field names (data.text, data.label, data.prompt, ...)"
            )
    needs = [c for c in NEEDS[shape] if not (c == "prompt" and cfg.prompt_template)]
    missing = [c for c in needs if found[c] is None or found[c] not in row]
    if missing:
        c = missing[0]
        name = found[c] or "/".join(KNOWN[c])
        raise TunesmithError(
            f"{where}: column {name!r} not found for data shape {shape}; the columns are: {_columns(row)}. "
            f"Set data.{c} to the right name."
        )
    fields = {c: found[c] for c in needs}
    if shape == "preference" and found["prompt"] in row:
        fields["prompt"] = found["prompt"]
    if shape != "instruction":
        return Mapper(shape, fields)
    return Mapper(shape, fields, cfg.prompt_template, tuple(cfg.references) if cfg.references else None)


def _check_named_columns(row: dict, cfg: DataConfig, where: str) -> None:
    """Every column named in the config is in the file (a test file of reference answers may lack the
    response column, since data.references names its answers)."""
    for key in KNOWN:
        name = getattr(cfg, key)
        if name is None or name in row or (key == "response" and cfg.references):
            continue
        raise missing_column(where, name, f"data.{key}", row)


def missing_column(where: str, name: str, option: str, row: dict) -> TunesmithError:
    """A column the config names that the file lacks: the file's columns and the closest name."""
    close = close_match(name, list(map(str, row)))
    return TunesmithError(
        f"{where}: column {name!r} ({option}) not found; the columns are: {_columns(row)}"
        + (f". Did you mean {close!r}?" if close else "")
    )


def _columns(row: dict) -> str:
    return ", ".join(map(str, row)) or "(none)"


def _guess(found: dict, row: dict, has_template: bool) -> str | None:
    present = {c for c, f in found.items() if f is not None and f in row}
    if "messages" in present and isinstance(row[found["messages"]], list):
        return "chat"
    if {"chosen", "rejected"} <= present:
        return "preference"
    if {"prompt", "response", "label"} <= present and isinstance(row[found["label"]], bool):
        return "feedback"
    if "response" in present and ("prompt" in present or has_template):
        return "instruction"
    if {"text", "label"} <= present:
        return "classify"
    return "text" if "text" in present else None


def _looks_like(row: dict, shape: str) -> str:
    other = _guess({c: _find(row, c, None) for c in KNOWN}, row, False)
    return f" (this file's rows are {shape}; this row looks like {other})" if other and other != shape else ""


def texts_of(shape: str, ex: dict) -> list[str]:
    """Every free-text field of an example, in a fixed order: what cleaning, dedup and PII work on."""
    if shape == "chat":
        return [m["content"] for m in ex["messages"]]
    if shape == "preference":
        return [m["content"] for m in ex["prompt"]] + [ex["chosen"], ex["rejected"]]
    if shape == "feedback":
        return [m["content"] for m in ex["prompt"]] + [ex["completion"]]
    if shape == "instruction":
        return [ex["prompt"], ex["response"], *ex.get("references", ())]
    return [ex["text"]]


def identity(shape: str, texts: list[str]) -> list[str]:
    """The texts that say whether two examples are the same: extra reference answers do not."""
    return texts[:2] if shape == "instruction" else texts


def with_texts(shape: str, ex: dict, texts: list[str]) -> dict:
    """The example with its free-text fields replaced, in texts_of's order."""
    if shape == "chat":
        return {"messages": [m | {"content": t} for m, t in zip(ex["messages"], texts)]}
    if shape == "preference":
        n = len(ex["prompt"])
        return {
            "prompt": [m | {"content": t} for m, t in zip(ex["prompt"], texts)],
            "chosen": texts[n],
            "rejected": texts[n + 1],
        }
    if shape == "feedback":
        n = len(ex["prompt"])
        turns = [m | {"content": t} for m, t in zip(ex["prompt"], texts)]
        return {"prompt": turns, "completion": texts[n], "label": ex["label"]}
    if shape == "instruction":
        return {"prompt": texts[0], "response": texts[1]} | ({"references": texts[2:]} if "references" in ex else {})
    return ex | {"text": texts[0]}
