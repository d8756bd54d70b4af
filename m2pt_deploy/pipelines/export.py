"""``export`` (one :class:`~m2pt_deploy.request.ExportRequest`), and its keyword forms
``export_onnx``, ``export_tensorrt``, ``export_triton``: checkpoint → merged vanilla model →
deployable artifact, verified by default. ``m2pt-export`` is a thin shell over ``export``;
Python users get the same checks, files and verdicts.

The whole request is validated and every output probed before the minutes of export and
calibration. Verified or nothing: an artifact is written under a temporary name beside its
destination and takes its final name only once its verification passed; a failed verification
keeps it as ``NAME.unverified.EXT`` and says so in the result (the CLI exits 1); an error or an
interrupt leaves neither.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.extras import tensorrt_importable
from m2pt_deploy.fileio import Staged, atomic_output, staged_output, unverified_path
from m2pt_deploy.heap import release_freed_memory
from m2pt_deploy.inputs.calibration import held_out_inputs, int8_data
from m2pt_deploy.model.checkpoint import Checkpoint, load_checkpoint
from m2pt_deploy.progress import note, step
from m2pt_deploy.request import ExportRequest, ModelRequest
from m2pt_deploy.vocabulary import DEFAULT_OPSET, VERIFY_IMAGES, FloatPrecision

__all__ = ["ExportResult", "Verdict", "export", "export_onnx", "export_tensorrt", "export_triton", 
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


def load_for_export(checkpoint: CheckpointSource, model: ModelRequest | Mapping[str, Any] | None = None
                    ) -> Checkpoint:
    """``checkpoint`` as loaded, with ``model`` (a :class:`ModelRequest`, or ``load_checkpoint``'s
    keyword arguments: arch, input_size, ema, family, options) applied and its notes shown."""
    request = ModelRequest.of(model).validate()
    if isinstance(checkpoint, Checkpoint):
        if request.given:
            raise M2ptError("model settings apply when a checkpoint is loaded; this one is loaded already "
                            "(pass its path, or load it with them)", checkpoint.path)
        return checkpoint
    ckpt = load_checkpoint(checkpoint, **request.load_kwargs())
    for text in ckpt.notes:
        note(text)
    return ckpt


def _write_report(path: str | os.PathLike[str] | None, data: Mapping[str, Any], *, force: bool) -> None:
    if path:
        with atomic_output(path, force=force) as tmp:
            tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


def _source_path(checkpoint: CheckpointSource) -> Path:
    return checkpoint.path if isinstance(checkpoint, Checkpoint) else Path(checkpoint)


def export(request: ExportRequest, *, source: Checkpoint | None = None, show: Show = silent) -> ExportResult:
    """Run one export request (``m2pt-export``): validated in full first, then merged, exported,
    verified and moved into place. ``source`` is the request's checkpoint already loaded, if
    the caller has it."""
    request.validate()
    checkpoint: CheckpointSource = source if source is not None else request.checkpoint
    if request.format == "onnx":
        return _export_onnx(request, checkpoint, show)
    if request.format == "trt":
        return _export_tensorrt(request, checkpoint, show)
    return _export_triton(request, checkpoint, show)


def export_onnx(
    checkpoint: CheckpointSource,
    output: str | os.PathLike[str] | None = None,
    *,
    model: ModelRequest | Mapping[str, Any] | None = None,
    precision: str = "fp32",
    opset: int | None = None,
    batch: str | None = None,
    optimize: bool = False,
    calib_data: str | os.PathLike[str] | None = None,
    calib_images: int | None = None,
    verify_images: int | None = None,
    int8_target: str | None = None,
    verify: bool = True,
    report: str | os.PathLike[str] | None = None,
    force: bool = False,
    show: Show = silent,
) -> ExportResult:
    """Merge and export to ONNX (fp32, fp16, or int8 Q/DQ for ONNX Runtime on CPU), then verify.

    ``batch``: ``"N"`` for a static batch, ``None`` for a dynamic one. ``optimize`` writes ONNX
    Runtime's CPU fast path. int8 calibrates on ``calib_data`` (a folder of images or an .npz
    ``x``; default: photo tiles, RGB models only) with ``calib_images`` inputs (default 256) and
    is verified on ``verify_images`` held-out inputs (default 256), for ``int8_target`` (default:
    this CPU). The default output is the checkpoint's path with ``.onnx``. Options that do not
    apply (``calib_data`` with fp32, say) are refused, as on the command line.
    """
    request = ExportRequest(
        _source_path(checkpoint), "onnx", output, force, ModelRequest.of(model), precision, opset, batch, optimize,
        calib_data, calib_images, verify_images, int8_target, verify, report)
    return export(request, source=checkpoint if isinstance(checkpoint, Checkpoint) else None, show=show)


def _export_onnx(req: ExportRequest, checkpoint: CheckpointSource, show: Show) -> ExportResult:
    out = req.destination
    with staged_output(out, force=req.force) as staged:
        verdict = _write_verified_onnx(req, checkpoint, staged, show)
        return _settle(req, staged, verdict, show)


def _settle(req: ExportRequest, staged: Staged, verdict: Verdict | None, show: Show) -> ExportResult:
    """Report, then the artifact's final name: its own when it passed (or was not verified), one
    that says so when it failed."""
    if verdict is None:
        final = staged.commit()
        show(f"wrote {final} (not verified: --no-verify)")
        return ExportResult((final,))
    final = staged.out if verdict else unverified_path(staged.out)
    verdict = _renamed(verdict, final)
    _write_report(req.report, verdict.to_dict(), force=req.force)
    show(verdict)
    if not verdict:
        kept = staged.keep_unverified()
        return ExportResult((kept,), verdict, kept=kept)
    final = staged.commit()
    show(f"wrote {final}")
    return ExportResult((final,), verdict)


def _renamed(verdict: Verdict, path: Path) -> Verdict:
    """The verdict naming the artifact by its final path, not the staging one it was checked at."""
    if dataclasses.is_dataclass(verdict) and any(f.name == "onnx" for f in dataclasses.fields(verdict)):
        return dataclasses.replace(verdict, onnx=str(path))  # type: ignore[type-var]
    return verdict


def _write_verified_onnx(req: ExportRequest, checkpoint: CheckpointSource, staged: Staged,
                         show: Show) -> Verdict | None:
    """Export into ``staged.path`` and verify it there; ``None`` when verification is off."""
    from m2pt_deploy.export.onnx import DYNAMIC_BATCH, OnnxFromCheckpoint

    int8 = req.precision == "int8"
    ckpt = load_for_export(checkpoint, req.model)
    # Calibration and held-out inputs are read (and refused) before the export's minutes.
    data = _int8_data(ckpt, req) if int8 else None
    float_precision: FloatPrecision = "fp16" if req.precision == "fp16" else "fp32"
    opset = req.opset or DEFAULT_OPSET
    shape = req.batch_spec
    loader = OnnxFromCheckpoint(ckpt, opset=opset, precision=float_precision, batch=shape)
    shown = "dynamic batch" if shape == DYNAMIC_BATCH else f"batch {shape}"
    with step(f"merging and exporting {ckpt.spec.arch} to ONNX (opset {opset}, {float_precision}, {shown})"):
        proto = loader()
    # Each step rebinds ``proto``, so the previous graph is freed before verification, and
    # the freed heap goes back to the OS so steps do not stack in RSS.
    release_freed_memory()
    if data is not None:
        proto = _quantize(proto, data, optimize=req.optimize, int8_target=req.int8_target or "auto")
    elif req.optimize:
        from m2pt_deploy.export.optimize import optimize_onnx

        with step("fusing attention, LayerNorm and GELU; optimizing with ONNX Runtime"):
            proto = optimize_onnx(proto)
    _save(proto, staged.path)
    del proto
    release_freed_memory()
    if not req.verify:
        return None
    if data is not None:
        return _Noted(_verify_int8(ckpt, staged.path, data), ckpt.notes)
    return _verify_float(ckpt, staged.path)


@dataclasses.dataclass(frozen=True)
class _Noted:
    """A verdict whose ``to_dict`` also lists what the checkpoint left unsaid (the int8 check's
    result does not carry the checkpoint's notes itself)."""

    verdict: Any
    notes: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.verdict)

    def __str__(self) -> str:
        return str(self.verdict)

    def to_dict(self) -> dict[str, Any]:
        return {**self.verdict.to_dict(), "notes": list(self.notes)}


