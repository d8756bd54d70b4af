"""Fuzz m2pt-serve: HTTP through its own OpenAPI description with schemathesis, gRPC with a seeded
loop of random and byte-mutated ModelInferRequests (a few seconds; never INTERNAL or UNKNOWN).

Every generated request must get a documented status code and a response matching the
documented schema, never a 5xx, and schema-invalid requests must be refused. The one check
left out is "schema-valid requests are accepted": JSON Schema cannot say that a tensor's
``data`` holds ``prod(shape)`` values of its ``datatype``, so most schema-valid tensors are
rightly refused with 400.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

schemathesis = pytest.importorskip("schemathesis", reason="fuzzing needs schemathesis")

from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from m2pt_deploy.serving.openapi import openapi_document  # noqa: E402

schema = schemathesis.openapi.from_dict(openapi_document(["vit"]))


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_honours_the_contract(case, server):
    case.call_and_validate(base_url=server.url, timeout=20,
                           excluded_checks=[positive_data_acceptance])


def test_the_served_description_is_the_one_fuzzed(server):
    import json

    from tests.serving.conftest import http

    status, _, body = http("GET", f"{server.url}/openapi.json")
    assert status == 200
    assert json.loads(body) == openapi_document(["vit"])


# ---- gRPC: mutated bytes and random well-formed messages, seeded and bounded -------------------

FUZZ_SECONDS = 3.0
# Every refusal a client can cause; INTERNAL, UNKNOWN or a dropped connection would be a bug.
CLIENT_CODES = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "UNIMPLEMENTED"}
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES", "BF16", "", "fp32", "FP32\x00"]
TYPED = ["bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents",
         "fp32_contents", "fp64_contents", "bytes_contents"]


def _good_request(rng):
    import numpy as np
    from tritonclient.grpc import service_pb2

    x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    request = service_pb2.ModelInferRequest(model_name="vit", id="fuzz")
    request.inputs.add(name="pixel_values", datatype="FP32", shape=[1, 3, 32, 32])
    request.raw_input_contents.append(x.tobytes())
    return request, x


def _random_request(rng):
    """A well-formed message with random names, shapes, datatypes, contents and parameters."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=str(rng.choice(["vit", "vit", "nope", ""])),
                                            model_version=str(rng.choice(["", "", "1", "2", "x"])))
    for _ in range(int(rng.integers(0, 3))):
        shape = [int(d) for d in rng.choice([0, 1, 2, 3, 32, -1, 1 << 40, -(1 << 62)],
                                            size=int(rng.integers(0, 6)))]
        tensor = request.inputs.add(name=str(rng.choice(["pixel_values", "x", ""])),
                                    datatype=str(rng.choice(DATATYPES)), shape=shape)
        if rng.random() < 0.5:
            request.raw_input_contents.append(rng.bytes(int(rng.choice([0, 3, 12288, 12289, 4096]))))
        else:
            field = str(rng.choice(TYPED))
            n = int(rng.choice([0, 1, 3072, 3073]))
            values = getattr(tensor.contents, field)
            if field == "bool_contents":
                values.extend(bool(v) for v in rng.integers(0, 2, n))
            elif field == "bytes_contents":
                values.extend(rng.bytes(4) for _ in range(min(n, 8)))
            elif field.startswith("fp"):
                values.extend(float(v) for v in rng.choice([0.5, float("nan"), float("inf"), -1e39], n))
            elif field.startswith("uint"):
                values.extend(int(v) for v in rng.integers(0, 1 << 31, n))
            else:
                values.extend(int(v) for v in rng.integers(-(1 << 31), 1 << 31, n))
    for _ in range(int(rng.integers(0, 2))):
        out = request.outputs.add(name=str(rng.choice(["logits", "probs"])))
        if rng.random() < 0.3:
            out.parameters["classification"].int64_param = 3
    if rng.random() < 0.3:
        request.parameters["timeout"].int64_param = int(rng.choice([-5, 0, 1, 10**12]))
    return request


def _mutated(rng, data: bytes) -> bytes:
    """Flip, cut, insert or repeat bytes of a serialized message."""
    data = bytearray(data)
    for _ in range(int(rng.integers(1, 6))):
        kind = rng.integers(0, 4)
        at = int(rng.integers(0, len(data) + 1))
        if kind == 0 and data:
            data[min(at, len(data) - 1)] = int(rng.integers(0, 256))
        elif kind == 1:
            data = data[:at]
        elif kind == 2:
            data[at:at] = rng.bytes(int(rng.integers(1, 16)))
        else:
            data[at:at] = data[at:at + int(rng.integers(1, 64))]
    return bytes(data)


def test_grpc_fuzz_never_fails_the_server(server, reference_session):
    import time

    import grpc
    import numpy as np
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    rng = np.random.default_rng(20241130)
    seen: dict[str, int] = {}
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        raw_infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        raw_metadata = channel.unary_unary("/inference.GRPCInferenceService/ModelMetadata")
        good, _ = _good_request(rng)
        end, sent = time.monotonic() + FUZZ_SECONDS, 0
        while time.monotonic() < end:
            choice = sent % 4
            try:
                if choice == 0:
                    stub.ModelInfer(_random_request(rng), timeout=10)
                elif choice == 1:
                    raw_infer(_mutated(rng, good.SerializeToString()), timeout=10)
                elif choice == 2:
                    raw_metadata(rng.bytes(int(rng.integers(0, 40))), timeout=10)
                else:
                    stub.ModelConfig(service_pb2.ModelConfigRequest(
                        name=str(rng.choice(["vit", "nope"])), version=str(rng.choice(["", "1", "9"]))),
                        timeout=10)
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
                assert "Traceback" not in (e.details() or ""), e.details()
            assert code in CLIENT_CODES, (choice, code)
            seen[code] = seen.get(code, 0) + 1
            sent += 1
        print(f"gRPC fuzz: {sent} calls, {seen}")
        assert sent >= 40 and seen.get("INVALID_ARGUMENT", 0) > 0 and seen.get("NOT_FOUND", 0) > 0
        # and the server still answers a good request correctly right after
        request, x = _good_request(rng)
        response = stub.ModelInfer(request, timeout=10)
        got = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(1, 10)
        np.testing.assert_array_equal(got, reference_session.run(None, {"pixel_values": x})[0])
    assert server.proc.poll() is None
