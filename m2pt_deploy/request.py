"""One typed request per job, validated before any work (and before torch or onnx is imported).

The command line parses into these; the library functions build the same objects from their
keyword arguments and validate them the same way, so the Python API refuses what the CLI
refuses. Messages name the command-line flag (``--calib-data``); its Python field is the same
word with underscores (``calib_data``).

An option that does not apply to the chosen format, precision or mode is refused, never
ignored: a field left at ``None`` means "not given" (the default applies, and the help says
which); anything else must fit.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from m2pt_deploy.cpu import INT8_TARGETS
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.extras import require_onnxruntime
from m2pt_deploy.fileio import check_output_folder, check_output_path
from m2pt_deploy.filekind import file_kind, require_checkpoint
from m2pt_deploy.vocabulary import (
    DYNAMIC_BATCH,
    FORMATS,
    MIN_OPSET,
    ONNX_PRECISIONS,
    PRECISIONS,
    BatchSpec,
    check_build_options,
    parse_batch,
)

__all__ = ["INSTANCE_KINDS", "INT8_TARGET_CHOICES", "BenchRequest", "ExportRequest", "MergeRequest", "ModelRequest",
           "flag", "refuse_inapplicable"]

INSTANCE_KINDS = ("KIND_CPU", "KIND_GPU", "KIND_AUTO")
INT8_TARGET_CHOICES = ("auto", *INT8_TARGETS)


# Fields whose flag is not the field's name with dashes.
_FLAG_NAMES = {"workspace_gb": "--workspace", "verify": "--no-verify", "output": "--output"}


def flag(field: str) -> str:
    """The command-line spelling of a request field: ``calib_data`` → ``--calib-data``."""
    return _FLAG_NAMES.get(field, "--" + field.replace("_", "-"))


def refuse_inapplicable(given: Mapping[str, object], why: str) -> None:
    """Refuse the first option that was given (not ``None`` / ``False``) where it does not apply."""
    for field, value in given.items():
        if value is not None and value is not False:
            raise M2ptError(f"{flag(field)} {why}")


@dataclasses.dataclass(frozen=True)
class ModelRequest:
    """What the checkpoint says or implies, overridden: ``load_checkpoint``'s keyword arguments."""

    family: str | None = None
    arch: str | None = None
    input_size: tuple[int, ...] | None = None
    #: Family settings the weights do not show (``num_heads``, Point-MAE's ``npoints`` ...).
    options: Mapping[str, int] = dataclasses.field(default_factory=dict)
    ema: bool = False

    @classmethod
    def of(cls, model: ModelRequest | Mapping[str, Any] | None) -> ModelRequest:
        """A request from itself, ``None`` or ``load_checkpoint``-style keyword arguments."""
        if isinstance(model, ModelRequest):
            return model
        values = dict(model or {})
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise M2ptError(f"unknown model setting(s): {', '.join(sorted(unknown))}")
        if values.get("input_size") is not None:
            values["input_size"] = tuple(values["input_size"])
        values["options"] = dict(values.get("options") or {})
        values["ema"] = bool(values.get("ema"))
        return cls(**values)

    def validate(self) -> ModelRequest:
        if self.input_size is not None:
            if len(self.input_size) not in (3, 4):
                raise M2ptError(f"--input-size takes C H W (or C T H W for video), got {len(self.input_size)} "
                                "numbers")
            if any(int(n) < 1 for n in self.input_size):
                raise M2ptError(f"--input-size {' '.join(map(str, self.input_size))}: every number must be at "
                                "least 1")
        for name, value in self.options.items():
            if not isinstance(value, int) or value < 1:
                raise M2ptError(f"{flag(name)} {value}: must be a whole number, at least 1")
        return self

    @property
    def given(self) -> bool:
        return any((self.family, self.arch, self.input_size, self.options, self.ema))

    def load_kwargs(self) -> dict[str, Any]:
        return {"family": self.family, "arch": self.arch, "input_size": self.input_size,
                "options": dict(self.options), "ema": self.ema}


def _existing(path: str | os.PathLike[str] | None, missing: str, *, folder_ok: bool = True) -> None:
    if path is None:
        return
    kind = file_kind(path)
    if kind.kind == "missing":
        raise M2ptError(missing, path)
    if kind.kind == "directory" and not folder_ok:
        raise M2ptError("is a directory; give a file", path)


