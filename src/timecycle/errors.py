"""The one exception type for a user's mistake.

Anything raised as `UserError` is printed by the CLI as a single line (naming the file and the
problem) with a non-zero exit status, never as a traceback. Everything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import re
from pathlib import Path


class UserError(Exception):
    """Bad input from the user: a missing or unreadable file, a wrong mask, a wrong checkpoint."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)


def first_sentence(err: BaseException) -> str:
    """The first sentence of a library's message, whole (torch's advice after it runs to
    several lines), for a one-line UserError; the exception's type when it has no message."""
    text = str(err).strip().split("\n")[0]
    sentence = re.match(r"(.*?[.!?])(\s|$)", text)
    return (sentence.group(1) if sentence else text) or type(err).__name__
