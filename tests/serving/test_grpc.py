"""KServe v2 over gRPC with Triton's unmodified client: outputs, metadata, status codes, API key,
metrics, and one batcher shared with HTTP."""

from __future__ import annotations

import concurrent.futures
import json
import time

import numpy as np
import pytest

grpcclient = pytest.importorskip("tritonclient.grpc", reason="gRPC tests need tritonclient[grpc]",
                                 exc_type=ImportError)

import grpc  # noqa: E402
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.serving.conftest import HeldModel, http, start_inproc_servers  # noqa: E402


def pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def infer_input(x: np.ndarray, name: str = "pixel_values", datatype: str = "FP32"):
    tensor = grpcclient.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return tensor


def status_of(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value.status(), info.value.message()


@pytest.fixture(scope="module")
def client(server):
    with grpcclient.InferenceServerClient(server.grpc_target) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.mark.parametrize("rows", [1, 3, 8])
def test_outputs_equal_onnxruntime(client, reference_session, rows):
    x = pixels(rows, seed=rows)
    result = client.infer("vit", [infer_input(x)], request_id=f"r{rows}")
    want = reference_session.run(None, {"pixel_values": x})[0]
    got = result.as_numpy("logits")
    assert got.dtype == np.float32 and got.shape == (rows, 10)
    np.testing.assert_array_equal(got, want)
    response = result.get_response()
    assert response.model_name == "vit" and response.model_version == "1" and response.id == f"r{rows}"
    assert len(response.raw_output_contents) == 1  # outputs come back raw, as Triton sends them


def test_typed_contents_equal_raw_contents(stub, reference_session):
    x = pixels(2, seed=7)
    request = service_pb2.ModelInferRequest(model_name="vit")
    tensor = request.inputs.add(name="pixel_values", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    response = stub.ModelInfer(request, timeout=20)
    got = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(2, 10)
    np.testing.assert_array_equal(got, reference_session.run(None, {"pixel_values": x})[0])
    assert [o.name for o in response.outputs] == ["logits"] and list(response.outputs[0].shape) == [2, 10]


def test_metadata_and_config_agree_with_http(client, server):
    meta = client.get_model_metadata("vit", as_json=True)
    _, _, body = http("GET", f"{server.url}/v2/models/vit")
    over_http = json.loads(body)
    assert meta["name"] == over_http["name"] == "vit"
    assert meta["versions"] == over_http["versions"] == ["1"]
    assert meta["platform"] == over_http["platform"] == "onnxruntime_onnx"
    for kind in ("inputs", "outputs"):
        assert [{**t, "shape": [int(d) for d in t["shape"]]} for t in meta[kind]] == over_http[kind]
    config = client.get_model_config("vit").config
    assert config.max_batch_size == 8 and list(config.input[0].dims) == [3, 32, 32]
    assert config.dynamic_batching.max_queue_delay_microseconds == 5000
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("vit")
    assert client.get_server_metadata().name == "m2pt-serve"


def _request(**changes):
    x = pixels(1)
    request = service_pb2.ModelInferRequest(model_name="vit")
    request.inputs.add(name="pixel_values", datatype="FP32", shape=[1, 3, 32, 32])
    request.raw_input_contents.append(x.tobytes())
    for key, value in changes.items():
        value(request) if callable(value) else setattr(request, key, value)
    return request


def _set(field: str, value):
    def change(request):
        tensor = request.inputs[0]
        if field == "shape":
            del tensor.shape[:]
            tensor.shape.extend(value)
        else:
            setattr(tensor, field, value)
    return change


BAD = {
    "unknown model": (dict(model_name="nope"), "NOT_FOUND", "unknown model 'nope'; serving vit"),
    "unknown version": (dict(model_version="7"), "NOT_FOUND", "model 'vit' has no version '7'"),
    "wrong shape": (dict(s=_set("shape", [1, 3, 16, 64])), "INVALID_ARGUMENT",
                    "input 'pixel_values': shape [1, 3, 16, 64], the model takes [-1, 3, 32, 32]"),
    "wrong name": (dict(s=_set("name", "x")), "INVALID_ARGUMENT", "unknown input 'x'"),
    "wrong datatype": (dict(s=_set("datatype", "INT32")), "INVALID_ARGUMENT",
                       "input 'pixel_values': datatype INT32, the model takes FP32"),
    "unsupported datatype": (dict(s=_set("datatype", "BYTES")), "INVALID_ARGUMENT",
                             "datatype 'BYTES' is not supported"),
    "truncated raw": (dict(s=lambda r: r.raw_input_contents.__setitem__(0, r.raw_input_contents[0][:-4])),
                      "INVALID_ARGUMENT", "raw_input_contents has 12284 bytes, shape [1, 3, 32, 32] of "
                                          "FP32 needs 12288"),
    "huge shape": (dict(s=_set("shape", [1 << 40, 3, 32, 32])), "INVALID_ARGUMENT",
                   "needs 13510798882111488"),
    "extra raw": (dict(s=lambda r: r.raw_input_contents.append(b"1234")), "INVALID_ARGUMENT",
                  "raw_input_contents has 2 entries for 1 inputs"),
    "unknown output": (dict(s=lambda r: r.outputs.add(name="probs")), "INVALID_ARGUMENT",
                       "unknown output 'probs'"),
    "no inputs": (dict(s=lambda r: (r.ClearField("inputs"), r.ClearField("raw_input_contents"))),
                  "INVALID_ARGUMENT", "'inputs' must be a non-empty list"),
    "typed count": (dict(s=lambda r: (r.ClearField("raw_input_contents"),
                                      r.inputs[0].contents.fp32_contents.extend([1.0] * 5))),
                    "INVALID_ARGUMENT", "contents.fp32_contents has 5 elements"),
    "nan": (dict(s=lambda r: r.raw_input_contents.__setitem__(
        0, np.full((1, 3, 32, 32), np.nan, np.float32).tobytes())),
        "INVALID_ARGUMENT", "holds NaN or Inf values"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_errors_map_to_grpc_status_codes(stub, case):
    changes, code, message = BAD[case]
    changes = {("_" if k == "s" else k): v for k, v in changes.items()}
    request = _request(**{k: v for k, v in changes.items() if k != "_"})
    if "_" in changes:
        changes["_"](request)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=20)
    assert info.value.code() == getattr(grpc.StatusCode, code)
    assert message in info.value.details()
    assert "Traceback" not in info.value.details() and "\n" not in info.value.details()


def test_classification_parameter_is_refused(stub):
    request = _request()
    request.outputs.add(name="logits").parameters["classification"].int64_param = 3
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=20)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "classification extension is not supported" in info.value.details()


def test_unknown_model_metadata_and_unimplemented_methods(client, stub):
    assert status_of(lambda: client.get_model_metadata("nope")) == (
        "StatusCode.NOT_FOUND", "unknown model 'nope'; serving vit")
    assert client.is_model_ready("nope") is False  # as Triton: not ready, no error
    assert client.is_model_ready("vit", "7") is False
    assert status_of(lambda: client.get_cuda_shared_memory_status()) == (
        "StatusCode.UNIMPLEMENTED", "CudaSharedMemoryStatus is not implemented by m2pt-serve")


def test_message_over_the_body_limit_is_refused_before_work(serve_process, tiny_onnx):
    small = serve_process(str(tiny_onnx), "--max-body-mb", "0.01")  # 10 KiB: one image is 12 KiB
    with grpcclient.InferenceServerClient(small.grpc_target) as c:
        code, message = status_of(lambda: c.infer("vit", [infer_input(pixels(1))]))
        assert code == "StatusCode.RESOURCE_EXHAUSTED" and "larger than max" in message
        x = np.zeros((1, 3, 4, 4), np.float32)  # small enough: refused for its shape, not its size
        assert status_of(lambda: c.infer("vit", [infer_input(x)]))[0] == "StatusCode.INVALID_ARGUMENT"


def test_nonfinite_inputs_pass_with_allow_nonfinite(serve_process, tiny_onnx):
    lenient = serve_process(str(tiny_onnx), "--allow-nonfinite")
    x = pixels(1)
    x[0, 0, 0, 0] = np.inf
    with grpcclient.InferenceServerClient(lenient.grpc_target) as c:
        assert c.infer("vit", [infer_input(x)]).as_numpy("logits").shape == (1, 10)


def test_api_key_is_required_on_grpc(serve_process, tiny_onnx):
    keyed = serve_process(str(tiny_onnx), env={"M2PT_SERVE_API_KEY": "s3cret"})
    x = pixels(1)
    with grpcclient.InferenceServerClient(keyed.grpc_target) as c:
        assert c.is_server_live() and c.is_server_ready()  # the probes stay open, as over HTTP
        for headers in (None, {"authorization": "Bearer wrong"}, {"x-api-key": "s3cre"}):
            assert status_of(lambda h=headers: c.infer("vit", [infer_input(x)], headers=h)) == (
                "StatusCode.UNAUTHENTICATED", "missing or wrong API key")
            assert status_of(lambda h=headers: c.get_model_metadata("vit", headers=h))[0] == \
                "StatusCode.UNAUTHENTICATED"
        for headers in ({"authorization": "Bearer s3cret"}, {"x-api-key": "s3cret"}):
            assert c.infer("vit", [infer_input(x)], headers=headers).as_numpy("logits").shape == (1, 10)
            assert c.get_model_metadata("vit", headers=headers).name == "vit"


def _metric(server, family: str, sample: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    _, _, body = http("GET", f"{server.url}/metrics")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    return sum(s.value for s in families[family].samples
               if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_count_grpc_requests(server, client, stub):
    grpc_ok = dict(model="vit", endpoint="infer", protocol="grpc", code="OK")
    grpc_bad = dict(model="vit", endpoint="infer", protocol="grpc", code="INVALID_ARGUMENT")
    http_ok = dict(model="vit", endpoint="infer", protocol="http", code="200")
    before = [_metric(server, "m2pt_requests", "m2pt_requests_total", **grpc_ok),
              _metric(server, "m2pt_request_errors", "m2pt_request_errors_total", **grpc_bad),
              _metric(server, "m2pt_requests", "m2pt_requests_total", **http_ok),
              _metric(server, "m2pt_request_latency_seconds", "m2pt_request_latency_seconds_count",
                      model="vit", endpoint="infer", protocol="grpc")]
    for _ in range(3):
        client.infer("vit", [infer_input(pixels(1))])
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(_request(model_version="7"), timeout=20)  # NOT_FOUND: not this label
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(_request(s=_set("shape", [1, 3, 16, 64])), timeout=20)
    after = [_metric(server, "m2pt_requests", "m2pt_requests_total", **grpc_ok),
             _metric(server, "m2pt_request_errors", "m2pt_request_errors_total", **grpc_bad),
             _metric(server, "m2pt_requests", "m2pt_requests_total", **http_ok),
             _metric(server, "m2pt_request_latency_seconds", "m2pt_request_latency_seconds_count",
                     model="vit", endpoint="infer", protocol="grpc")]
    assert [a - b for a, b in zip(after, before, strict=True)] == [3, 1, 0, 5]


@pytest.fixture
def held(tiny_onnx):
    from m2pt_deploy.serving.runtime import OrtModel

    model = HeldModel(OrtModel("vit", tiny_onnx, providers=["CPUExecutionProvider"]))
    yield model
    model.gate.set()


def _stop(server, thread) -> None:
    server.should_exit = True
    thread.join(timeout=20)
    assert not thread.is_alive()


def test_queue_full_is_unavailable_and_http_and_grpc_share_one_batcher(held):
    from tests.serving.conftest import http as http_call

    url, target, server, thread = start_inproc_servers(held, max_queue=2, max_batch=8, max_delay_ms=1)
    pool = concurrent.futures.ThreadPoolExecutor(4)
    try:
        with grpcclient.InferenceServerClient(target) as c:
            first = pool.submit(c.infer, "vit", [infer_input(pixels(1))])
            assert held.entered.wait(20)  # the model is busy with the first request
            held.entered.clear()
            body = json.dumps({"inputs": [{"name": "pixel_values", "shape": [1, 3, 32, 32],
                                           "datatype": "FP32", "data": pixels(1).ravel().tolist()}]})
            over_http = pool.submit(http_call, "POST", f"{url}/v2/models/vit/infer", body.encode())
            over_grpc = pool.submit(c.infer, "vit", [infer_input(pixels(1, seed=1))])
            deadline = time.monotonic() + 10
            while server.config.app.state.server.batchers["vit"].depth < 2:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            # both places taken, one by each protocol: the next call is refused at once
            assert status_of(lambda: c.infer("vit", [infer_input(pixels(1))])) == (
                "StatusCode.UNAVAILABLE", "server is overloaded; retry later")
            held.gate.set()
            assert first.result(20).as_numpy("logits").shape == (1, 10)
            assert over_grpc.result(20).as_numpy("logits").shape == (1, 10)
            assert over_http.result(20)[0] == 200
        batches = server.config.app.state.server.metrics.batch_size.labels("vit")
        # three rows in two model calls: the queued HTTP and gRPC requests ran as one batch
        assert batches._sum.get() == 3 and sum(b.get() for b in batches._buckets) == 2
    finally:
        held.gate.set()
        pool.shutdown(wait=True)
        _stop(server, thread)


def test_sigterm_drains_and_exits_zero_with_grpc(serve_process, tiny_onnx):
    own = serve_process(str(tiny_onnx))
    with grpcclient.InferenceServerClient(own.grpc_target) as c:
        assert c.infer("vit", [infer_input(pixels(1))]).as_numpy("logits").shape == (1, 10)
    assert own.stop() == 0


def test_grpc_port_in_use_is_one_line(tiny_onnx, capsys):
    import socket

    from m2pt_deploy.cli.common import EXIT_BAD_INPUT, run_main
    from m2pt_deploy.cli.serve import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert run_main(main, [str(tiny_onnx), "--port", "0", "--grpc-port", str(port)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: cannot listen on 127.0.0.1:{port} for gRPC: address in use or "
                       "unavailable (--grpc-port 0 picks a free port, --no-grpc turns gRPC off)")


def test_no_grpc_serves_http_only(serve_process, tiny_onnx):
    plain = serve_process(str(tiny_onnx), "--no-grpc")
    assert plain.grpc_target is None
    assert not any("gRPC" in line for line in plain.banner)
    assert http("GET", f"{plain.url}/v2/health/ready")[0] == 200
