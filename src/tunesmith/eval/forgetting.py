"""Forgetting: a causal LM's perplexity on general text (eval.general_text) before and after tuning. Every
causal-LM method reports it the same way, so the ratio means the same thing for sft, dpo and kto."""

from __future__ import annotations

from tunesmith.config import RunConfig
from tunesmith.lm.logprobs import loss_metrics, mean_loss
from tunesmith.lm.tokens import text_windows

OPTIONS = frozenset({"eval.general_text", "eval.general_tokens"})  # a method that reports forgetting uses these
PANEL = ("general-text perplexity (lower: less forgotten)", ("general_perplexity",))  # for Method.panels


class Forgetting:
    def __init__(self, tokenizer, cfg: RunConfig):
        self.cfg = cfg
        e = cfg.eval
        self.windows = (
            text_windows(tokenizer, e.general_text, cfg.train.max_length, e.general_tokens) if e.general_text else None
        )

    def scores(self, model) -> dict[str, float]:
        """{"general_perplexity": ...} of the model (in eval mode), or {} without eval.general_text."""
        if self.windows is None:
            return {}
        return {
            "general_perplexity": loss_metrics(mean_loss(model, self.windows, self.cfg.train.batch_size))["perplexity"]
        }

    def report(self, base: dict | None, tuned: dict) -> dict:
        """eval.json's "forgetting" entry: tuned over untuned general-text perplexity (1.0: nothing forgotten)."""
        if not base or "general_perplexity" not in base or "general_perplexity" not in tuned:
            return {}
        ratio = tuned["general_perplexity"] / base["general_perplexity"]
        e = self.cfg.eval
        return {"forgetting": {"general_text": e.general_text, "general_tokens": e.general_tokens, "ppl_ratio": ratio}}
