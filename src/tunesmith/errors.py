"""The one exception type a user sees: the CLI prints its message without a traceback."""


class TunesmithError(Exception):
    """A user mistake or an environment problem, with a message that says what to do about it."""


class ReportNotWritten(UserWarning):
    """report.html could not be drawn; the run itself (model/, eval.json) is complete and marked done."""
