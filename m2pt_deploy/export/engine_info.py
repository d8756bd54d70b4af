"""The sidecar JSON beside every engine, and the checks it makes possible before loading.

A TensorRT plan only runs on the TensorRT version and GPU architecture that built it,
and a plan carries no readable description of itself. So the engine file stays a plain
plan (anything can load it) and what it is — versions, GPU, precision, profile, the
source ONNX's hash — lives in ``<engine>.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.export.profiles import ShapeProfile
from m2pt_deploy.fileio import atomic_output, sha256_file

__all__ = [
    "EngineInfo",
    "check_compatible",
    "check_engine_file",
    "read_engine_info",
    "sidecar_path",
    "write_engine_info",
]

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
        raise M2ptError(f"no sidecar {path.name} beside the engine; build engines with "
                        "m2pt-export --format trt", engine)
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


def _looks_like_onnx(path: Path) -> bool:
    import onnx

    try:
        proto = onnx.load_model(path, load_external_data=False)
    except Exception:  # noqa: BLE001 - any parse failure just means "not ONNX"
        return False
    return len(proto.graph.node) > 0
