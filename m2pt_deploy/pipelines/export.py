"""``export_onnx``, ``export_tensorrt``, ``export_triton``: checkpoint → merged vanilla model →
deployable artifact, verified by default. ``m2pt-export`` is a thin shell over these; Python
users get the same checks, files and verdicts.

Every option is checked and every output path claimed before the minutes of export and
calibration; files are written atomically; a failed verification keeps the artifact for
inspection and says so in the result (the caller decides what that means: the CLI exits 1).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.export.vocabulary import DEFAULT_OPSET, ONNX_PRECISIONS, VERIFY_IMAGES, FloatPrecision
from m2pt_deploy.families import ModelSpec
from m2pt_deploy.fileio import atomic_output, check_output_path
from m2pt_deploy.heap import release_freed_memory
from m2pt_deploy.model.checkpoint import Checkpoint, load_checkpoint
from m2pt_deploy.progress import note, step
from m2pt_deploy.runtime.sessions import require_onnxruntime

__all__ = ["ExportResult", "Verdict", "export_onnx", "export_tensorrt", "export_triton", "held_out_inputs",
           "load_for_export", "silent"]

CheckpointSource = str | os.PathLike[str] | Checkpoint
#: Called with each line worth showing as it happens ("wrote FILE", a verdict table): ``print`` in the CLI.
Show = Callable[[object], None]


def silent(_: object) -> None:
    """The default ``show``: Python callers get results, not printed lines."""


class Verdict(Protocol):
    """What every verification returns: printable, truthy when it passed, serialisable."""

    def __bool__(self) -> bool: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """The files written and the verification verdict (``None`` when verification was skipped)."""

    files: tuple[Path, ...]
    verdict: Verdict | None = None
    #: Where the artifact stays when verification failed, for the message that says so.
    kept: Path | None = None

    @property
    def passed(self) -> bool:
        return self.verdict is None or bool(self.verdict)


def load_for_export(checkpoint: CheckpointSource, model: Mapping[str, Any] | None = None) -> Checkpoint:
    """``checkpoint`` as loaded, with ``model`` (``load_checkpoint``'s keyword arguments: arch,
    input_size, ema, family, options) applied and its notes shown."""
    if isinstance(checkpoint, Checkpoint):
        if any(v for v in (model or {}).values()):
            raise M2ptError("model settings apply when a checkpoint is loaded; this one is loaded already "
                            "(pass its path, or load it with them)", checkpoint.path)
        return checkpoint
    ckpt = load_checkpoint(checkpoint, **dict(model or {}))
    for text in ckpt.notes:
        note(text)
    return ckpt


def held_out_inputs(spec: ModelSpec, count: int) -> np.ndarray:
    """Inputs a reduced-precision model is verified on: held-out photo tiles for RGB image models,
    the family's seeded example inputs for any other."""
    from m2pt_deploy.export.engine_onnx import VERIFY_SEED
    from m2pt_deploy.export.int8.calibration import calibration_tiles

    if _photos(spec):
        return calibration_tiles(spec.input_size, spec.mean, spec.std, count=count, seed=VERIFY_SEED)
    return spec.model_family.example_input(spec, count, seed=VERIFY_SEED).numpy()


def _photos(spec: ModelSpec) -> bool:
    return spec.model_family.modality in ("image", "spectrogram") and spec.input_size[0] == 3


def _write_report(path: str | os.PathLike[str] | None, data: Mapping[str, Any], *, force: bool) -> None:
    if path:
        with atomic_output(path, force=force) as tmp:
            tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


def _source_path(checkpoint: CheckpointSource) -> Path:
    return checkpoint.path if isinstance(checkpoint, Checkpoint) else Path(checkpoint)


