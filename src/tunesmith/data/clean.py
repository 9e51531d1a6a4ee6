"""Text cleaning: one normal form for the same text, so dedup and the tokenizer see what a reader sees."""

from __future__ import annotations

import html
import re
import unicodedata
from collections import Counter

from tunesmith.config import CleanConfig

# Only real HTML tag names count: "<3", "a < b" and placeholders like <PERSON> are text, not markup.
TAG = re.compile(
    r"</?(a|abbr|b|blockquote|body|br|center|code|div|em|font|h[1-6]|head|hr|html|i|img|li|meta|ol|p|pre|"
    r"s|script|small|span|strong|style|sub|sup|table|tbody|td|th|thead|title|tr|u|ul)(\s[^<>]*)?/?>",
    re.I,
)
ENTITY = re.compile(r"&(#\d{1,7}|#x[0-9a-f]{1,6}|[a-z]{2,8});", re.I)
CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u200b-\u200d\u2060\ufeff]")
SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
BLANK_LINES = re.compile(r"\n{3,}")


class Cleaner:
    def __init__(self, cfg: CleanConfig):
        self.cfg = cfg
        self.changed: Counter = Counter()  # how many texts each step changed, for the data report

    def __call__(self, text: str) -> str:
        cfg = self.cfg
        if text.isascii() and text.isprintable() and "<" not in text and "&" not in text:  # the common case, fast
            return self._count("whitespace", text, " ".join(text.split())) if cfg.whitespace else text
        if cfg.unicode != "none" and not text.isascii():
            text = self._count("unicode", text, unicodedata.normalize(cfg.unicode, text))
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if cfg.html:
            if TAG.search(text):
                text = self._count("html", text, strip_html(text))
            elif "&" in text and ENTITY.search(text):
                text = self._count("html", text, html.unescape(text))
        if cfg.control_chars:
            text = self._count("control_chars", text, CONTROL.sub("", text))
        if cfg.whitespace:
            text = self._count("whitespace", text, squeeze(text))
        return text

    def _count(self, step: str, before: str, after: str) -> str:
        if after != before:
            self.changed[step] += 1
        return after


def strip_html(text: str) -> str:
    """The visible text of an HTML fragment (script and style dropped, entities decoded)."""
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(text)
    tree.strip_tags(["script", "style"])
    return tree.text(separator=" ")


def squeeze(text: str) -> str:
    if "\n" not in text:
        return SPACES.sub(" ", text).strip()
    lines = [SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
