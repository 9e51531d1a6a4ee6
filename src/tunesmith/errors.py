"""The one exception type a user sees: the CLI prints its message without a traceback."""

from __future__ import annotations

import difflib


class TunesmithError(Exception):
    """A user mistake or an environment problem, with a message that says what to do about it."""


class ReportNotWritten(UserWarning):
    """report.html could not be drawn; the run itself (model/, eval.json) is complete and marked done."""


def close_match(word: str, choices: list[str]) -> str | None:
    """The choice a user most likely meant: one that differs only in case, else the closest by difflib."""
    same = [c for c in choices if c.lower() == word.lower()]
    found = same or difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return found[0] if found else None