def export_onnx(
    checkpoint: CheckpointSource,
    output: str | os.PathLike[str] | None = None,
    *,
    model: Mapping[str, Any] | None = None,
    precision: str = "fp32",
    opset: int = DEFAULT_OPSET,
    batch: str | None = None,
    optimize: bool = False,
    calib_data: str | os.PathLike[str] | None = None,
    calib_images: int = 256,
    verify_images: int = VERIFY_IMAGES,
    int8_target: str = "auto",
    verify: bool = True,
    report: str | os.PathLike[str] | None = None,
    force: bool = False,
    show: Show = silent,
) -> ExportResult:
    """Merge and export to ONNX (fp32, fp16, or int8 Q/DQ for ONNX Runtime on CPU), then verify.

    ``batch``: ``"N"`` for a static batch, ``None`` for a dynamic one. ``optimize`` writes ONNX
    Runtime's CPU fast path. int8 calibrates on ``calib_data`` (a folder of images or an .npz
    ``x``; default: photo tiles, RGB models only) and is verified on ``verify_images`` held-out
    inputs. The default output is the checkpoint's path with ``.onnx``.
    """
    from m2pt_deploy.export.onnx import DYNAMIC_BATCH, OnnxFromCheckpoint, parse_batch

    if precision not in ONNX_PRECISIONS:
        raise M2ptError(f"--precision {precision} is only for --format trt; "
                        f"ONNX export takes {', '.join(ONNX_PRECISIONS)}")
    if optimize and precision == "fp16":
        raise M2ptError("--optimize takes fp32 or int8: ONNX Runtime's CPU provider has no fp16 fast path")
    if precision == "int8" and calib_images < 1:
        raise M2ptError(f"--calib-images {calib_images}: need at least 1")
    from m2pt_deploy.cpu import INT8_TARGETS

    if int8_target not in ("auto", *INT8_TARGETS):
        raise M2ptError(f"--int8-target {int8_target!r}: choose auto or one of {', '.join(INT8_TARGETS)}")
    shape = parse_batch(batch) if batch else DYNAMIC_BATCH
    if batch and ":" in batch:
        raise M2ptError(f"--batch {batch} is a TensorRT profile (MIN:OPT:MAX, for --format trt); ONNX "
                        "takes one number for a static batch, or nothing for a dynamic one")
    if verify or optimize or precision == "int8":
        require_onnxruntime("verifying the export" if verify else "--optimize and int8")
    out = check_output_path(output or _source_path(checkpoint).with_suffix(".onnx"), force=force)
    if report:
        check_output_path(report, force=force)
    ckpt = load_for_export(checkpoint, model)
    # Calibration and held-out inputs are read (and refused) before the export's minutes.
    data = _int8_data(ckpt, calib_data, calib_images, verify_images) if precision == "int8" else None
    float_precision: FloatPrecision = "fp16" if precision == "fp16" else "fp32"
    loader = OnnxFromCheckpoint(ckpt, opset=opset, precision=float_precision, batch=shape)
    shown = "dynamic batch" if shape == DYNAMIC_BATCH else f"batch {shape}"
    with step(f"merging and exporting {ckpt.spec.arch} to ONNX (opset {opset}, {float_precision}, {shown})"):
        proto = loader()
    # Each step rebinds ``proto``, so the previous graph is freed before verification, and
    # the freed heap goes back to the OS so steps do not stack in RSS.
    release_freed_memory()
    if data is not None:
        proto = _quantize(proto, data, optimize=optimize, int8_target=int8_target)
    elif optimize:
        from m2pt_deploy.export.optimize import optimize_onnx

        with step("fusing attention, LayerNorm and GELU; optimizing with ONNX Runtime"):
            proto = optimize_onnx(proto)
    _save(proto, out, force=force)
    del proto
    release_freed_memory()
    show(f"wrote {out}")
    if not verify:
        return ExportResult((out,))
    if data is not None:
        verdict: Verdict = _verify_int8(ckpt, out, data)
        _write_report(report, {**verdict.to_dict(), "notes": list(ckpt.notes)}, force=force)
    else:
        verdict = _verify_float(ckpt, out)
        if report:
            verdict.write_json(report, force=force)  # type: ignore[attr-defined]
    show(verdict)
    return ExportResult((out,), verdict, kept=out)


def _int8_data(ckpt: Checkpoint, calib_data: str | os.PathLike[str] | None, calib_images: int,
               verify_images: int) -> Any:
    from m2pt_deploy.export.int8.cpu import int8_data

    return int8_data(ckpt.spec, calib_data=calib_data, calib_images=calib_images, verify_images=verify_images)


def _save(proto: Any, out: Path, *, force: bool) -> None:
    from m2pt_deploy.export.onnx import save_onnx
    from m2pt_deploy.export.optimize import save_optimized
    from m2pt_deploy.runtime.sessions import is_optimized

    if is_optimized(proto):
        save_optimized(proto, out, force=force)
    else:
        save_onnx(proto, out, force=force)


def _quantize(proto: Any, data: Any, *, optimize: bool, int8_target: str) -> Any:
    from m2pt_deploy.cpu import int8_target as this_cpu
    from m2pt_deploy.export.int8.cpu import cpu_int8_onnx

    target = this_cpu() if int8_target == "auto" else int8_target
    with step(f"quantizing to int8 for {target} CPUs (Q/DQ, {len(data.calibration)} calibration inputs)"
              + (", optimizing with ONNX Runtime" if optimize else "")):
        return cpu_int8_onnx(proto, data.calibration, optimize=optimize, target=target)  # type: ignore[arg-type]


def _verify_int8(ckpt: Checkpoint, out: Path, data: Any) -> Verdict:
    from m2pt_deploy.verify.cpu_int8 import verify_int8_cpu

    with step(f"verifying the int8 model in ONNX Runtime against the unmerged fp32 model "
              f"({len(data.held_out)} {data.source})"):
        return verify_int8_cpu(ckpt, out, data.held_out, source=data.source)


def _verify_float(ckpt: Checkpoint, onnx_path: Path) -> Verdict:
    from m2pt_deploy.verify import verify_onnx

    with step("verifying against the unmerged model"):
        return verify_onnx(ckpt, onnx_path)


