"""What a generated reply may not contain, checked before anyone sees it: block-listed words and phrases, regular
expressions, personal data (the data stage's anonymiser finds it), and optionally a tunesmith classifier run as a
judge. A reply that fails is replaced whole by the refusal message the user set; with `pii: redact`, personal data
is replaced by placeholders instead and the rest of the reply kept.

A filter is a YAML file (`--filter FILE` on generate, chat and serve):

    block: [password, "internal use only"]     # whole words or phrases, any case
    patterns: ['\\b\\d{3}-\\d{2}-\\d{4}\\b']   # Python regular expressions
    pii: refuse                                # off | refuse | redact
    judge: {run: toxicity-clf, labels: [toxic], threshold: 0.8}
    refusal: "Sorry, I can't help with that."

Streams are held back whole while a filter is on: a block-listed phrase or a pattern can end in the last token,
so no piece of a reply is sent before the whole of it has passed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tunesmith.config import read_yaml_mapping
from tunesmith.data.pii import anonymiser
from tunesmith.errors import TunesmithError


class Judge(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run: str  # a classifier run (name, registry id or folder)
    labels: list[str] = Field(min_length=1)  # its labels that mean "do not show"
    threshold: float = Field(0.5, gt=0.0, le=1.0)  # refuse when their summed probability reaches this


class FilterSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    block: list[str] = []
    patterns: list[str] = []
    pii: Literal["off", "refuse", "redact"] = "off"
    judge: Judge | None = None
    refusal: str = Field("Sorry, I can't help with that.", min_length=1)

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for i, p in enumerate(patterns):
            try:
                re.compile(p)
            except re.error as err:
                raise ValueError(f"patterns[{i}] {p!r} does not compile: {err}") from None
        return patterns

    @field_validator("block")
    @classmethod
    def _not_blank(cls, words: list[str]) -> list[str]:
        if blank := [i for i, w in enumerate(words) if not w.strip()]:
            raise ValueError(f"block[{blank[0]}] is blank: it would match every reply")
        return words


@dataclass(frozen=True)
class Verdict:
    text: str  # what may be shown: the reply, the reply redacted, or the refusal
    reason: str | None = None  # why it was refused ("block", "pattern", "pii", "judge"), None when it passed


class OutputFilter:
    """A FilterSpec made ready: patterns compiled, the anonymiser and the judge loaded once."""

    def __init__(self, spec: FilterSpec):
        self.spec = spec
        words = [r"\s+".join(map(re.escape, w.split())) for w in spec.block]
        self.block = re.compile(r"(?<!\w)(?:" + "|".join(words) + r")(?!\w)", re.IGNORECASE) if words else None
        self.patterns = [re.compile(p) for p in spec.patterns]
        self.anonymise = anonymiser() if spec.pii != "off" else None
        self.judge = _judge(spec.judge) if spec.judge else None

    @classmethod
    def load(cls, path: str | Path) -> OutputFilter:
        return cls(read_spec(Path(path)))

    def check(self, texts: list[str]) -> list[Verdict]:
        """Each reply as it may be shown."""
        out = [self._rules(t) for t in texts]
        if self.judge is not None:
            passed = [i for i, v in enumerate(out) if v.reason is None]
            flagged = self.judge([out[i].text for i in passed]) if passed else []
            for i, bad in zip(passed, flagged):
                if bad:
                    out[i] = Verdict(self.spec.refusal, "judge")
        return out

    def _rules(self, text: str) -> Verdict:
        if self.block is not None and self.block.search(text):
            return Verdict(self.spec.refusal, "block")
        if any(p.search(text) for p in self.patterns):
            return Verdict(self.spec.refusal, "pattern")
        if self.anonymise is not None:
            clean = self.anonymise([text])[0]
            if clean != text:
                return Verdict(clean) if self.spec.pii == "redact" else Verdict(self.spec.refusal, "pii")
        return Verdict(text)


class Held:
    """The replies of one request, held piece by piece until each ends, then released as the filter allows; the
    reasons of its refusals are kept for the request's log."""

    def __init__(self, output_filter: OutputFilter):
        self.filter, self.pieces, self.refused = output_filter, {}, []

    def feed(self, choice: int, piece: str) -> None:
        self.pieces[choice] = self.pieces.get(choice, "") + piece

    def release(self, choice: int) -> Verdict:
        verdict = self.filter.check([self.pieces.pop(choice, "")])[0]
        if verdict.reason:
            self.refused.append(verdict.reason)
        return verdict


def read_spec(path: Path) -> FilterSpec:
    raw = read_yaml_mapping(path, "filter", "block, patterns, pii, judge, refusal", empty={})
    try:
        return FilterSpec.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(file)"
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            msg = "unknown key; allowed: block, patterns, pii, judge (run, labels, threshold), refusal"
        raise TunesmithError(f"{path}: {key}: {msg}") from None


def _judge(spec: Judge):
    """A callable: which texts the judge run puts at or above the threshold on the named labels."""
    from tunesmith.infer.classifier import Classifier

    clf = Classifier.load(spec.run)
    unknown = [x for x in spec.labels if x not in clf.labels]
    if unknown:
        raise TunesmithError(f"filter judge {spec.run}: labels {unknown} are not the run's labels {clf.labels}")
    cols = [clf.labels.index(x) for x in spec.labels]
    return lambda texts: (clf.probabilities(texts)[:, cols].sum(1) >= spec.threshold).tolist()
