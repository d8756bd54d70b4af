"""The ONNX file's ``metadata_props``: JSON values under ``m2pt_deploy.*`` keys, read and written here
only. Light (json, no torch or onnx import), so the server decodes what ONNX Runtime hands it the
same way the exporter wrote it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

__all__ = ["decode_metadata", "encode_metadata", "read_metadata", "set_metadata"]


def encode_metadata(fields: Mapping[str, Any]) -> dict[str, str]:
    """Each value as sorted-key JSON, as ``metadata_props`` holds strings."""
    return {k: json.dumps(v, sort_keys=True) for k, v in fields.items()}


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
    proto.metadata_props.add(key=key, value=json.dumps(value, sort_keys=True))
