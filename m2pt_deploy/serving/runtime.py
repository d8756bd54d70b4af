"""ONNX Runtime sessions for serving, and finding models in a file or a Triton repository.

The server never imports torch: model metadata comes from ONNX Runtime's view of the
file's ``metadata_props``, decoded the same way as ``metadata.read_metadata``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from m2pt_deploy.cpu import INT8_TARGETS, int8_target, weaker_than
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.metadata import INT8_TARGET_KEY, PRECISION_KEY, decode_metadata
from m2pt_deploy.runtime.sessions import ort_session
from m2pt_deploy.serving.protocol import TensorSpec

__all__ = [
    "PROVIDER_ALIASES",
    "OrtModel",
    "RepositoryLoader",
    "find_models",
    "load_models",
    "resolve_providers",
]

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
_ORT_TYPES = {
    "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(int8)": "INT8",
    "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
    "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
}
_MAX_BATCH_LINE = re.compile(r"^\s*max_batch_size\s*:\s*(\d+)", re.MULTILINE)


def resolve_providers(requested: Sequence[str] | None) -> list[str]:
    """Full ONNX Runtime provider names, each checked against what this install offers."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    names = [PROVIDER_ALIASES.get(p.lower(), p) for p in (requested or ["cpu"])]
    for name in names:
        if name not in available:
            raise M2ptError(f"execution provider {name} is not available in this onnxruntime "
                            f"(available: {', '.join(available)}); CUDA and TensorRT need "
                            "onnxruntime-gpu")
    return names


def _spec(node: Any) -> TensorSpec:
    datatype = _ORT_TYPES.get(node.type)
    if datatype is None:
        raise M2ptError(f"tensor '{node.name}' has type {node.type}, which the server cannot carry")
    shape = tuple(d if isinstance(d, int) else -1 for d in node.shape)
    return TensorSpec(node.name, datatype, shape)


class OrtModel:
    """One served model: an ONNX Runtime session plus what the protocol needs to describe it."""

    platform = "onnxruntime_onnx"

    def __init__(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        providers: Sequence[str],
        version: str = "1",
        max_batch: int | None = None,
        threads: int = 0,
    ) -> None:
        self.name, self.version, self.path = name, version, Path(path)
        # Threads per physical core; no second optimization pass for a file --optimize wrote.
        self.session = ort_session(path, providers=providers, threads=threads or None, path=path)
        self.providers = self.session.get_providers()
        self.inputs = tuple(_spec(n) for n in self.session.get_inputs())
        self.outputs = tuple(_spec(n) for n in self.session.get_outputs())
        self.metadata = decode_metadata(self.session.get_modelmeta().custom_metadata_map)
        self.max_batch = max_batch

    def int8_warning(self) -> str | None:
        """Why this CPU may serve the model less accurately than it was verified, if it may."""
        if PRECISION_KEY.get(self.metadata) != "int8":
            return None
        # Exports before the target was recorded used full 8-bit weights, as a VNNI target does.
        quantized = (INT8_TARGET_KEY.get(self.metadata) or {}).get("target", "vnni")
        serving = int8_target()
        if quantized not in INT8_TARGETS or not weaker_than(serving, quantized):
            return None
        return (f"model {self.name} was quantized for {quantized} CPUs (8-bit weights); this CPU's int8 path "
                f"is {serving}, whose int16 sums can saturate: expect lower accuracy, or re-export with "
                f"m2pt-export --precision int8 --int8-target {serving}")

    @property
    def batchable(self) -> bool:
        """Requests can be stacked only along a dynamic first dimension of every tensor."""
        return all(t.shape and t.shape[0] == -1 for t in (*self.inputs, *self.outputs))

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = self.session.run(None, dict(feed))
        return {spec.name: array for spec, array in zip(self.outputs, arrays, strict=True)}

    def describe(self) -> dict[str, Any]:
        """KServe v2 model metadata, plus the providers in use and the embedded metadata."""
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": self.platform,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "parameters": {"providers": self.providers, "metadata": self.metadata},
        }


def _latest_version(model_dir: Path) -> Path | None:
    versions = [p for p in model_dir.iterdir()
                if p.is_dir() and p.name.isdigit() and (p / "model.onnx").is_file()]
    return max(versions, key=lambda p: int(p.name)) if versions else None


def _config_max_batch(model_dir: Path) -> int | None:
    config = model_dir / "config.pbtxt"
    if not config.is_file():
        return None
    match = _MAX_BATCH_LINE.search(config.read_text(errors="replace"))
    return int(match.group(1)) if match and int(match.group(1)) > 0 else None


def find_models(path: str | os.PathLike[str]) -> dict[str, tuple[Path, str, int | None]]:
    """``{name: (onnx file, version, max_batch_size from config.pbtxt)}`` for a file or repository.

    A file is served under its stem; a Triton repository serves each ``<name>/<N>/model.onnx``
    at its highest version ``N``. A model folder with only a ``model.plan`` is not servable here.
    """
    root = Path(path)
    if not root.exists():
        raise M2ptError("no such file or directory", root)
    if root.is_file():
        if root.suffix != ".onnx":
            raise M2ptError("expected an .onnx file or a Triton model repository folder", root)
        return {root.stem: (root, "1", None)}
    found = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        version = _latest_version(model_dir)
        if version is not None:
            found[model_dir.name] = (version / "model.onnx", version.name, _config_max_batch(model_dir))
    if not found:
        raise M2ptError("no <name>/<version>/model.onnx in this model repository", root)
    return found


def load_models(path: str | os.PathLike[str], *, providers: Sequence[str],
                threads: int = 0) -> dict[str, OrtModel]:
    """Every model under ``path``; ``threads`` is ONNX Runtime's intra-op count (0: its default)."""
    return {
        name: OrtModel(name, onnx_path, providers=providers, version=version, max_batch=max_batch,
                       threads=threads)
        for name, (onnx_path, version, max_batch) in find_models(path).items()
    }


class RepositoryLoader:
    """Loads one model of a repository by name, from what the folder holds now (explicit model
    control: a folder added or a new version written after start-up is found at load time)."""

    def __init__(self, path: str | os.PathLike[str], *, providers: Sequence[str], threads: int = 0) -> None:
        self.path, self.providers, self.threads = Path(path), list(providers), threads

    def names(self) -> list[str]:
        """The models the repository holds now (none, rather than an error, when it is empty)."""
        try:
            return sorted(find_models(self.path))
        except M2ptError:
            return []

    def __call__(self, name: str) -> OrtModel:
        found = find_models(self.path).get(name)
        if found is None:
            raise M2ptError(f"no model '{name}' (no {name}/<version>/model.onnx)", self.path)
        onnx_path, version, max_batch = found
        return OrtModel(name, onnx_path, providers=self.providers, version=version, max_batch=max_batch,
                        threads=self.threads)
