"""Polygraphy runners for torch and ONNX Runtime, and running any list of them on the same inputs.

ONNX Runtime uses Polygraphy's own ``OnnxrtRunner`` over this package's sessions; TensorRT's
``TrtRunner`` (:mod:`m2pt_deploy.runtime.tensorrt`) plugs into :func:`run_runners` the same way.
Polygraphy's ``PytRunner`` moves inputs to CUDA and splits a single output tensor by its first
axis, so torch gets a small runner here.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.datatype import DataType
from torch import nn

from m2pt_deploy.errors import M2ptError, first_line
from m2pt_deploy.progress import tracked
from m2pt_deploy.runtime.io_names import INPUT_NAME, OUTPUT_NAME
from m2pt_deploy.runtime.sessions import ModelSource, Optimization, cpu_session, ort_session

__all__ = [
    "SessionFromOnnxNoSpin",
    "TorchRunner",
    "cpu_runner",
    "onnxrt_runner",
    "ort_runner",
    "quiet_polygraphy",
    "run_runners",
]


class TorchRunner(BaseRunner):
    """Runs an eval ``nn.Module`` (or a callable returning one) on CPU: one input, one output."""

    def __init__(
        self,
        model: nn.Module | Callable[[], nn.Module],
        input_shape: Sequence[int | None],
        *,
        name: str | None = None,
        input_name: str = INPUT_NAME,
        output_name: str = OUTPUT_NAME,
    ) -> None:
        super().__init__(name=name, prefix="torch-runner")
        self._model = model
        self.input_shape = tuple(input_shape)
        self.input_name = input_name
        self.output_name = output_name

    def activate_impl(self) -> None:
        model = self._model if isinstance(self._model, nn.Module) else self._model()
        self.model = model.eval()

    def get_input_metadata_impl(self) -> TensorMetadata:
        return TensorMetadata().add(self.input_name, dtype=DataType.FLOAT32, shape=self.input_shape)

    def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(feed_dict[self.input_name], dtype=np.float32))
        with torch.inference_mode():
            start = time.perf_counter()
            y = self.model(x)
            self.inference_time = time.perf_counter() - start
        return OrderedDict([(self.output_name, y.numpy())])

    def deactivate_impl(self) -> None:
        del self.model


class SessionFromOnnxNoSpin:
    """Lazy loader: a CPU ONNX Runtime session whose idle threads sleep instead of spinning.

    For timing two sessions side by side: by default ONNX Runtime's worker threads spin
    after each run, and would steal cores from the other session's next run.
    """

    def __init__(self, onnx_path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        self.onnx_path = os.fspath(onnx_path)
        self.threads = threads

    def __call__(self) -> Any:
        # The serving options (an --optimize file is not optimized twice), threads asleep when idle.
        return cpu_session(self.onnx_path, threads=self.threads, spinning=False)


def onnxrt_runner(
    onnx_path: str | os.PathLike[str],
    *,
    name: str = "onnxrt",
    providers: Sequence[str] = ("cpu",),
    spinning: bool = True,
) -> BaseRunner:
    """Polygraphy's ONNX Runtime runner for a file on disk (CPU unless told otherwise).

    ``spinning=False`` (CPU only) is for benchmarks that interleave several sessions.
    """
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.exception import PolygraphyException

    if not spinning:
        return OnnxrtRunner(SessionFromOnnxNoSpin(onnx_path), name=name)
    load = SessionFromOnnx(os.fspath(onnx_path), providers=list(providers))

    def session() -> Any:
        # Polygraphy's loader lets ONNX Runtime's own exception through (a graph the ONNX checker
        # accepts can still be refused): one line naming the file, as ort_session words it.
        try:
            return load()
        except PolygraphyException:
            raise  # Polygraphy's own refusals (an unknown provider): run_runners words them
        except Exception as e:  # onnxruntime raises its own untyped exceptions
            raise M2ptError(f"ONNX Runtime cannot load this model: {first_line(e)}", onnx_path) from None

    return OnnxrtRunner(session, name=name)


def cpu_runner(onnx_path: str | os.PathLike[str], *, name: str | None = None, spinning: bool = True,
               threads: int | None = None) -> BaseRunner:
    """Polygraphy's ONNX Runtime runner over :func:`cpu_session` (an optimized file is not re-optimized)."""
    from polygraphy.backend.onnxrt import OnnxrtRunner

    path = Path(onnx_path)
    return OnnxrtRunner(lambda: cpu_session(path, spinning=spinning, threads=threads),
                        name=name or f"onnxrt-cpu:{path.name}")


def ort_runner(model: ModelSource, *, name: str, optimization: Optimization = "all",
               path: str | os.PathLike[str] | None = None) -> BaseRunner:
    """Polygraphy's ONNX Runtime runner over :func:`ort_session` on CPU, for a file, serialized bytes
    or a proto; ``path`` names the file in a refusal."""
    from polygraphy.backend.onnxrt import OnnxrtRunner

    return OnnxrtRunner(lambda: ort_session(model, optimization=optimization, path=path), name=name)


@contextlib.contextmanager
def quiet_polygraphy() -> Iterator[None]:
    """Polygraphy logs every activation and iteration; our report says what matters."""
    from polygraphy.logger import G_LOGGER

    with G_LOGGER.verbosity(G_LOGGER.ERROR):
        yield


def run_runners(
    runners: Sequence[BaseRunner], feeds: Sequence[dict[str, np.ndarray]]
) -> dict[str, list[dict[str, np.ndarray]]]:
    """Run every runner on every feed through Polygraphy's ``Comparator``.

    Returns ``{runner name: [outputs per feed]}`` in runner order. A runtime that rejects
    the model (Polygraphy raises on its ``critical`` log) becomes an :class:`M2ptError`.
    """
    from polygraphy.comparator import Comparator
    from polygraphy.exception import PolygraphyException

    names = [r.name for r in runners]
    if len(set(names)) != len(names):
        raise M2ptError(f"runner names must be unique, got {names}")
    try:
        with quiet_polygraphy():
            results = Comparator.run(list(runners), data_loader=tracked(feeds, "inputs"))
    except PolygraphyException as e:
        raise M2ptError(f"a runtime failed: {str(e).strip().splitlines()[-1]}") from e
    return {
        name: [{k: np.asarray(v) for k, v in it.items()} for it in iterations]
        for name, iterations in results.items()
    }
