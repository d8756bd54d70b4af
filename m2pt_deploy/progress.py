"""Progress on stderr for steps that take seconds, shared by the pipelines and the CLI.

On a terminal a long loop shows a bar with the time left (tqdm); in a log (no terminal) each
step is one line, ``what ... done (12.3 s)``, and loops add nothing.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

__all__ = ["note", "step", "tracked"]

T = TypeVar("T")


def _terminal() -> bool:
    return sys.stderr.isatty()


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    """``what ... done (1.2 s)`` on stderr around a step that may take seconds."""
    # On a terminal the line ends at once, so a bar below it does not overwrite it.
    print(f"{what} ...", end="\n" if _terminal() else "", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        print(" failed", file=sys.stderr, flush=True)
        raise
    print(f"{'  ' if _terminal() else ''} done ({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)


class _Tracked(Sequence[T]):
    """A sequence whose every pass shows a bar (with the time left) on a terminal."""

    def __init__(self, items: Sequence[T], what: str) -> None:
        self.items, self.what = items, what

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        return self.items[index]

    def __iter__(self) -> Iterator[T]:
        if not _terminal() or len(self.items) < 2:
            return iter(self.items)
        from tqdm import tqdm

        return iter(tqdm(self.items, desc=f"  {self.what}", total=len(self.items), leave=False, file=sys.stderr,
                         unit="batch"))


def tracked(items: Iterable[T], what: str) -> Sequence[T]:
    """``items`` as a sequence that shows its progress each time it is iterated (on a terminal)."""
    return _Tracked(items if isinstance(items, Sequence) else list(items), what)


def note(text: str) -> None:
    """A fact taken from a file or assumed (``note: ...`` on stderr)."""
    print(f"note: {text}", file=sys.stderr)
