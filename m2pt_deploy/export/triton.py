"""Exported ONNX (and optionally a TensorRT engine) → one model in a Triton model repository.

Layout: ``REPO/<name>/config.pbtxt``, ``REPO/<name>/<version>/model.onnx`` and, when an
engine is given, ``model.plan`` beside it. The model folder is built under a hidden temporary
name inside ``REPO`` and renamed into place, so Triton (or ``m2pt-serve``) polling the
repository never sees a half-written model, and other models in ``REPO`` are left alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import onnx

from m2pt_deploy.errors import M2ptError

__all__ = ["TritonModelConfig", "build_config", "check_model_folder", "model_config_schema", "render_config",
           "render_inference_service", "write_triton_repository"]

Platform = Literal["onnxruntime_onnx", "tensorrt_plan"]
InstanceKind = Literal["KIND_CPU", "KIND_GPU", "KIND_AUTO"]
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_TYPES: dict[int, str] = {
    onnx.TensorProto.BOOL: "TYPE_BOOL", onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.UINT16: "TYPE_UINT16", onnx.TensorProto.UINT32: "TYPE_UINT32",
    onnx.TensorProto.UINT64: "TYPE_UINT64", onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.INT16: "TYPE_INT16", onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16", onnx.TensorProto.STRING: "TYPE_STRING",
}


class TritonModelConfig:
    """What goes into ``config.pbtxt``; :func:`build_config` makes it Triton's ``ModelConfig``
    protobuf message and :func:`render_config` prints that in protobuf's text format."""

    def __init__(
        self,
        name: str,
        inputs: Sequence[tuple[str, str, Sequence[int]]],
        outputs: Sequence[tuple[str, str, Sequence[int]]],
        *,
        platform: Platform = "onnxruntime_onnx",
        max_batch: int = 8,
        max_queue_delay_us: int = 2000,
        preferred_batch_sizes: Sequence[int] = (),
        instance_count: int = 1,
        instance_kind: InstanceKind = "KIND_CPU",
        tensorrt_precision: Literal["FP32", "FP16"] | None = None,
        label_output: str | None = None,
    ) -> None:
        self.name, self.inputs, self.outputs, self.platform = name, inputs, outputs, platform
        self.max_batch, self.max_queue_delay_us = max_batch, max_queue_delay_us
        self.preferred_batch_sizes = tuple(preferred_batch_sizes)
        self.instance_count, self.instance_kind = instance_count, instance_kind
        self.tensorrt_precision, self.label_output = tensorrt_precision, label_output


def model_config_schema() -> Any:
    """Triton's ``model_config_pb2``, as ``tritonclient[grpc]`` ships it; one line when missing."""
    try:
        from tritonclient.grpc import model_config_pb2
    except (ImportError, RuntimeError):  # tritonclient.grpc raises RuntimeError without grpcio
        raise M2ptError("a Triton model repository is written with Triton's model_config schema, "
                        "which ships in tritonclient[grpc]: pip install 'm2pt-deploy[triton]'") from None
    return model_config_pb2


def build_config(config: TritonModelConfig) -> Any:
    """``config`` as Triton's ``ModelConfig`` protobuf message."""
    pb = model_config_schema()

    def tensors(kind: Any, specs: Sequence[tuple[str, str, Sequence[int]]]) -> list[Any]:
        return [kind(name=name, data_type=pb.DataType.Value(data_type), dims=list(dims))
                for name, data_type, dims in specs]

    message = pb.ModelConfig(
        name=config.name, platform=config.platform, max_batch_size=config.max_batch,
        input=tensors(pb.ModelInput, config.inputs), output=tensors(pb.ModelOutput, config.outputs),
        instance_group=[pb.ModelInstanceGroup(
            count=config.instance_count, kind=pb.ModelInstanceGroup.Kind.Value(config.instance_kind))],
    )
    for output in message.output:
        if output.name == config.label_output:
            output.label_filename = "labels.txt"
    if config.max_batch > 0:
        message.dynamic_batching.max_queue_delay_microseconds = config.max_queue_delay_us
        message.dynamic_batching.preferred_batch_size.extend(config.preferred_batch_sizes)
    if config.tensorrt_precision is not None:
        # ONNX Runtime builds TensorRT engines for the supported subgraphs at load time.
        accelerator = message.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        accelerator.parameters["precision_mode"] = config.tensorrt_precision
        accelerator.parameters["max_workspace_size_bytes"] = "1073741824"
    return message


