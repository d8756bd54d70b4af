"""The one exception type for problems a user can fix."""

from __future__ import annotations

import os

__all__ = ["M2ptError", "first_line"]


class M2ptError(Exception):
    """Bad input: a wrong file, shape, flag or option.

    The CLI prints it as one line (``error: <file>: <what> ...``) and exits 2,
    without a traceback. Anything else escaping the CLI is a bug in this package.
    """

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        self.message = message
        self.path = None if path is None else os.fspath(path)
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def first_line(e: BaseException) -> str:
    """The first non-blank line of an exception's message (its type name if there is none),
    for wrapping a library's multi-line error into our one-line ``M2ptError``."""
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
