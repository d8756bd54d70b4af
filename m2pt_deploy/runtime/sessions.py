"""The one place an ONNX Runtime session is made: threads, optimization level, memory options.

Export (graph optimization, calibration), verification, benchmarks and the server all call
:func:`ort_session`, so that a model is run the same way everywhere and an ONNX Runtime
error becomes one line, not the library's text.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

from m2pt_deploy.errors import M2ptError, first_line
from m2pt_deploy.metadata import OPTIMIZED_KEY

if TYPE_CHECKING:  # onnx loads when a session is made, so that --help stays instant
    import onnx

__all__ = ["ModelSource", "Optimization", "cpu_session", "cpu_session_options", "is_optimized", "ort_session",
           "physical_cores", "session_options"]

Optimization = Literal["auto", "all", "extended", "none"]
ModelSource = Union[str, "os.PathLike[str]", bytes, "onnx.ModelProto"]


def is_optimized(proto: onnx.ModelProto) -> bool:
    """``m2pt-export --optimize`` already optimized this model: no second pass at load."""
    return OPTIMIZED_KEY.is_in(proto)


def physical_cores() -> int:
    """Physical cores among the CPUs this process may use (SMT siblings counted once)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for cpu in cpus:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


def _proto(model: ModelSource) -> onnx.ModelProto:
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, bytes):
        return onnx.load_model_from_string(model)
    return onnx.load_model(os.fspath(model), load_external_data=False)


def session_options(
    model: ModelSource | None = None,
    *,
    threads: int | None = None,
    spinning: bool = True,
    optimization: Optimization = "auto",
    arena: bool = True,
    prepacking: bool = True,
    optimized_model_path: str | os.PathLike[str] | None = None,
) -> Any:
    """Session options: one intra-op thread per physical core (``threads`` overrides), one
    inter-op thread, sequential execution. ``optimization="auto"`` turns graph optimization off
    for a model ``--optimize`` already optimized and on for any other (``model`` is read for that);
    ``spinning=False`` lets idle threads sleep (for timing several sessions side by side);
    ``arena`` / ``prepacking`` off keep memory low for sessions that run a few large batches."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
    if optimization == "auto":
        optimization = "none" if model is not None and is_optimized(_proto(model)) else "all"
    options.graph_optimization_level = levels[optimization]
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if not arena:
        options.enable_cpu_mem_arena = False
    if not prepacking:
        options.add_session_config_entry("session.disable_prepacking", "1")
    if optimized_model_path is not None:
        options.optimized_model_filepath = os.fspath(optimized_model_path)
    return options


def ort_session(
    model: ModelSource,
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    options: Any = None,
    what: str = "ONNX Runtime cannot load this model",
    path: str | os.PathLike[str] | None = None,
    **option_kwargs: Any,
) -> Any:
    """An ``onnxruntime.InferenceSession`` for a file, serialized bytes or a proto.

    ``options`` (from :func:`session_options`) or the keyword arguments of
    :func:`session_options`; a model ONNX Runtime refuses becomes one :class:`M2ptError` line
    starting with ``what`` (naming ``path`` when given).
    """
    import onnx
    import onnxruntime as ort

    source: str | bytes
    if isinstance(model, onnx.ModelProto):
        source = model.SerializeToString()
    elif isinstance(model, bytes):
        source = model
    else:
        source = os.fspath(model)
    try:
        if options is None:  # reading the model to choose its optimization level may fail too
            options = session_options(model, **option_kwargs)
        return ort.InferenceSession(source, options, providers=list(providers))
    except Exception as e:  # onnxruntime raises its own untyped exceptions
        raise M2ptError(f"{what}: {first_line(e)}", path) from None


def cpu_session_options(model: ModelSource, *, threads: int | None = None, spinning: bool = True) -> Any:
    """:func:`session_options` with the serving defaults (threads per physical core, optimization
    off for a model ``--optimize`` already optimized)."""
    return session_options(model, threads=threads, spinning=spinning)


def cpu_session(path: str | os.PathLike[str], *, threads: int | None = None, spinning: bool = True) -> Any:
    """A CPU session with the serving options."""
    return ort_session(path, threads=threads, spinning=spinning, path=path)
