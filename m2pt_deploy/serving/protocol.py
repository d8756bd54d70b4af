"""KServe v2 inference protocol as Triton speaks it: JSON tensors and the binary data extension.

Pure functions over bytes and numpy arrays, no web framework: the app hands a request body
in and gets arrays (or a :class:`ProtocolError` carrying the HTTP status) back.

Binary extension: the body is ``<JSON header><raw tensor bytes...>``; the header length is in
the ``Inference-Header-Content-Length`` HTTP header, and each binary input says its size in
``parameters.binary_data_size``, in input order. Responses use the same layout.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "DATATYPES",
    "HEADER_LENGTH",
    "MAX_JSON_DEPTH",
    "MAX_JSON_ELEMENTS",
    "InferRequest",
    "ProtocolError",
    "RequestedOutput",
    "TensorSpec",
    "check_finite",
    "encode_infer_response",
    "json_depth",
    "parse_infer_request",
    "validate_request",
]

HEADER_LENGTH = "Inference-Header-Content-Length"

# Little-endian explicitly: the wire format is little-endian whatever the host is.
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
_NAMES = {dtype: name for name, dtype in DATATYPES.items()}

# A request is an object of inputs whose data may nest one list per tensor axis: 32 levels is
# far past any real tensor, and far short of the recursion limit json.loads would otherwise hit.
MAX_JSON_DEPTH = 32
# Each JSON number becomes a Python object of ~32 bytes before numpy packs it: 2**23 of them
# (a 32-image 3x224x224 batch is 4.8M) is ~300 MB at worst. Larger tensors belong in binary.
MAX_JSON_ELEMENTS = 1 << 23
_MARKS = np.frombuffer(b'"[]{}', np.uint8)
_SCAN_CHUNK = 1 << 20


class ProtocolError(Exception):
    """A request the server refuses; ``status`` is the HTTP code to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A model input or output; ``-1`` marks a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclasses.dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclasses.dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput] | None
    binary_output: bool
    timeout_us: int | None


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and a view of the binary tensors after it (a view: no second copy)."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        n = int(header_length)
    except ValueError:
        raise ProtocolError(f"{HEADER_LENGTH} {header_length!r} is not a whole number") from None
    if not 0 < n <= len(body):
        raise ProtocolError(f"{HEADER_LENGTH} {n} does not fit a body of {len(body)} bytes")
    view = memoryview(body)
    return bytes(view[:n]), view[n:]


def json_depth(text: bytes, limit: int) -> int:
    """Deepest bracket nesting of ``text`` outside strings, scanned in C-speed chunks.

    Stops as soon as ``limit`` is passed, so a body of 64 MB of ``[`` costs one chunk. Escaped
    backslashes and quotes are removed first; what is left of a string lies between two quotes.
    """
    if b"\\" in text:
        text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    data = np.frombuffer(text, np.uint8)
    inside, depth, deepest = 0, 0, 0
    for start in range(0, data.size, _SCAN_CHUNK):
        chunk = data[start:start + _SCAN_CHUNK]
        marks = chunk[np.isin(chunk, _MARKS)]
        if not marks.size:
            continue
        quote = marks == ord('"')
        parity = (np.cumsum(quote, dtype=np.int64) + inside) & 1
        outside = ~quote & (parity == 0)
        opens = outside & ((marks == ord("[")) | (marks == ord("{")))
        closes = outside & ((marks == ord("]")) | (marks == ord("}")))
        levels = depth + np.cumsum(opens.astype(np.int64) - closes.astype(np.int64))
        deepest = max(deepest, int(levels.max()))
        if deepest > limit:
            break
        depth, inside = int(levels[-1]), int(parity[-1])
    return deepest


def _refuse_constant(token: str) -> float:
    raise ProtocolError(f"request holds {token}, which JSON does not have; NaN and Inf inputs "
                        "are refused (m2pt-serve --allow-nonfinite accepts them)")


_CONSTANTS = (b"NaN", b"Infinity", b"-Infinity")


def _fast_loads(header: bytes) -> Any:
    """``header`` parsed by orjson, or None when orjson is not installed.

    NOTE a C JSON parser holds the GIL for the whole parse, so the event loop (health probes
    included) waits out every large body's parse: json.loads takes 1.7 s for 7.5 M numbers on the
    development machine, orjson 0.5 s, with the same floats. A refusal is decided from orjson's own
    error, never by parsing the body a second time.
    """
    try:
        import orjson
    except ImportError:
        return None
    try:
        return orjson.loads(header)
    except orjson.JSONDecodeError as e:
        token = next((t for t in _CONSTANTS if header[e.pos:e.pos + len(t)] == t), None)
        if token is not None:
            _refuse_constant(token.decode())
        if "infinity" in e.msg:  # a number past float64's range, which json.loads reads as Inf
            raise ProtocolError("request holds a number past FP64's range, which is Inf; NaN and Inf "
                                "inputs are refused (m2pt-serve --allow-nonfinite accepts them)") from None
        raise ProtocolError(f"request is not valid JSON: {e}") from None


