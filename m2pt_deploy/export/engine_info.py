"""The sidecar JSON beside every engine, and the checks it makes possible before loading.

A TensorRT plan only runs on the TensorRT version and GPU architecture that built it,
and a plan carries no readable description of itself. So the engine file stays a plain
plan (anything can load it) and what it is — versions, GPU, precision, profile, the
source ONNX's hash — lives in ``<engine>.json``.

``m2pt-export`` writes the sidecar after building in Python. An engine built outside
Python (``<engine>.build.sh``, ``trtexec``, ``polygraphy convert``) gets it from
``python -m m2pt_deploy engine-info sidecar`` (:mod:`m2pt_deploy.cli.engine_info`), run where the
engine was built.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.export.onnx import BatchSpec
from m2pt_deploy.export.profiles import ShapeProfile, profile_for
from m2pt_deploy.fileio import atomic_output, sha256_file
from m2pt_deploy.metadata import PRECISION_KEY, read_metadata
from m2pt_deploy.runtime.tensorrt import trt_runner
from m2pt_deploy.vocabulary import API_PATHS, PRECISIONS, ApiPath, EnginePrecision

if TYPE_CHECKING:
    from polygraphy.backend.base import BaseRunner

__all__ = [
    "API_PATHS",
    "PRECISIONS",
    "ApiPath",
    "EngineInfo",
    "Platform",
    "TrtPrecision",
    "check_compatible",
    "check_engine_file",
    "describe_engine",
    "detect_platform",
    "engine_runner",
    "read_engine_info",
    "sidecar_path",
    "write_engine_info",
    "write_sidecar",
]

TrtPrecision = EnginePrecision
FORMAT_VERSION = 1
# Leading bytes of files that are often passed where an engine belongs.
_NOT_ENGINES: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a zip archive (a torch checkpoint?)"),
    (b"\x80", "a pickle"),
    (b"{", "a JSON file (the engine's sidecar?)"),
)


@dataclasses.dataclass(frozen=True)
class EngineInfo:
    tensorrt_version: str
    api_path: str
    gpu_name: str
    compute_capability: tuple[int, int]
    precision: str
    profile: ShapeProfile
    onnx_sha256: str
    engine_sha256: str
    model: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["profile"] = self.profile.to_dict()
        d["compute_capability"] = list(self.compute_capability)
        d["model"] = dict(self.model)
        return {"format_version": FORMAT_VERSION, **d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EngineInfo:
        major, minor = d["compute_capability"]
        return cls(
            tensorrt_version=str(d["tensorrt_version"]), api_path=str(d["api_path"]),
            gpu_name=str(d["gpu_name"]), compute_capability=(int(major), int(minor)),
            precision=str(d["precision"]), profile=ShapeProfile.from_dict(d["profile"]),
            onnx_sha256=str(d["onnx_sha256"]), engine_sha256=str(d["engine_sha256"]),
            model=dict(d.get("model", {})),
        )


def sidecar_path(engine: str | os.PathLike[str]) -> Path:
    path = Path(engine)
    return path.with_name(path.name + ".json")


def write_engine_info(engine: str | os.PathLike[str], info: EngineInfo, *, force: bool = False) -> Path:
    out = sidecar_path(engine)
    with atomic_output(out, force=force) as tmp:
        tmp.write_text(json.dumps(info.to_dict(), indent=2, sort_keys=True) + "\n")
    return out


def read_engine_info(engine: str | os.PathLike[str]) -> EngineInfo:
    """The sidecar of ``engine``; the engine file itself is checked against its recorded hash."""
    check_engine_file(engine)
    path = sidecar_path(engine)
    if not path.is_file():
        raise M2ptError(f"no sidecar {path.name} beside the engine; build engines with m2pt-export "
                        "--format trt or the ENGINE.build.sh it writes (both write the sidecar), or write "
                        "it where the engine was built: python -m m2pt_deploy engine-info sidecar "
                        "ENGINE --onnx ONNX --batch MIN:OPT:MAX --api-path PATH", engine)
    try:
        info = EngineInfo.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise M2ptError(f"sidecar is not a valid engine description ({type(e).__name__}: {e})", path) from e
    if sha256_file(engine) != info.engine_sha256:
        raise M2ptError(f"engine does not match its sidecar {path.name} (sha256 differs); "
                        "was it rebuilt or replaced?", engine)
    return info


def check_engine_file(engine: str | os.PathLike[str]) -> None:
    """Refuse what is plainly not a TensorRT plan, before TensorRT (or its absence) is involved.

    ONNX models start with field 1 (``ir_version``, tag byte 0x08); safetensors with an
    8-byte header length and then JSON.
    """
    path = Path(engine)
    if not path.is_file():
        raise M2ptError("engine file not found", path)
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        raise M2ptError("engine file is empty", path)
    if path.suffix == ".onnx" or (head[:1] == b"\x08" and _looks_like_onnx(path)):
        raise M2ptError("is an ONNX model, not a TensorRT engine; build one with "
                        "m2pt-export --format trt", path)
    if head[8:10] == b'{"':
        raise M2ptError("is a safetensors file, not a TensorRT engine", path)
    for magic, what in _NOT_ENGINES:
        if head.startswith(magic):
            raise M2ptError(f"is {what}, not a TensorRT engine", path)


def check_compatible(
    info: EngineInfo,
    *,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: tuple[int, int],
    source: str | os.PathLike[str] | None = None,
) -> None:
    """A plan deserialises only on the TensorRT version and GPU architecture that built it."""
    if info.tensorrt_version != tensorrt_version:
        raise M2ptError(f"engine was built with TensorRT {info.tensorrt_version} but this machine has "
                        f"TensorRT {tensorrt_version}; rebuild it here", source)
    if info.compute_capability != tuple(compute_capability):
        built, here = info.compute_capability, compute_capability
        raise M2ptError(f"engine was built for {info.gpu_name} (sm_{built[0]}{built[1]}) but this GPU is "
                        f"{gpu_name} (sm_{here[0]}{here[1]}); rebuild it here", source)


def engine_runner(engine_path: str | os.PathLike[str], *, platform: Platform | None = None,
                  name: str | None = None) -> tuple[BaseRunner, EngineInfo]:
    """A Polygraphy ``TrtRunner`` (:func:`~m2pt_deploy.runtime.tensorrt.trt_runner`), once the
    sidecar says the engine runs here."""
    path = Path(engine_path)
    info = read_engine_info(path)
    platform = platform or detect_platform()
    missing = platform.missing()
    if missing is not None:
        raise M2ptError(f"cannot run the engine: {missing}", path)
    assert platform.tensorrt_version and platform.gpu_name and platform.compute_capability
    check_compatible(info, tensorrt_version=platform.tensorrt_version, gpu_name=platform.gpu_name,
                     compute_capability=platform.compute_capability, source=path)
    return trt_runner(path, name=name), info


def _looks_like_onnx(path: Path) -> bool:
    try:
        proto = onnx.load_model(path, load_external_data=False)
    except Exception:  # noqa: BLE001 - any parse failure just means "not ONNX"
        return False
    return len(proto.graph.node) > 0


@dataclasses.dataclass(frozen=True)
class Platform:
    """What this machine offers a build: TensorRT's version and the GPU, either may be absent."""

    tensorrt_version: str | None
    gpu_name: str | None
    compute_capability: tuple[int, int] | None

    def missing(self) -> str | None:
        if self.tensorrt_version is None:
            return "TensorRT is not installed (the Python module 'tensorrt' cannot be imported)"
        if self.gpu_name is None or self.compute_capability is None:
            return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
        return None