def _int8_data(ckpt: Checkpoint, req: ExportRequest) -> Any:
    return int8_data(ckpt.spec, calib_data=req.calib_data, calib_images=req.calib_images or 256,
                     verify_images=req.verify_images or VERIFY_IMAGES)


def _save(proto: Any, out: Path) -> None:
    from m2pt_deploy.export.onnx import save_onnx
    from m2pt_deploy.export.optimize import save_optimized
    from m2pt_deploy.runtime.sessions import is_optimized

    if is_optimized(proto):
        save_optimized(proto, out)
    else:
        save_onnx(proto, out)


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
    model: ModelRequest | Mapping[str, Any] | None = None,
    precision: str = "fp16",
    opset: int | None = None,
    batch: str | None = None,
    calib_images: int | None = None,
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
    request = ExportRequest(
        _source_path(checkpoint), "trt", engine, force, ModelRequest.of(model), precision, opset, batch,
        calib_images=calib_images, verify=verify, report=report, workspace_gb=workspace_gb,
        timing_cache=timing_cache, opt_level=opt_level)
    return export(request, source=checkpoint if isinstance(checkpoint, Checkpoint) else None, show=show)


def _export_tensorrt(req: ExportRequest, checkpoint: CheckpointSource, show: Show) -> ExportResult:
    from m2pt_deploy.export.engine_onnx import engine_onnx
    from m2pt_deploy.export.onnx import OnnxFromCheckpoint, save_onnx
    from m2pt_deploy.export.tensorrt import build_engine_from_onnx

    engine_path = req.destination
    onnx_path = engine_path.with_suffix(f".{req.precision}.onnx")
    if not tensorrt_importable():
        # Said now, not after minutes of export and verification.
        note(f"TensorRT is not importable here: the verified {onnx_path.name} and {engine_path.name}.build.sh "
             "will be written, and the engine is built from them on a machine with TensorRT and a GPU")
    ckpt = load_for_export(checkpoint, req.model)
    spec = ckpt.spec
    precision, shape = req.precision, req.batch_spec
    # int8 / fp8 calibrate on the user's inputs (any family) or on photo tiles (RGB images), and
    # are verified on a held-out part of the same; refused here, before the export, without them.
    data = _int8_data(ckpt, req) if precision in ("int8", "fp8") else None
    with staged_output(onnx_path, force=req.force) as staged:
        with step(f"exporting {spec.arch} to {precision} ONNX for TensorRT (batch profile {shape})"):
            proto = engine_onnx(OnnxFromCheckpoint(ckpt, opset=req.opset or DEFAULT_OPSET, batch=shape)(),
                                precision, input_size=spec.input_size, mean=spec.mean, std=spec.std,
                                calibration=data.calibration if data is not None else None)
            save_onnx(proto, staged.path)
        verdict: Verdict | None = None
        if req.verify:
            from m2pt_deploy.verify.tensorrt import verify_onnx_precision

            images = data.held_out if data is not None else held_out_inputs(spec)
            source = data.source if data is not None else "held-out inputs"
            with step(f"verifying the {precision} ONNX in ONNX Runtime against the unmerged model "
                      f"({len(images)} {source})"):
                verdict = _Noted(verify_onnx_precision(ckpt, staged.path, images, precision=precision), ckpt.notes)
        settled = _settle(req, staged, verdict, show)
    if not settled.passed:
        return settled
    out = build_engine_from_onnx(onnx_path, engine_path, precision=precision,  # type: ignore[arg-type]
                                 batch=shape, workspace_gb=req.workspace_gb, timing_cache=req.timing_cache,
                                 opt_level=req.opt_level, force=req.force)
    show(f"wrote {out} and {out.name}.json")
    return ExportResult((onnx_path, out, out.with_name(out.name + ".json")), verdict)