def _parse_json(header: bytes, *, max_depth: int, max_elements: int,
                allow_nonfinite: bool) -> dict[str, Any]:
    # Both bounds are decided before json.loads builds anything: deep nesting would recurse
    # past Python's limit, and a long list would become millions of Python objects.
    if json_depth(header, max_depth) > max_depth:
        raise ProtocolError(f"request JSON nests deeper than {max_depth} levels")
    if header.count(b",") + 1 > max_elements:
        raise ProtocolError(f"request JSON has more than {max_elements} elements; send large "
                            "tensors with the binary tensor data extension")
    doc = _fast_loads(header) if not allow_nonfinite else None
    try:
        if doc is None:
            doc = json.loads(header, parse_constant=None if allow_nonfinite else _refuse_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProtocolError(f"request is not valid JSON: {e}") from None
    except RecursionError:  # not reachable past json_depth; kept so it can never be a 500
        raise ProtocolError(f"request JSON nests deeper than {max_depth} levels") from None
    if not isinstance(doc, dict):
        raise ProtocolError(f"request must be a JSON object, got {type(doc).__name__}")
    return doc


def _field(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ProtocolError(f"{where}: '{key}' must be a {expected}, got {json.dumps(value)[:80]}")
    return value


def _parameters(obj: Mapping[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise ProtocolError(f"{where}: 'parameters' must be an object")
    return params


def _shape(raw: Any, where: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw
    ):
        raise ProtocolError(f"{where}: 'shape' must be a list of non-negative integers")
    return tuple(raw)


def _decode_json_data(data: Any, dtype: np.dtype, shape: tuple[int, ...], where: str) -> np.ndarray:
    if not isinstance(data, list):
        raise ProtocolError(f"{where}: 'data' must be a list")
    try:
        with np.errstate(over="ignore"):  # a number past the type's range becomes Inf, refused later
            array = np.asarray(data, dtype=dtype).reshape(-1)
    except (ValueError, TypeError, OverflowError) as e:
        raise ProtocolError(f"{where}: 'data' does not hold {_NAMES[dtype]} values: {e}") from None
    expected = math.prod(shape)
    if array.size != expected:
        raise ProtocolError(f"{where}: 'data' has {array.size} elements, shape {list(shape)} "
                            f"needs {expected}")
    return array.reshape(shape)


def _parse_input(raw: Any, index: int, binary: memoryview, offset: int) -> tuple[str, np.ndarray, int]:
    where = f"input {index}"
    if not isinstance(raw, dict):
        raise ProtocolError(f"{where}: must be an object")
    name = _field(raw, "name", str, where)
    where = f"input '{name}'"
    datatype = _field(raw, "datatype", str, where)
    if datatype not in DATATYPES:
        raise ProtocolError(f"{where}: datatype {datatype!r} is not supported "
                            f"(supported: {', '.join(DATATYPES)})")
    dtype = DATATYPES[datatype]
    shape = _shape(raw.get("shape"), where)
    size = _parameters(raw, where).get("binary_data_size")
    if size is None:
        return name, _decode_json_data(raw.get("data"), dtype, shape, where), offset
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ProtocolError(f"{where}: binary_data_size must be a non-negative integer")
    expected = math.prod(shape) * dtype.itemsize
    if size != expected:
        raise ProtocolError(f"{where}: binary_data_size {size} but shape {list(shape)} of "
                            f"{datatype} needs {expected} bytes")
    if offset + size > len(binary):
        raise ProtocolError(f"{where}: binary data ends after {len(binary) - offset} of its "
                            f"{size} bytes")
    array = np.frombuffer(binary[offset:offset + size], dtype=dtype).reshape(shape)
    return name, array, offset + size


def check_finite(where: str, array: np.ndarray) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ProtocolError(f"{where}: holds NaN or Inf values (or JSON numbers past "
                            f"{_NAMES[array.dtype]}'s range); non-finite inputs are refused")


def _parse_outputs(raw: Any) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ProtocolError("'outputs' must be a list")
    outputs = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ProtocolError(f"output {i}: must be an object")
        name = _field(item, "name", str, f"output {i}")
        params = _parameters(item, f"output '{name}'")
        if "classification" in params:
            raise ProtocolError(f"output '{name}': the classification extension is not "
                                "supported; use POST /v2/models/{name}/classify")
        outputs.append(RequestedOutput(name, bool(params.get("binary_data", False))))
    return outputs


def parse_infer_request(
    body: bytes,
    header_length: str | None = None,
    *,
    max_depth: int = MAX_JSON_DEPTH,
    max_elements: int = MAX_JSON_ELEMENTS,
    allow_nonfinite: bool = False,
) -> InferRequest:
    """Decode a JSON or binary-extension infer request into arrays; every defect is a 400.

    Floating-point inputs holding NaN or Inf (JSON or binary, or JSON numbers past FP16's range)
    are refused unless ``allow_nonfinite``.
    """
    header, binary = _split_body(body, header_length)
    doc = _parse_json(header, max_depth=max_depth, max_elements=max_elements,
                      allow_nonfinite=allow_nonfinite)
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("'inputs' must be a non-empty list")
    inputs: dict[str, np.ndarray] = {}
    view, offset = binary, 0
    for i, raw in enumerate(raw_inputs):
        name, array, offset = _parse_input(raw, i, view, offset)
        if name in inputs:
            raise ProtocolError(f"input '{name}' is given twice")
        if not allow_nonfinite:
            check_finite(f"input '{name}'", array)
        inputs[name] = array
    if offset != len(binary):
        raise ProtocolError(f"body has {len(binary) - offset} bytes of binary data that no "
                            "input declares")
    params = _parameters(doc, "request")
    request_id = doc.get("id")
    timeout = params.get("timeout")
    return InferRequest(
        id=None if request_id is None else str(request_id),
        inputs=inputs,
        outputs=_parse_outputs(doc.get("outputs")),
        binary_output=bool(params.get("binary_data_output", False)),
        timeout_us=timeout if isinstance(timeout, int) and timeout > 0 else None,
    )


def validate_request(
    request: InferRequest, specs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> dict[str, np.ndarray]:
    """Check names, datatypes and shapes against the model; return the feed in model order."""
    known_outputs = [o.name for o in outputs]
    for out in request.outputs or ():
        if out.name not in known_outputs:
            raise ProtocolError(f"unknown output '{out.name}'; the model gives "
                                f"{', '.join(repr(n) for n in known_outputs)}")
    inputs = request.inputs
    known = {s.name for s in specs}
    for name in inputs:
        if name not in known:
            raise ProtocolError(f"unknown input '{name}'; the model takes "
                                f"{', '.join(repr(s.name) for s in specs)}")
    feed = {}
    for spec in specs:
        if spec.name not in inputs:
            raise ProtocolError(f"missing input '{spec.name}'")
        array = inputs[spec.name]
        got = _NAMES[array.dtype]
        if got != spec.datatype:
            raise ProtocolError(f"input '{spec.name}': datatype {got}, the model takes {spec.datatype}")
        if len(array.shape) != len(spec.shape) or any(
            want not in (-1, have) for want, have in zip(spec.shape, array.shape, strict=True)
        ):
            raise ProtocolError(f"input '{spec.name}': shape {list(array.shape)}, the model takes "
                                f"{list(spec.shape)} (-1: any)")
        if array.size == 0:
            raise ProtocolError(f"input '{spec.name}': shape {list(array.shape)} holds no elements")
        feed[spec.name] = array
    return feed


def _output_entry(name: str, array: np.ndarray, binary: bool) -> tuple[dict[str, Any], bytes]:
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    entry: dict[str, Any] = {"name": name, "datatype": _NAMES[array.dtype], "shape": list(array.shape)}
    if binary:
        data = array.tobytes()
        entry["parameters"] = {"binary_data_size": len(data)}
        return entry, data
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        # JSON has no NaN or Inf: a bare NaN would make the whole response unreadable.
        raise ProtocolError(f"output '{name}' holds NaN or Inf, which JSON cannot carry; ask for "
                            "it with binary_data, or check the model and its input", status=500)
    entry["data"] = array.reshape(-1).tolist()
    return entry, b""


def encode_infer_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: Mapping[str, np.ndarray],
) -> tuple[bytes, dict[str, str]]:
    """Body and extra headers for the response; binary outputs follow the JSON header."""
    wanted = request.outputs
    if wanted is None:
        wanted = [RequestedOutput(name, request.binary_output) for name in outputs]
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": []}
    if request.id is not None:
        doc["id"] = request.id
    chunks = []
    for out in wanted:
        entry, data = _output_entry(out.name, outputs[out.name], out.binary)
        doc["outputs"].append(entry)
        chunks.append(data)
    header = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    if not any(out.binary for out in wanted):
        return header, {"Content-Type": "application/json"}
    return header + b"".join(chunks), {"Content-Type": "application/octet-stream",
                                       HEADER_LENGTH: str(len(header))}
