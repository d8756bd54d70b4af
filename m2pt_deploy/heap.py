"""Hand freed heap memory back to the operating system between the steps of a long job."""

from __future__ import annotations

import contextlib

__all__ = ["release_freed_memory"]


def release_freed_memory() -> None:
    """glibc's ``malloc_trim(0)``: without it, memory freed by one step (a torch export, a
    calibration pass) stays in the process and the next step's allocations stack on top of
    it in RSS. A no-op where glibc is not the allocator."""
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