def detect_platform(*, nvidia_smi: bool = False) -> Platform:
    """TensorRT's version and the first CUDA GPU as torch sees it: what a loaded engine is checked against.

    With ``nvidia_smi``, a GPU torch cannot see (a CPU-only torch beside ``trtexec``) is read
    from ``nvidia-smi`` instead; used only to describe an engine built outside Python.
    """
    cc: tuple[int, int] | None = None
    name: str | None = None
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        cc = tuple(torch.cuda.get_device_capability(0))  # type: ignore[assignment]
    elif nvidia_smi:
        name, cc = _nvidia_smi_gpu()
    return Platform(_tensorrt_version(), name, cc)


def _nvidia_smi_gpu() -> tuple[str | None, tuple[int, int] | None]:
    # NOTE: nvidia-smi numbers GPUs in PCI bus order, CUDA fastest first unless
    # CUDA_DEVICE_ORDER=PCI_BUS_ID; the two agree except on machines with mixed GPUs.
    cmd = ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        first = visible.split(",")[0].strip()
        if not first:
            return None, None  # every GPU hidden from CUDA
        cmd += ["-i", first]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
        name, cap = out.strip().splitlines()[0].rsplit(",", 1)
        major, minor = cap.strip().split(".")
        return name.strip(), (int(major), int(minor))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None, None


