"""KServe v2 request/response coding without a server: JSON, binary extension, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from m2pt_deploy.serving.protocol import (
    DATATYPES,
    HEADER_LENGTH,
    ProtocolError,
    TensorSpec,
    encode_infer_response,
    parse_infer_request,
    validate_request,
)

SPECS = (TensorSpec("pixel_values", "FP32", (-1, 3, 4, 4)),)
OUTPUTS = (TensorSpec("logits", "FP32", (-1, 10)),)


def binary_request(arrays: dict[str, np.ndarray], *, declared: dict[str, int] | None = None,
                   extra: bytes = b"") -> tuple[bytes, str]:
    header = {"inputs": [
        {"name": n, "shape": list(a.shape), "datatype": next(k for k, v in DATATYPES.items()
                                                             if v == a.dtype.newbyteorder("<")),
         "parameters": {"binary_data_size": (declared or {}).get(n, a.nbytes)}}
        for n, a in arrays.items()
    ]}
    head = json.dumps(header).encode()
    return head + b"".join(a.tobytes() for a in arrays.values()) + extra, str(len(head))


def json_request(data: object, shape: list[int], datatype: str = "FP32", name: str = "pixel_values") -> bytes:
    return json.dumps({"inputs": [{"name": name, "shape": shape, "datatype": datatype,
                                   "data": data}]}).encode()


def test_json_and_nested_json_give_the_same_array():
    x = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    flat = parse_infer_request(json_request(x.reshape(-1).tolist(), [2, 3, 4, 4]))
    nested = parse_infer_request(json_request(x.tolist(), [2, 3, 4, 4]))
    np.testing.assert_array_equal(flat.inputs["pixel_values"], x)
    np.testing.assert_array_equal(nested.inputs["pixel_values"], x)


_dtypes = st.sampled_from([k for k in DATATYPES if k != "BOOL"])
_shapes = st.lists(st.integers(1, 4), min_size=1, max_size=4)


@settings(max_examples=40, deadline=None)
@given(datatype=_dtypes, shape=_shapes, seed=st.integers(0, 2**31 - 1))
def test_binary_round_trip_is_exact_for_every_datatype(datatype, shape, seed):
    dtype = DATATYPES[datatype]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
    array = np.frombuffer(raw.tobytes(), dtype=dtype).reshape(shape)
    second = np.ones((2,), np.int64)
    body, length = binary_request({"a": array, "b": second})
    parsed = parse_infer_request(body, length, allow_nonfinite=True)  # random bits hold NaNs
    assert parsed.inputs["a"].dtype == dtype
    np.testing.assert_array_equal(parsed.inputs["a"].view(np.uint8), array.view(np.uint8))
    np.testing.assert_array_equal(parsed.inputs["b"], second)


@settings(max_examples=25, deadline=None)
@given(shape=_shapes, binary=st.booleans())
def test_response_decodes_back_to_the_outputs(shape, binary):
    out = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    request = parse_infer_request(json.dumps({
        "id": "r1", "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0]}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": binary}}],
    }).encode())
    body, headers = encode_infer_response("vit", "1", request, {"logits": out, "other": out})
    if binary:
        n = int(headers[HEADER_LENGTH])
        doc = json.loads(body[:n])
        decoded = np.frombuffer(body[n:], np.float32).reshape(doc["outputs"][0]["shape"])
        assert doc["outputs"][0]["parameters"]["binary_data_size"] == out.nbytes
    else:
        assert HEADER_LENGTH not in headers
        doc = json.loads(body)
        decoded = np.asarray(doc["outputs"][0]["data"], np.float32).reshape(doc["outputs"][0]["shape"])
    assert doc["id"] == "r1" and doc["model_name"] == "vit"
    assert [o["name"] for o in doc["outputs"]] == ["logits"]
    np.testing.assert_array_equal(decoded, out)


def test_all_outputs_binary_when_none_requested_and_binary_output_set():
    request = parse_infer_request(json.dumps({
        "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0]}],
        "parameters": {"binary_data_output": True}}).encode())
    body, headers = encode_infer_response("m", "1", request, {"a": np.zeros(2, np.float32),
                                                             "b": np.ones(3, np.int64)})
    doc = json.loads(body[: int(headers[HEADER_LENGTH])])
    assert [o["parameters"]["binary_data_size"] for o in doc["outputs"]] == [8, 24]
    assert len(body) == int(headers[HEADER_LENGTH]) + 32


@pytest.mark.parametrize(("body", "length", "message"), [
    (b"{not json", None, "not valid JSON"),
    (b"[1, 2]", None, "must be a JSON object"),
    (b'{"inputs": []}', None, "'inputs' must be a non-empty list"),
    (json.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": "FP33", "data": [1, 2]}]}).encode(),
     None, "datatype 'FP33' is not supported"),
    (json.dumps({"inputs": [{"name": "x", "shape": [-2], "datatype": "FP32", "data": [1]}]}).encode(),
     None, "'shape' must be a list of non-negative integers"),
    (json_request([1.0, 2.0, 3.0], [2, 2]), None, "'data' has 3 elements, shape [2, 2] needs 4"),
    (json_request(["a", "b"], [2]), None, "does not hold FP32 values"),
    (json_request([1000, 1], [2], "INT8"), None, "does not hold INT8 values"),
    (json_request([[1, 2], [3]], [3]), None, "does not hold FP32 values"),
    (json_request(None, [2]), None, "'data' must be a list"),
    (b'{"inputs": [1]}', None, "input 0: must be an object"),
    (b'{"a": 1}', "abc", "is not a whole number"),
    (b'{"a": 1}', "100", "does not fit a body of 8 bytes"),
    (b'{"a": 1}', "0", "does not fit"),
])
def test_malformed_requests_say_what_is_wrong(body, length, message):
    with pytest.raises(ProtocolError) as info:
        parse_infer_request(body, length)
    assert message in info.value.message
    assert info.value.status == 400


def test_binary_sizes_that_lie_are_refused():
    x = np.zeros((1, 3, 4, 4), np.float32)
    body, length = binary_request({"pixel_values": x}, declared={"pixel_values": x.nbytes + 4})
    with pytest.raises(ProtocolError, match=r"binary_data_size 196 but shape \[1, 3, 4, 4\] of FP32 needs 192"):
        parse_infer_request(body, length)
    body, length = binary_request({"pixel_values": x})
    with pytest.raises(ProtocolError, match="binary data ends after 100 of its 192 bytes"):
        parse_infer_request(body[:-92], length)
    body, length = binary_request({"pixel_values": x}, extra=b"\0" * 7)
    with pytest.raises(ProtocolError, match="7 bytes of binary data that no input declares"):
        parse_infer_request(body, length)
    # a header length pointing inside the JSON leaves a truncated, unparsable header
    with pytest.raises(ProtocolError, match="not valid JSON"):
        parse_infer_request(body, str(int(length) - 5))


def _validate(array: np.ndarray, name: str = "pixel_values", outputs: list | None = None):
    payload = {"inputs": [{"name": name, "shape": list(array.shape), "datatype":
                           next(k for k, v in DATATYPES.items() if v == array.dtype),
                           "data": array.reshape(-1).tolist()}]}
    if outputs is not None:
        payload["outputs"] = [{"name": n} for n in outputs]
    return validate_request(parse_infer_request(json.dumps(payload).encode()), SPECS, OUTPUTS)


def test_validation_accepts_any_batch_and_rejects_each_mismatch():
    feed = _validate(np.zeros((5, 3, 4, 4), np.float32))
    assert feed["pixel_values"].shape == (5, 3, 4, 4)
    cases = [
        (dict(array=np.zeros((1, 3, 4, 4), np.float32), name="pixels"), "unknown input 'pixels'"),
        (dict(array=np.zeros((1, 3, 4, 4), np.float64)), "datatype FP64, the model takes FP32"),
        (dict(array=np.zeros((1, 3, 4, 5), np.float32)), "shape [1, 3, 4, 5], the model takes [-1, 3, 4, 4]"),
        (dict(array=np.zeros((3, 4, 4), np.float32)), "shape [3, 4, 4]"),
        (dict(array=np.zeros((0, 3, 4, 4), np.float32)), "holds no elements"),
        (dict(array=np.zeros((1, 3, 4, 4), np.float32), outputs=["probs"]), "unknown output 'probs'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ProtocolError) as info:
            _validate(**kwargs)
        assert message in info.value.message, (kwargs, info.value.message)


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "INT64"])
def test_orjson_reads_exactly_what_json_reads(monkeypatch, datatype):
    """Large JSON bodies are parsed with orjson (the GIL is held 3x shorter); it must give the
    very same values as the json module, bit for bit, subnormals and extremes included."""
    pytest.importorskip("orjson", reason="orjson is a serve dependency; this compares it with json")
    rng = np.random.default_rng(3)
    if datatype == "INT64":
        values = [int(v) for v in rng.integers(-(2**63), 2**63 - 1, 2000, dtype=np.int64)]
    else:
        exponents = rng.uniform(-320 if datatype == "FP64" else -45, 300 if datatype == "FP64" else 38, 2000)
        values = (rng.choice([-1.0, 1.0], 2000) * rng.random(2000) * 10.0 ** exponents).tolist()
        values += [0.0, -0.0, 1.401298464324817e-45, 3.4028234663852886e38]  # FP32's extremes
        if datatype == "FP64":
            values += [5e-324, 1.7976931348623157e308]
    body = json_request(values, [len(values)], datatype)
    fast = parse_infer_request(body).inputs["pixel_values"]
    monkeypatch.setitem(__import__("sys").modules, "orjson", None)  # import orjson now fails
    slow = parse_infer_request(body).inputs["pixel_values"]
    assert fast.dtype == slow.dtype == DATATYPES[datatype]
    np.testing.assert_array_equal(fast.view(np.uint8), slow.view(np.uint8))


@pytest.mark.parametrize(("body", "message"), [
    (b'{"inputs": [', "request is not valid JSON: "),
    (json_request([1.0, float("nan")], [2]), "request holds NaN, which JSON does not have"),
    (json_request([float("-inf")], [1]), "Infinity, which JSON does not have"),
    (b'{"inputs": [{"name": "pixel_values", "shape": [1], "datatype": "FP64", "data": [1e400]}]}',
     "past FP64's range"),
])
def test_refusals_read_the_same_with_and_without_orjson(monkeypatch, body, message):
    for orjson in ("installed", None):
        if orjson is None:
            monkeypatch.setitem(__import__("sys").modules, "orjson", None)
        with pytest.raises(ProtocolError) as info:
            parse_infer_request(body)
        assert info.value.status == 400 and message in info.value.message, (orjson, info.value.message)
