"""The TensorRT runner: Polygraphy's ``TrtRunner`` over a serialized plan on disk.

TensorRT and Polygraphy's TensorRT backend are imported when the runner is made, so that the
rest of the package imports without them. Whether the plan runs on this machine (its TensorRT
version and GPU) is for the engine's sidecar to say first: ``export.engine_info.engine_runner``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from polygraphy.backend.base import BaseRunner

__all__ = ["trt_runner"]


def trt_runner(engine_path: str | os.PathLike[str], *, name: str | None = None) -> BaseRunner:
    """A ``TrtRunner`` that deserialises the plan when activated (default name ``tensorrt:<file>``)."""
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    path = Path(engine_path)
    return TrtRunner(EngineFromBytes(BytesFromPath(os.fspath(path))), name=name or f"tensorrt:{path.name}")
