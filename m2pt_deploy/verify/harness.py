"""One call that proves an ONNX file is its checkpoint, merged, at vanilla cost.

(a) unmerged vs merged in torch, bit for bit; (b) merged torch vs ONNX Runtime (and any
further Polygraphy runners, e.g. TensorRT) within the precision's tolerance; (c) the graph
against a vanilla ViT's export, structure for structure.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from polygraphy.backend.base import BaseRunner

from m2pt_deploy.errors import M2ptError, first_line
from m2pt_deploy.families import family_of
from m2pt_deploy.inputs.calibration import held_out_inputs, photo_calibrated
from m2pt_deploy.inputs.seeded import seeded_inputs
from m2pt_deploy.merge import merge_model
from m2pt_deploy.metadata import SOURCE_SHA256_KEY, read_metadata
from m2pt_deploy.model.build import build_unmerged
from m2pt_deploy.model.checkpoint import Checkpoint, load_checkpoint
from m2pt_deploy.runtime.runners import TorchRunner, onnxrt_runner, run_runners
from m2pt_deploy.verify.numerics import MERGED, UNMERGED, compare_outputs, merge_tolerance
from m2pt_deploy.verify.result import Result, VerificationReport
from m2pt_deploy.verify.structure import check_structure, export_settings
from m2pt_deploy.verify.tolerance import tolerance_for
from m2pt_deploy.vocabulary import VERIFY_IMAGES

__all__ = ["assert_equivalent", "check_inputs", "load_onnx", "verify_onnx"]


def load_onnx(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Read and check an ONNX file; anything unreadable is an :class:`M2ptError` naming it."""
    p = Path(path)
    if not p.exists():
        raise M2ptError("no such file", p)
    if not p.is_file():
        raise M2ptError("is not a file; give an .onnx model", p)
    try:
        proto = onnx.load(p)
    except DecodeError as e:
        # protobuf's own words ("Error parsing message with type 'onnx.ModelProto'") help nobody.
        raise M2ptError("not a readable ONNX model (damaged or truncated protobuf)", p) from e
    except (OSError, ValueError, RuntimeError) as e:
        raise M2ptError(f"not a readable ONNX model ({first_line(e)})", p) from e
    if not proto.graph.node:
        raise M2ptError("not an ONNX model: it has no graph (empty or truncated file?)", p)
    try:
        # By path: the checker refuses in-memory models past protobuf's 2 GiB limit.
        onnx.checker.check_model(os.fspath(p))
    except (onnx.checker.ValidationError, ValueError) as e:
        raise M2ptError(f"invalid ONNX model: {first_line(e)}", p) from e
    return proto


def _input_name(proto: onnx.ModelProto, path: Path, expected: tuple[int, ...]) -> str:
    """The one input, checked against the checkpoint's input size."""
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in initializers]
    if len(inputs) != 1 or not proto.graph.output:
        raise M2ptError(
            f"expected one input and a logits output, found inputs "
            f"{[v.name for v in inputs]}, outputs {[v.name for v in proto.graph.output]}",
            path,
        )
    dims = [
        d.dim_value if d.HasField("dim_value") else None
        for d in inputs[0].type.tensor_type.shape.dim
    ]
    if len(dims) != len(expected) + 1 or tuple(dims[1:]) != tuple(expected):
        shown = ["N" if d is None else d for d in dims]
        raise M2ptError(
            f"input {inputs[0].name} is {shown}, the checkpoint's model takes "
            f"[N, {', '.join(map(str, expected))}]; was it exported from this checkpoint?",
            path,
        )
    return inputs[0].name


def check_inputs(inputs: np.ndarray, input_size: tuple[int, ...]) -> np.ndarray:
    """User-given inputs as float32 ``[N, *input_size]``, or an :class:`M2ptError` saying why not."""
    arr = np.asarray(inputs)
    if arr.ndim != len(input_size) + 1 or tuple(arr.shape[1:]) != tuple(input_size):
        expected = ", ".join(map(str, input_size))
        raise M2ptError(f"inputs have shape {list(arr.shape)}, the model takes [N, {expected}]")
    if not np.issubdtype(arr.dtype, np.floating):
        raise M2ptError(f"inputs are {arr.dtype}, expected floating point (normalised pixels)")
    if len(arr) == 0:
        raise M2ptError("inputs are empty (0 rows)")
    if not np.isfinite(arr).all():
        raise M2ptError("inputs contain NaN or Inf values")
    return arr.astype(np.float32, copy=False)


def _input_array(
    inputs: np.ndarray | None, input_size: tuple[int, ...], rows: int, seed: int
) -> tuple[np.ndarray, str]:
    if inputs is None:
        return seeded_inputs(input_size, rows, seed=seed), f"{rows} seeded (seed {seed})"
    arr = check_inputs(inputs, input_size)
    return arr, f"{len(arr)} given"


def _feeds(
    proto: onnx.ModelProto,
    path: Path,
    input_size: tuple[int, ...],
    *,
    inputs: np.ndarray | None,
    batch_size: int,
    seed: int,
) -> tuple[list[dict[str, np.ndarray]], dict[str, Any]]:
    """Split the inputs into the model's batches; a fixed batch takes only whole batches."""
    in_name = _input_name(proto, path, input_size)
    batch = export_settings(proto).batch
    per_feed = batch_size if batch.dynamic else batch.min
    x, described = _input_array(inputs, input_size, per_feed, seed)
    if not batch.dynamic and len(x) % per_feed:
        raise M2ptError(
            f"the ONNX model has a fixed batch of {per_feed}; give a multiple of "
            f"{per_feed} inputs, not {len(x)}"
        )
    feeds = [{in_name: x[i : i + per_feed]} for i in range(0, len(x), per_feed)]
    info = {
        "rows": len(x),
        "per_inference": per_feed,
        "seed": seed if inputs is None else None,
        "description": described,
    }
    return feeds, info


