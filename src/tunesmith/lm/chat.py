"""Conversations as a causal LM sees them: its chat template, and where the assistant's replies lie in it."""

from __future__ import annotations

from tunesmith.errors import TunesmithError

FALLBACK_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"  # for tokenizers without a chat template


def as_messages(row: dict) -> list[dict]:
    """A prepared chat or instruction row as chat turns."""
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
        text = head + messages[-1]["content"] + (tokenizer.eos_token or "")  # an encoder has none
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
                "turns (prefixes differ); training on replies needs one that does"
            )
        spans.append((len(before), len(through)))
    return text, spans