def export_triton(
    checkpoint: CheckpointSource,
    repository: str | os.PathLike[str] | None = None,
    *,
    name: str | None = None,
    max_batch: int | None = None,
    instances: int | None = None,
    instance_kind: str | None = None,
    trt_accelerator: str | None = None,
    engine: str | os.PathLike[str] | None = None,
    storage_uri: str | None = None,
    force: bool = False,
    show: Show = silent,
    **onnx_options: Any,
) -> ExportResult:
    """A Triton model repository folder (config.pbtxt, 1/model.onnx, a KServe InferenceService
    manifest) holding the verified ONNX export; ``onnx_options`` are :func:`export_onnx`'s.
    Defaults: the checkpoint's stem as ``name``, ``max_batch`` 8, one ``KIND_CPU`` instance."""
    model = ModelRequest.of(onnx_options.pop("model", None))
    fields = {f.name for f in dataclasses.fields(ExportRequest)}
    unknown = set(onnx_options) - fields
    if unknown:
        raise M2ptError(f"unknown export option(s): {', '.join(sorted(unknown))}")
    request = ExportRequest(
        _source_path(checkpoint), "triton", repository, force, model, name=name, max_batch=max_batch,
        instances=instances, instance_kind=instance_kind, trt_accelerator=trt_accelerator, engine=engine,
        storage_uri=storage_uri, **onnx_options)
    return export(request, source=checkpoint if isinstance(checkpoint, Checkpoint) else None, show=show)


