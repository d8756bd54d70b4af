"""Progress lines on stderr for steps that take seconds, shared by the pipelines and the CLI."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator

__all__ = ["note", "step"]


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    """``what ... done (1.2 s)`` on stderr around a step that may take seconds."""
    print(f"{what} ...", end="", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        print(" failed", file=sys.stderr, flush=True)
        raise
    print(f" done ({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)


def note(text: str) -> None:
    """A fact taken from a file or assumed (``note: ...`` on stderr)."""
    print(f"note: {text}", file=sys.stderr)