@dataclasses.dataclass(frozen=True)
class ExportRequest:
    """``m2pt-export``: one checkpoint to one verified artifact (``format`` onnx, trt or triton).

    ``None`` fields take their defaults: output beside the checkpoint; precision fp32; for int8
    256 calibration inputs, 256 held-out ones and this CPU's integer path; for Triton the
    checkpoint's stem as the name, ``max_batch`` 8, one ``KIND_CPU`` instance.
    """

    checkpoint: str | os.PathLike[str]
    format: str = "onnx"
    output: str | os.PathLike[str] | None = None
    force: bool = False
    model: ModelRequest = dataclasses.field(default_factory=ModelRequest)
    precision: str = "fp32"
    opset: int | None = None
    batch: str | None = None
    optimize: bool = False
    calib_data: str | os.PathLike[str] | None = None
    calib_images: int | None = None
    verify_images: int | None = None
    int8_target: str | None = None
    verify: bool = True
    report: str | os.PathLike[str] | None = None
    # TensorRT
    workspace_gb: float | None = None
    timing_cache: str | os.PathLike[str] | None = None
    opt_level: int | None = None
    # Triton
    name: str | None = None
    max_batch: int | None = None
    instances: int | None = None
    instance_kind: str | None = None
    trt_accelerator: str | None = None
    engine: str | os.PathLike[str] | None = None
    storage_uri: str | None = None

    def validate(self) -> ExportRequest:
        """Every option checked against the format, precision and the others; files recognised and
        outputs probed; nothing read in full, nothing written."""
        self.model.validate()
        if self.format not in FORMATS:
            raise M2ptError(f"--format {self.format!r}: choose one of {', '.join(FORMATS)}")
        self._check_precision()
        self._check_values()
        self._check_applicability()
        if self.verify or self.optimize or self.precision == "int8":
            require_onnxruntime("verifying the export" if self.verify else "--optimize and int8")
        require_checkpoint(self.checkpoint)
        _existing(self.calib_data, "no such calibration data")
        _existing(self.engine, "--engine: no such file", folder_ok=False)
        self._check_outputs()
        return self

    def _check_precision(self) -> None:
        if self.precision not in PRECISIONS:
            raise M2ptError(f"--precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.format != "trt" and self.precision not in ONNX_PRECISIONS:
            raise M2ptError(f"--precision {self.precision} is only for --format trt; "
                            f"ONNX export takes {', '.join(ONNX_PRECISIONS)}")
        if self.optimize and self.format != "onnx":
            raise M2ptError(f"--optimize is for --format onnx (ONNX Runtime on CPU), not --format {self.format}")
        if self.optimize and self.precision == "fp16":
            raise M2ptError("--optimize takes fp32 or int8: ONNX Runtime's CPU provider has no fp16 fast path")

    def _check_applicability(self) -> None:
        onnx_int8 = self.format != "trt" and self.precision == "int8"
        calibrated = onnx_int8 or (self.format == "trt" and self.precision in ("int8", "fp8"))
        where = (f"--format {self.format} --precision {self.precision}" if self.format == "trt"
                 else f"--precision {self.precision}")
        if not calibrated:
            refuse_inapplicable({"calib_data": self.calib_data, "verify_images": self.verify_images},
                                f"applies to --precision int8 (or fp8 with --format trt), not {where}")
        if not onnx_int8:
            refuse_inapplicable({"int8_target": self.int8_target},
                                f"applies to --precision int8 with --format onnx or triton, not {where}")
        if self.calib_images is not None and not (onnx_int8 or self.precision in ("int8", "fp8")):
            raise M2ptError(f"--calib-images applies to --precision int8 or fp8, not {self.precision}")
        if self.format != "trt":
            refuse_inapplicable({"workspace_gb": self.workspace_gb, "timing_cache": self.timing_cache,
                                 "opt_level": self.opt_level}, f"applies to --format trt, not {self.format}")
        if self.format != "triton":
            refuse_inapplicable({"name": self.name, "max_batch": self.max_batch, "instances": self.instances,
                                 "instance_kind": self.instance_kind, "trt_accelerator": self.trt_accelerator,
                                 "engine": self.engine, "storage_uri": self.storage_uri},
                                f"applies to --format triton, not {self.format}")
        if self.report is not None and not self.verify:
            raise M2ptError("--report writes the verification report; --no-verify skips verification")
        if self.batch is not None and ":" in self.batch and self.format != "trt":
            raise M2ptError(f"--batch {self.batch} is a TensorRT profile (MIN:OPT:MAX, for --format trt); ONNX "
                            "takes one number for a static batch, or nothing for a dynamic one")

    def _check_values(self) -> None:
        if self.opset is not None and self.opset < MIN_OPSET:
            raise M2ptError(f"--opset {self.opset}: ONNX export needs opset {MIN_OPSET} or newer")
        self.batch_spec  # noqa: B018 -- parsing is the check
        for field in ("calib_images", "verify_images", "max_batch", "instances"):
            value = getattr(self, field)
            least = 0 if field == "max_batch" else 1
            if value is not None and value < least:
                raise M2ptError(f"{flag(field)} {value}: need at least {least}")
        if self.int8_target is not None and self.int8_target not in INT8_TARGET_CHOICES:
            raise M2ptError(f"--int8-target {self.int8_target!r}: choose one of {', '.join(INT8_TARGET_CHOICES)}")
        if self.instance_kind is not None and self.instance_kind not in INSTANCE_KINDS:
            raise M2ptError(f"--instance-kind {self.instance_kind!r}: choose one of {', '.join(INSTANCE_KINDS)}")
        if self.trt_accelerator is not None:
            if self.trt_accelerator not in ("fp32", "fp16"):
                raise M2ptError(f"--trt-accelerator {self.trt_accelerator!r}: choose fp32 or fp16")
            if (self.instance_kind or "KIND_CPU") == "KIND_CPU":
                raise M2ptError("--trt-accelerator needs GPU instances: TensorRT builds engines for GPUs, and "
                                "--instance-kind is KIND_CPU; pass --instance-kind KIND_GPU or KIND_AUTO")
        if self.format == "trt":
            check_build_options(self.precision, self.workspace_gb, self.timing_cache, self.opt_level)

    @property
    def batch_spec(self) -> BatchSpec:
        return parse_batch(self.batch) if self.batch else DYNAMIC_BATCH

    @property
    def destination(self) -> Path:
        """The artifact's final path: the ONNX file, the engine, or the Triton model folder."""
        source = Path(self.checkpoint)
        if self.format == "triton":
            return Path(self.output or source.parent / "model_repository") / (self.name or source.stem)
        if self.output is not None:
            return Path(self.output)
        return source.with_suffix(".engine" if self.format == "trt" else ".onnx")

    def _check_outputs(self) -> None:
        out = self.destination
        if self.format == "triton":
            check_output_folder(out.parent)
            if out.exists() and not self.force:
                raise M2ptError("model folder exists; pass --force to replace it", out)
        else:
            check_output_path(out, force=self.force)
        if self.format == "trt":
            check_output_path(out.with_suffix(f".{self.precision}.onnx"), force=self.force)
        if self.report is not None:
            check_output_path(self.report, force=self.force)
        if self.timing_cache is not None and not Path(self.timing_cache).exists():
            check_output_path(self.timing_cache)


@dataclasses.dataclass(frozen=True)
class MergeRequest:
    """``m2pt-merge``: a pathway checkpoint to a vanilla ``.safetensors`` of its family."""

    checkpoint: str | os.PathLike[str]
    output: str | os.PathLike[str] | None = None
    force: bool = False
    model: ModelRequest = dataclasses.field(default_factory=ModelRequest)

    @property
    def destination(self) -> Path:
        src = Path(self.checkpoint)
        return Path(self.output) if self.output is not None else src.with_name(f"{src.stem}_merged.safetensors")

    def validate(self) -> MergeRequest:
        self.model.validate()
        require_checkpoint(self.checkpoint)
        check_output_path(self.destination, force=self.force)
        return self


@dataclasses.dataclass(frozen=True)
class BenchRequest:
    """``m2pt-bench``: every runtime side by side on this CPU (``device`` cpu), or the random-weight
    torch models on a GPU (cuda). ``model`` is a checkpoint or an ONNX file (``None``: random
    weights of ``arch``). ``None`` fields take the defaults the help states."""

    out: str | os.PathLike[str]
    model: str | None = None
    device: str = "cpu"
    settings: ModelRequest = dataclasses.field(default_factory=ModelRequest)
    model_kwargs: Mapping[str, Any] | None = None
    accuracy_epochs: int | None = None
    data: str | None = None
    eval_images: int | None = None
    batches: tuple[int, ...] | None = None
    rounds: int | None = None
    warmup: int | None = None
    dtypes: tuple[str, ...] | None = None
    seed: int = 0
    compile: bool = True
    int8: bool = True
    export_cost: bool = True
    calib_images: int | None = None

    def validate(self) -> BenchRequest:
        self.settings.validate()
        if self.device not in ("cpu", "cuda"):
            raise M2ptError(f"--device {self.device!r}: choose cpu or cuda")
        self._check_values()
        self._check_applicability()
        self._check_files()
        return self

    def _check_values(self) -> None:
        for field, least in (("warmup", 0), ("eval_images", 0), ("accuracy_epochs", 0), ("rounds", 1),
                             ("calib_images", 1)):
            value = getattr(self, field)
            if value is not None and value < least:
                raise M2ptError(f"{flag(field)} must be {least} or more, got {value}")
        if self.batches is not None and (not self.batches or min(self.batches) < 1):
            raise M2ptError(f"--batches must be at least 1 each, got {list(self.batches)}")

    def _check_applicability(self) -> None:
        if self.device == "cpu":
            refuse_inapplicable({"dtypes": self.dtypes}, "applies to --device cuda, not cpu")
        else:
            refuse_inapplicable({"no_int8": not self.int8, "no_export_cost": not self.export_cost,
                                 "calib_images": self.calib_images, "accuracy_epochs": self.accuracy_epochs},
                                "applies to --device cpu, not cuda")
        if self.eval_images is not None and self.data is None:
            raise M2ptError("--eval-images applies with --data (the labelled images it samples)")
        s = self.settings
        if self.model is None:
            if self.data is not None:
                raise M2ptError("--data needs a MODEL: random weights have no accuracy to measure")
            if s.ema:
                raise M2ptError("--ema needs a CHECKPOINT (its EMA weights); the random-weight run has none")
            vit = s.family in (None, "vit")
            if s.options and vit:
                flags = ", ".join("--" + k.replace("_", "-") for k in s.options)
                raise M2ptError(f"{flags}: family settings need a CHECKPOINT or a random model of that family "
                                "(--family videomae or pointmae); the random-weight run is a timm ViT of --arch")
            if not vit and (s.arch or self.model_kwargs is not None):
                raise M2ptError(f"--arch and --model-kwargs are for the random ViT; --family {s.family} benchmarks "
                                "the paper's size of that family, changed by --input-size and its settings")
            return
        if self.device == "cuda":
            raise M2ptError("--device cuda times random-weight models only; benchmark MODEL on the CPU "
                            "(leave out --device cuda)")
        if self.model_kwargs is not None:
            raise M2ptError("--model-kwargs is for the random-weight run; a checkpoint or ONNX file declares "
                            "its model")
        if self.accuracy_epochs is not None:
            raise M2ptError("--accuracy-epochs is for the random-weight run (the digits ViT); with MODEL, "
                            "--data gives the accuracy of each format")
        if file_kind(self.model).kind == "onnx" and (s.arch or s.ema):
            raise M2ptError("--arch and --ema are for checkpoints; an ONNX file is benchmarked as it is "
                            "(--input-size sets an input shape the file leaves open)")

    def _check_files(self) -> None:
        """The model recognised, --data found and --out probed before minutes of benchmarking, so a
        read-only --out is refused now, not after the last round."""
        if self.model is not None and file_kind(self.model).kind != "onnx":
            require_checkpoint(self.model)
        if self.data is not None and file_kind(self.data).kind == "missing":
            raise M2ptError("no such data file or folder", self.data)
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise M2ptError("--out must be a directory, this is a file", out)
        check_output_folder(out)
