"""What a command (``m2pt-export``) costs: wall time and the peak RSS of that one process.

The command line comes from the caller (the CLI passes its own export command), so this
module measures a program without importing the layer that implements it.

The command runs as a child process and is reaped with ``os.wait4``, whose resource usage
is that child's alone (``RUSAGE_CHILDREN`` would mix in every earlier child, compiler
workers included).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["CommandCost", "run_measured"]


@dataclasses.dataclass(frozen=True)
class CommandCost:
    command: str
    returncode: int
    wall_s: float
    peak_rss_mb: float
    stderr_tail: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_measured(command: Sequence[str], args: Sequence[str], *, label: str | None = None,
                 env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None) -> CommandCost:
    """Run ``COMMAND ARGS`` as a child process (in ``cwd``, with ``env``); its own wall time and peak RSS."""
    argv = [*command, *args]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss is in KiB on Linux.
    return CommandCost(label or " ".join(args), proc.returncode, wall, usage.ru_maxrss / 1024,
                       "\n".join(err.strip().splitlines()[-3:]))
