"""KServe v2 gRPC messages to the protocol-neutral request: Triton's ``ModelInferRequest`` decoded
into an :class:`~m2pt_deploy.serving.protocol.InferRequest`, as ``protocol.py`` decodes HTTP bodies.

Pure functions over protobuf messages and numpy arrays: every defect is a ``ProtocolError``
(INVALID_ARGUMENT), and a tensor's element count is checked against its shape before an array is
built (a shape of 2**40 rows costs nothing).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from m2pt_deploy.serving.protocol import DATATYPES, InferRequest, ProtocolError, RequestedOutput, check_finite

__all__ = ["parse_grpc_request"]

# Which InferTensorContents field carries each datatype (FP16 travels only as raw contents).
_TYPED_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
}


def _typed_values(tensor: Any, where: str, count: int, dtype: np.dtype) -> np.ndarray:
    field = _TYPED_FIELD.get(tensor.datatype)
    if field is None:
        raise ProtocolError(f"{where}: {tensor.datatype} has no typed contents field; send it "
                            "in raw_input_contents")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise ProtocolError(f"{where}: contents.{field} has {len(values)} elements, shape "
                            f"{list(tensor.shape)} needs {count}")
    if dtype.kind in "iu" and dtype.itemsize < 4 and count:
        wide = np.asarray(values, np.int64)
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise ProtocolError(f"{where}: contents.{field} holds values outside "
                                f"{tensor.datatype}'s range [{info.min}, {info.max}]")
        return wide.astype(dtype)
    return np.asarray(values, dtype=dtype)


def _decode_input(tensor: Any, raw: bytes | None) -> np.ndarray:
    where = f"input '{tensor.name}'"
    if tensor.datatype not in DATATYPES:
        raise ProtocolError(f"{where}: datatype {tensor.datatype!r} is not supported "
                            f"(supported: {', '.join(DATATYPES)})")
    dtype = DATATYPES[tensor.datatype]
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise ProtocolError(f"{where}: 'shape' must be non-negative integers, got {list(shape)}")
    count = math.prod(shape)  # a Python int: a huge shape is compared, never allocated
    if raw is None:
        return _typed_values(tensor, where, count, dtype).reshape(shape)
    if tensor.HasField("contents") and tensor.contents.ByteSize():
        raise ProtocolError(f"{where}: given both in contents and in raw_input_contents")
    if len(raw) != count * dtype.itemsize:
        raise ProtocolError(f"{where}: raw_input_contents has {len(raw)} bytes, shape "
                            f"{list(shape)} of {tensor.datatype} needs {count * dtype.itemsize}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _timeout_us(parameters: Any) -> int | None:
    if "timeout" not in parameters:
        return None
    timeout = parameters["timeout"]
    if timeout.WhichOneof("parameter_choice") != "int64_param":
        return None
    return timeout.int64_param if timeout.int64_param > 0 else None


def parse_grpc_request(request: Any, *, allow_nonfinite: bool) -> InferRequest:
    """A ``ModelInferRequest`` as the protocol-neutral :class:`InferRequest`; every defect is a
    ``ProtocolError`` (INVALID_ARGUMENT)."""
    if not request.inputs:
        raise ProtocolError("'inputs' must be a non-empty list")
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise ProtocolError(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} "
                            "inputs; give one per input, in input order, or none")
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        if tensor.name in inputs:
            raise ProtocolError(f"input '{tensor.name}' is given twice")
        array = _decode_input(tensor, raw[i] if raw else None)
        if not allow_nonfinite:
            check_finite(f"input '{tensor.name}'", array)
        inputs[tensor.name] = array
    outputs = []
    for out in request.outputs:
        if "classification" in out.parameters:
            raise ProtocolError(f"output '{out.name}': the classification extension is not "
                                "supported; use POST /v2/models/{name}/classify over HTTP")
        outputs.append(RequestedOutput(out.name, binary=True))
    return InferRequest(id=request.id or None, inputs=inputs, outputs=outputs or None,
                        binary_output=True, timeout_us=_timeout_us(request.parameters))