def export_tensorrt(
    checkpoint: CheckpointSource,
    engine: str | os.PathLike[str] | None = None,
    *,
    model: Mapping[str, Any] | None = None,
    precision: str = "fp16",
    opset: int = DEFAULT_OPSET,
    batch: str | None = None,
    calib_images: int = 256,
    workspace_gb: float | None = None,
    timing_cache: str | os.PathLike[str] | None = None,
    opt_level: int | None = None,
    verify: bool = True,
    report: str | os.PathLike[str] | None = None,
    force: bool = False,
    show: Show = silent,
) -> ExportResult:
    """The reduced-precision ONNX a TensorRT engine is built from, verified in ONNX Runtime, then
    the engine. Without TensorRT (or a GPU) the ONNX and a build script are left and the build
    raises :class:`M2ptError` saying how to finish it on a GPU machine."""
    from m2pt_deploy.export.engine_onnx import engine_onnx
    from m2pt_deploy.export.onnx import DYNAMIC_BATCH, OnnxFromCheckpoint, parse_batch, save_onnx
    from m2pt_deploy.export.tensorrt import build_engine_from_onnx, check_build_options

    engine_path = check_output_path(engine or _source_path(checkpoint).with_suffix(".engine"), force=force)
    onnx_path = check_output_path(engine_path.with_suffix(f".{precision}.onnx"), force=force)
    shape = parse_batch(batch) if batch else DYNAMIC_BATCH
    # Option errors surface before minutes of export and calibration.
    check_build_options(precision, workspace_gb, timing_cache, opt_level)
    if report:
        check_output_path(report, force=force)
    if calib_images < 1:
        raise M2ptError(f"--calib-images {calib_images}: need at least 1")
    ckpt = load_for_export(checkpoint, model)
    spec = ckpt.spec
    if precision in ("int8", "fp8") and not _photos(spec):
        raise M2ptError(f"--format trt --precision {precision} calibrates on RGB photo tiles; a "
                        f"{spec.model_family.title} with its own inputs is built in fp32, fp16 or bf16 "
                        "(TensorRT calibration data: not yet)")
    with step(f"exporting {spec.arch} to {precision} ONNX for TensorRT (batch profile {shape})"):
        proto = engine_onnx(OnnxFromCheckpoint(ckpt, opset=opset, batch=shape)(), precision,
                            input_size=spec.input_size, mean=spec.mean, std=spec.std, calib_images=calib_images)
        save_onnx(proto, onnx_path, force=force)
    show(f"wrote {onnx_path}")
    if verify:
        from m2pt_deploy.export.int8.cpu import VERIFY_IMAGES as HELD_OUT
        from m2pt_deploy.verify.tensorrt import verify_onnx_precision

        images = held_out_inputs(spec, HELD_OUT)
        with step(f"verifying the {precision} ONNX in ONNX Runtime against the unmerged model"):
            check = verify_onnx_precision(ckpt, onnx_path, images, precision=precision)
        show(check)
        _write_report(report, {**check.to_dict(), "notes": list(ckpt.notes)}, force=force)
        if not check:
            return ExportResult((onnx_path,), check, kept=onnx_path)
    out = build_engine_from_onnx(onnx_path, engine_path, precision=precision,  # type: ignore[arg-type]
                                 batch=shape, workspace_gb=workspace_gb, timing_cache=timing_cache,
                                 opt_level=opt_level, force=force)
    show(f"wrote {out} and {out.name}.json")
    return ExportResult((onnx_path, out, out.with_name(out.name + ".json")), check if verify else None)


def export_triton(
    checkpoint: CheckpointSource,
    repository: str | os.PathLike[str] | None = None,
    *,
    name: str | None = None,
    max_batch: int = 8,
    instances: int = 1,
    instance_kind: str = "KIND_CPU",
    trt_accelerator: str | None = None,
    engine: str | os.PathLike[str] | None = None,
    storage_uri: str = "s3://CHANGE-ME/model_repository",
    force: bool = False,
    show: Show = silent,
    **onnx_options: Any,
) -> ExportResult:
    """A Triton model repository folder (config.pbtxt, 1/model.onnx, a KServe InferenceService
    manifest) holding the verified ONNX export; ``onnx_options`` are :func:`export_onnx`'s."""
    from m2pt_deploy.export.triton import check_model_folder, write_triton_repository

    source = _source_path(checkpoint)
    repo = Path(repository or source.parent / "model_repository")
    name = name or source.stem
    check_model_folder(repo, name, force=force)
    with tempfile.TemporaryDirectory(prefix="m2pt-triton-") as tmp:
        exported = export_onnx(checkpoint, Path(tmp) / "model.onnx", force=force, show=show, **onnx_options)
        if not exported.passed:
            return ExportResult((), exported.verdict, kept=None)
        precision = trt_accelerator.upper() if trt_accelerator else None
        with step(f"writing Triton model {name} into {repo}"):
            model_dir = write_triton_repository(
                exported.files[0], repo, name=name, max_batch=max_batch, instance_count=instances,
                instance_kind=instance_kind, tensorrt_precision=precision,  # type: ignore[arg-type]
                engine=engine, storage_uri=storage_uri, force=force,
            )
    show(f"wrote {model_dir} (KServe: copy {repo} to {storage_uri}, then "
         f"kubectl apply -f {model_dir / 'inferenceservice.yaml'})")
    return ExportResult((model_dir, model_dir / "inferenceservice.yaml"), exported.verdict)