def render_config(config: TritonModelConfig) -> str:
    """``config.pbtxt``: the ``ModelConfig`` message in protobuf's text format."""
    from google.protobuf import text_format

    # short repeated scalars (dims: [3, 224, 224]) as Triton's own examples write them
    return str(text_format.MessageToString(build_config(config), use_short_repeated_primitives=True))


def _dims(value_info: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None
            for d in value_info.type.tensor_type.shape.dim]


def _tensors(values: Sequence[onnx.ValueInfoProto], max_batch: int) -> list[tuple[str, str, list[int]]]:
    out = []
    for v in values:
        data_type = _TYPES.get(v.type.tensor_type.elem_type)
        if data_type is None:
            raise M2ptError(f"tensor '{v.name}' has an element type Triton cannot describe")
        dims = _dims(v)
        if max_batch > 0:
            if not dims or dims[0] is not None:
                raise M2ptError(f"tensor '{v.name}' has a fixed batch dimension {dims[:1]}; "
                                "export with a dynamic batch (--batch MIN:OPT:MAX) or use "
                                "max_batch 0")
            dims = dims[1:]
        out.append((v.name, data_type, [-1 if d is None else d for d in dims]))
    return out


def _load(model: str | os.PathLike[str] | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise M2ptError("no such ONNX file", path)
    try:
        return onnx.load_model(path, load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends: not an ONNX file
        raise M2ptError(f"not a readable ONNX model ({type(e).__name__})", path) from None


def _external_files(proto: onnx.ModelProto, source: Path) -> list[str]:
    """Weight files the graph names beside itself (``save_onnx`` writes them past 2 GiB)."""
    names = sorted({entry.value for tensor in proto.graph.initializer
                    for entry in tensor.external_data if entry.key == "location"})
    for name in names:
        if Path(name).name != name or name in (".", ".."):
            raise M2ptError(f"external weights at {name!r}: only a file beside the model is "
                            "supported", source)
        if not (source.parent / name).is_file():
            raise M2ptError(f"external weights file {name} is missing", source)
    return names


def _write_model(model: str | os.PathLike[str] | onnx.ModelProto, proto: onnx.ModelProto,
                 dest: Path) -> None:
    if isinstance(model, onnx.ModelProto):
        from m2pt_deploy.export.onnx import save_onnx

        save_onnx(proto, dest)
        return
    source = Path(model)
    shutil.copyfile(source, dest)
    # the graph finds its weights by file name, so they keep theirs beside model.onnx
    for name in _external_files(proto, source):
        shutil.copyfile(source.parent / name, dest.parent / name)


def _labels(proto: onnx.ModelProto) -> list[str] | None:
    from m2pt_deploy.metadata import LABELS_KEY, read_metadata

    labels = LABELS_KEY.get(read_metadata(proto))
    return [str(x) for x in labels] if isinstance(labels, list) else None


def _check_args(max_batch: int, instance_count: int, version: int, platform: Platform,
                engine: Path | None, instance_kind: InstanceKind,
                tensorrt_precision: str | None) -> None:
    if max_batch < 0 or instance_count < 1 or version < 1:
        raise M2ptError(f"max batch {max_batch}, instance count {instance_count}, version "
                        f"{version}: need >= 0, >= 1 and >= 1")
    if platform == "tensorrt_plan" and engine is None:
        raise M2ptError("platform tensorrt_plan needs a TensorRT engine (model.plan)")
    if engine is not None and not engine.is_file():
        raise M2ptError("no such TensorRT engine file", engine)
    if tensorrt_precision is not None and (platform != "onnxruntime_onnx" or instance_kind == "KIND_CPU"):
        raise M2ptError("the TensorRT accelerator needs the onnxruntime platform on KIND_GPU or "
                        f"KIND_AUTO instances, got {platform} on {instance_kind}")


def check_model_folder(repo_dir: str | os.PathLike[str], name: str, *, force: bool = False) -> Path:
    """Refuse a bad name, an unusable repository, an existing model or a missing Triton schema
    before any work."""
    model_config_schema()
    if not _NAME.match(name):
        raise M2ptError(f"model name {name!r}: use letters, digits, '_', '.' or '-'")
    repo = Path(repo_dir)
    if repo.exists() and not repo.is_dir():
        raise M2ptError("model repository path is a file, not a folder", repo)
    parent = repo.parent if str(repo.parent) else Path(".")
    if not parent.is_dir():
        raise M2ptError("the folder holding the model repository does not exist", parent)
    target = repo / name
    if target.exists() and not force:
        raise M2ptError("model folder exists; pass --force to replace it", target)
    return target


def _make_readable(folder: Path) -> None:
    """Temporary files and folders are private (0600/0700); Triton often runs as another user."""
    umask = os.umask(0)
    os.umask(umask)
    for path in (folder, *folder.rglob("*")):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _install(tmp: Path, target: Path, force: bool) -> None:
    if not target.exists():
        os.replace(tmp, target)
        return
    if not force:
        raise M2ptError("model folder exists; pass --force to replace it", target)
    trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    os.replace(target, trash / target.name)
    os.replace(tmp, target)
    shutil.rmtree(trash, ignore_errors=True)


_K8S_NAME = re.compile(r"[^a-z0-9-]+")


def render_inference_service(name: str, storage_uri: str, *, gpu: bool = False) -> str:
    """A KServe ``InferenceService`` serving the repository with KServe's Triton runtime (v2 protocol).

    Strings are written JSON-quoted, which YAML reads as double-quoted scalars, so no YAML
    library is needed to write it and no name can break its structure.
    """
    k8s_name = _K8S_NAME.sub("-", name.lower()).strip("-")[:63] or "m2pt-model"
    lines = [
        "# Serve the Triton model repository at storageUri with KServe (Triton runtime, KServe v2).",
        "# Copy the repository there first, then: kubectl apply -f this-file",
        "apiVersion: serving.kserve.io/v1beta1",
        "kind: InferenceService",
        "metadata:",
        f"  name: {json.dumps(k8s_name)}",
        "spec:",
        "  predictor:",
        "    model:",
        "      modelFormat:",
        '        name: "triton"',
        '      protocolVersion: "v2"',
        '      runtime: "kserve-tritonserver"',
        f"      storageUri: {json.dumps(storage_uri)}",
    ]
    if gpu:
        lines += ["      resources:", "        limits:", '          nvidia.com/gpu: "1"']
    return "\n".join(lines) + "\n"


def write_triton_repository(
    model: str | os.PathLike[str] | onnx.ModelProto,
    repo_dir: str | os.PathLike[str],
    *,
    name: str,
    max_batch: int = 8,
    max_queue_delay_us: int = 2000,
    preferred_batch_sizes: Sequence[int] = (),
    instance_count: int = 1,
    instance_kind: InstanceKind = "KIND_CPU",
    platform: Platform = "onnxruntime_onnx",
    tensorrt_precision: Literal["FP32", "FP16"] | None = None,
    engine: str | os.PathLike[str] | None = None,
    version: int = 1,
    storage_uri: str = "s3://CHANGE-ME/model_repository",
    force: bool = False,
) -> Path:
    """Write ``repo_dir/<name>/`` for Triton's onnxruntime (or tensorrt) backend; return that folder.

    Beside ``config.pbtxt`` goes ``inferenceservice.yaml``, a KServe manifest for the repository
    once it is copied to ``storage_uri`` (Triton ignores files it does not know in a model folder).
    """
    engine_path = None if engine is None else Path(engine)
    target = check_model_folder(repo_dir, name, force=force)
    _check_args(max_batch, instance_count, version, platform, engine_path, instance_kind,
                tensorrt_precision)
    repo = target.parent
    proto = _load(model)
    labels = _labels(proto)
    initializers = {t.name for t in proto.graph.initializer}
    outputs = _tensors(proto.graph.output, max_batch)
    config = TritonModelConfig(
        name, _tensors([v for v in proto.graph.input if v.name not in initializers], max_batch),
        outputs, platform=platform, max_batch=max_batch, max_queue_delay_us=max_queue_delay_us,
        preferred_batch_sizes=preferred_batch_sizes, instance_count=instance_count,
        instance_kind=instance_kind, tensorrt_precision=tensorrt_precision,
        label_output=outputs[0][0] if labels else None,
    )
    repo.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repo))
    try:
        (tmp / str(version)).mkdir()
        _write_model(model, proto, tmp / str(version) / "model.onnx")
        if engine_path is not None:
            shutil.copyfile(engine_path, tmp / str(version) / "model.plan")
        (tmp / "config.pbtxt").write_text(render_config(config))
        (tmp / "inferenceservice.yaml").write_text(
            render_inference_service(name, storage_uri, gpu=instance_kind == "KIND_GPU"))
        if labels:
            (tmp / "labels.txt").write_text("".join(f"{label}\n" for label in labels))
        _make_readable(tmp)
        _install(tmp, target, force)
    except OSError as e:
        raise M2ptError(f"could not write the model folder: {e.strerror or e}", target) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