DEFAULT_STORAGE_URI = "s3://CHANGE-ME/model_repository"


def _export_triton(req: ExportRequest, checkpoint: CheckpointSource, show: Show) -> ExportResult:
    from m2pt_deploy.export.triton import check_model_folder, write_triton_repository

    model_dir = req.destination
    repo, name = model_dir.parent, model_dir.name
    check_model_folder(repo, name, force=req.force)
    repo.mkdir(parents=True, exist_ok=True)
    # The ONNX is staged beside the model folder; only a verified one goes into the repository.
    with staged_output(repo / f"{name}.onnx", force=True) as staged:
        verdict = _write_verified_onnx(req, checkpoint, staged, show)
        if verdict is not None and not verdict:
            return _settle(req, staged, verdict, show)
        if verdict is not None:
            verdict = _renamed(verdict, model_dir / "1" / "model.onnx")
            _write_report(req.report, verdict.to_dict(), force=req.force)
            show(verdict)
        storage_uri = req.storage_uri or DEFAULT_STORAGE_URI
        with step(f"writing Triton model {name} into {repo}"):
            write_triton_repository(
                staged.path, repo, name=name, max_batch=8 if req.max_batch is None else req.max_batch,
                instance_count=req.instances or 1, instance_kind=req.instance_kind or "KIND_CPU",  # type: ignore[arg-type]
                tensorrt_precision=req.trt_accelerator.upper() if req.trt_accelerator else None,  # type: ignore[arg-type]
                engine=req.engine, storage_uri=storage_uri, force=req.force,
            )
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        show(f"wrote {path}" + ("" if verdict is not None or path.suffix != ".onnx" else
                                " (not verified: --no-verify)"))
    show(f"KServe: copy {repo} to {storage_uri}, then kubectl apply -f {model_dir / 'inferenceservice.yaml'}")
    return ExportResult((model_dir, model_dir / "inferenceservice.yaml"), verdict)