def _provenance(proto: onnx.ModelProto, ckpt: Checkpoint) -> tuple[str, ...]:
    source = SOURCE_SHA256_KEY.get(read_metadata(proto))
    if source and source != ckpt.sha256:
        return (
            f"the ONNX metadata names source sha256 {source[:12]}…, "
            f"this checkpoint is {ckpt.sha256[:12]}…",
        )
    return ()


def _int8_runtime(ckpt: Checkpoint, path: Path, inputs: np.ndarray | None) -> Result:
    from m2pt_deploy.verify.cpu_int8 import verify_int8_cpu

    spec = ckpt.spec
    if inputs is not None:
        return verify_int8_cpu(ckpt, path, inputs, source="given inputs")
    if not photo_calibrated(spec):
        model = (f"{spec.input_size[0]}-channel ViT" if family_of(spec).modality == "image"
                 else family_of(spec).title)
        raise M2ptError(f"an int8 model of a {model} is verified on its own held-out "
                        "inputs: pass --inputs FILE.npy (the built-in photo tiles are RGB)", path)
    return verify_int8_cpu(ckpt, path, held_out_inputs(spec))


def verify_onnx(
    checkpoint: Checkpoint | str | os.PathLike[str],
    onnx_path: str | os.PathLike[str],
    *,
    inputs: np.ndarray | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    extra_runners: Sequence[BaseRunner] = (),
) -> VerificationReport:
    """Run checks (a), (b) and (c) and return the report (truthy iff all passed).

    Args:
        checkpoint: the training checkpoint the ONNX file was exported from.
        onnx_path: the exported model.
        inputs: ``[N, C, H, W]`` normalised images; default ``batch_size`` seeded random ones.
        batch_size: seeded inputs, and rows per inference for a dynamic-batch model (a fixed batch
            wins); default: the family's ``verify_inputs`` (4, one clip for video).
        seed: seed of the generated inputs.
        extra_runners: further Polygraphy runners (e.g. ``TrtRunner``) judged like ONNX Runtime.
    """
    if batch_size is not None and batch_size < 1:
        raise M2ptError(f"batch size must be at least 1, got {batch_size}")
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    batch_size = batch_size or family_of(ckpt.spec).verify_inputs
    path = Path(onnx_path)
    proto = load_onnx(path)
    precision = export_settings(proto).precision
    tolerance = tolerance_for(precision)
    feeds, info = _feeds(
        proto, path, ckpt.spec.input_size, inputs=inputs, batch_size=batch_size, seed=seed
    )
    in_name, out_name = next(iter(feeds[0])), proto.graph.output[0].name

    unmerged = build_unmerged(ckpt)
    merged = merge_model(unmerged, ckpt.spec)
    shape = (None, *ckpt.spec.input_size)
    # One forward per model and input, shared by the checks: the merged model's outputs are both
    # the merge check's candidate and the runtimes' reference.
    runners: list[BaseRunner] = [
        TorchRunner(unmerged, shape, name=UNMERGED, input_name=in_name, output_name=out_name),
        TorchRunner(merged, shape, name=MERGED, input_name=in_name, output_name=out_name),
    ]
    if precision != "int8":
        runners += [onnxrt_runner(path), *extra_runners]
    outputs = run_runners(runners, feeds)
    merge_bound, merge_note = merge_tolerance(probe_head=ckpt.has_probe_head)
    (merge_result,) = compare_outputs(outputs, UNMERGED, [MERGED], merge_bound, check="merge", note=merge_note)
    if precision == "int8":
        # int8 logits move by design: judged by top-1 agreement on held-out inputs, run as served.
        runtime_results: Sequence[Result] = [_int8_runtime(ckpt, path, inputs)]
        if inputs is None:
            # The header names every input used, not only the merge check's.
            info = {**info, "description": f"{info.get('description', '')} (merge check); {VERIFY_IMAGES} "
                    "held-out photo tiles (int8 top-1 agreement)"}
    else:
        runtime_results = compare_outputs(outputs, MERGED, [r.name for r in runners[2:]], tolerance)
    structure = check_structure(proto, ckpt.spec, like=merged.state_dict())
    return VerificationReport(
        onnx=str(path),
        checkpoint=str(ckpt.path),
        precision=precision,
        inputs=info,
        results=(merge_result, *runtime_results, structure),
        notes=(*ckpt.notes, *_provenance(proto, ckpt)),
    )


def assert_equivalent(
    checkpoint_or_path: Checkpoint | str | os.PathLike[str],
    onnx_path: str | os.PathLike[str],
    **kwargs: Any,
) -> VerificationReport:
    """``verify_onnx`` for test suites: raises ``AssertionError`` carrying the table on failure."""
    report = verify_onnx(checkpoint_or_path, onnx_path, **kwargs)
    if not report:
        raise AssertionError(f"ONNX model is not equivalent to its checkpoint:\n{report}")
    return report
