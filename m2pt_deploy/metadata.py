"""Every ``m2pt_deploy.*`` metadata key, each with the type of its value, and the one way values
are written and read: sorted-key JSON strings in an ONNX file's ``metadata_props``.

The exporter writes, the verifier, the runtime, the server and the benchmarks read, so the
schema sits at the bottom of the package: light (json only, no torch or onnx import), and the
server decodes what ONNX Runtime hands it the same way the exporter wrote it. No other module
spells a key; they name one of the :class:`MetadataKey` constants below
(``tests/test_metadata.py`` checks).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

if TYPE_CHECKING:
    import onnx

__all__ = [
    "ARCH_KEY", "FAMILY_KEY", "INPUT_KEY", "INT8_TARGET_KEY", "KEYS", "LABELS_KEY", "LAMBDA_KEY",
    "MODEL_KWARGS_KEY", "NUM_CLASSES_KEY", "OPTIMIZED_KEY", "PATHWAY_KEY", "PRECISION_KEY", "SOURCE_KIND_KEY",
    "SOURCE_SHA256_KEY", "TRAIN_STATE_KEY", "VERSION_KEY",
    "MetadataKey", "decode_metadata", "encode_metadata", "read_metadata", "set_metadata",
]

T = TypeVar("T")
# NOTE the prefix is joined, not spelled in each key: "m2pt_deploy.model.pathway" would read as the
# module of that name to the layer check (tests/test_layers.py).
_PREFIX = "m2pt_deploy."


class MetadataKey(str, Generic[T]):
    """One ``m2pt_deploy.*`` key: the key's string itself (so it indexes decoded metadata and prints
    as the key in messages), with the type ``T`` of its decoded value."""

    __slots__ = ()

    def __new__(cls, name: str) -> MetadataKey[T]:
        return super().__new__(cls, _PREFIX + name)

    def get(self, metadata: Mapping[str, Any]) -> T | None:
        """The value in decoded metadata (:func:`read_metadata`, :func:`decode_metadata`); None if absent."""
        return cast("T | None", metadata.get(self))

    def field(self, value: T) -> tuple[str, T]:
        """``(key, value)``, for the fields that :func:`encode_metadata` writes."""
        return str(self), value

    def set(self, proto: onnx.ModelProto, value: T) -> None:
        """Set (or replace) this entry of ``proto``."""
        set_metadata(proto, self, value)

    def is_in(self, proto: onnx.ModelProto) -> bool:
        return any(p.key == self for p in proto.metadata_props)


# What m2pt-export records about the model (export/onnx.py writes them in this order).
VERSION_KEY: MetadataKey[str] = MetadataKey("version")
SOURCE_SHA256_KEY: MetadataKey[str] = MetadataKey("source_sha256")
SOURCE_KIND_KEY: MetadataKey[str] = MetadataKey("source_kind")
FAMILY_KEY: MetadataKey[str] = MetadataKey("family")
ARCH_KEY: MetadataKey[str] = MetadataKey("arch")
MODEL_KWARGS_KEY: MetadataKey[dict[str, Any]] = MetadataKey("model_kwargs")
#: The input's name, layout and normalisation (``ModelFamily.input_metadata``), which servers follow.
INPUT_KEY: MetadataKey[dict[str, Any]] = MetadataKey("input")
NUM_CLASSES_KEY: MetadataKey[int] = MetadataKey("num_classes")
#: The graph's precision now (an engine ONNX or an int8 model rewrites the export's fp32).
PRECISION_KEY: MetadataKey[str] = MetadataKey("precision")
LAMBDA_KEY: MetadataKey[dict[str, Any]] = MetadataKey("lambda")
PATHWAY_KEY: MetadataKey[dict[str, Any] | None] = MetadataKey("model.pathway")
LABELS_KEY: MetadataKey[list[str]] = MetadataKey("labels")
# What later steps add.
#: ``--optimize`` already optimized the graph: what was fused, ONNX Runtime's version.
OPTIMIZED_KEY: MetadataKey[dict[str, Any]] = MetadataKey("optimized")
#: The CPU int8 path a model was quantized for: ``{"target": ..., "weight_bits": 7 | 8}``.
INT8_TARGET_KEY: MetadataKey[dict[str, Any]] = MetadataKey("int8_target")
#: Not ONNX: the safetensors metadata entry of a training resume file (JSON, written by train/state.py).
TRAIN_STATE_KEY: MetadataKey[dict[str, Any]] = MetadataKey("train_state")

KEYS: tuple[MetadataKey[Any], ...] = (
    VERSION_KEY, SOURCE_SHA256_KEY, SOURCE_KIND_KEY, FAMILY_KEY, ARCH_KEY, MODEL_KWARGS_KEY, INPUT_KEY,
    NUM_CLASSES_KEY, PRECISION_KEY, LAMBDA_KEY, PATHWAY_KEY, LABELS_KEY, OPTIMIZED_KEY, INT8_TARGET_KEY,
    TRAIN_STATE_KEY,
)


def encode_metadata(fields: Mapping[str, Any]) -> dict[str, str]:
    """Each value as sorted-key JSON, as ``metadata_props`` holds strings."""
    return {str(k): json.dumps(v, sort_keys=True) for k, v in fields.items()}


def decode_metadata(props: Mapping[str, str]) -> dict[str, Any]:
    """JSON values decoded; a value that is not JSON (another tool's) kept as its string."""
    out: dict[str, Any] = {}
    for key, value in props.items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def read_metadata(proto: onnx.ModelProto) -> dict[str, Any]:
    """The ``metadata_props`` written by the exporter, JSON values decoded."""
    return decode_metadata({prop.key: prop.value for prop in proto.metadata_props})


def set_metadata(proto: onnx.ModelProto, key: str, value: Any) -> None:
    """Set (or replace) one entry."""
    for prop in proto.metadata_props:
        if prop.key == key:
            prop.value = json.dumps(value, sort_keys=True)
            return
    proto.metadata_props.add(key=str(key), value=json.dumps(value, sort_keys=True))