def _tensorrt_version() -> str | None:
    try:
        import tensorrt
    except (ImportError, OSError):  # OSError: the wheel is there, libnvinfer is not
        return None
    # A stubs-only install is an importable namespace package without a version.
    version = getattr(tensorrt, "__version__", None)
    return str(version) if version else None


def describe_engine(onnx_file: Path, proto: onnx.ModelProto, engine: Path, profile: ShapeProfile,
                    precision: str, api_path: str, platform: Platform) -> EngineInfo:
    """The one description of an engine, however it was built: ``platform`` is the building machine."""
    assert platform.tensorrt_version and platform.gpu_name and platform.compute_capability
    return EngineInfo(
        tensorrt_version=platform.tensorrt_version, api_path=api_path, gpu_name=platform.gpu_name,
        compute_capability=platform.compute_capability, precision=precision, profile=profile,
        onnx_sha256=sha256_file(onnx_file), engine_sha256=sha256_file(engine), model=read_metadata(proto),
    )


def write_sidecar(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    *,
    batch: BatchSpec,
    api_path: ApiPath,
    precision: str | None = None,
    platform: Platform | None = None,
    force: bool = False,
) -> Path:
    """The sidecar of an engine built outside Python (``<engine>.build.sh``, trtexec, polygraphy).

    Must run where the engine was built: the TensorRT version and GPU it records are this
    machine's. Everything else comes from the ONNX, as when ``m2pt-export`` builds.

    Args:
        batch: the batch range the engine's optimization profile was built with.
        api_path: ``strong-typing`` (``--stronglyTyped``) or ``builder-flags`` (``--fp16`` etc.).
        precision: default: the ONNX's ``m2pt_deploy.precision``; on ``strong-typing`` the two
            must agree.
    """
    engine = Path(engine_path)
    check_engine_file(engine)
    if api_path not in API_PATHS:
        raise M2ptError(f"api path {api_path!r}: choose one of {', '.join(API_PATHS)}")
    onnx_file = Path(onnx_path)
    if not onnx_file.is_file():
        raise M2ptError("ONNX file not found", onnx_file)
    proto = onnx.load_model(onnx_file, load_external_data=False)
    precision = _onnx_precision(proto, precision, api_path, onnx_file)
    profile = profile_for(proto, batch)
    platform = platform or detect_platform(nvidia_smi=True)
    if platform.tensorrt_version is None:
        raise M2ptError(f"cannot record the engine's TensorRT version: {platform.missing()}; run this "
                        "where the engine was built, with TensorRT's Python module", engine)
    if platform.gpu_name is None or platform.compute_capability is None:
        raise M2ptError("cannot record the engine's GPU: torch sees no CUDA device and nvidia-smi "
                        "lists none; run this on the machine that built the engine", engine)
    info = describe_engine(onnx_file, proto, engine, profile, precision, api_path, platform)
    return write_engine_info(engine, info, force=force)


def _onnx_precision(proto: onnx.ModelProto, given: str | None, api_path: str, source: Path) -> str:
    recorded = PRECISION_KEY.get(read_metadata(proto))
    # A strongly typed engine computes in the ONNX's types; builder flags may lower an fp32 ONNX.
    if given is not None and recorded is not None and given != recorded and api_path == "strong-typing":
        raise M2ptError(f"--precision {given}, but the ONNX is {recorded} ({PRECISION_KEY}) and a "
                        "strongly typed engine computes in the ONNX's types", source)
    precision = given or recorded
    if precision not in PRECISIONS:
        raise M2ptError(f"the ONNX names no precision ({PRECISION_KEY} {recorded!r}); pass "
                        f"--precision, one of {', '.join(PRECISIONS)}", source)
    return str(precision)
