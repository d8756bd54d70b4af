"""m2pt-serve end to end: Triton's own client, every bad input, limits, overload, drain, metrics."""

from __future__ import annotations

import concurrent.futures
import io
import json
import socket
import time

import numpy as np
import pytest

from tests.serving.conftest import LABELS, HeldModel, error_of, http, start_inproc_server

tritonclient_http = pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException


def pixels(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 32, 32)).astype(np.float32)


def triton_infer(client, x: np.ndarray, *, binary: bool, model: str = "vit", **kwargs):
    tensor = tritonclient_http.InferInput("pixel_values", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    output = tritonclient_http.InferRequestedOutput("logits", binary_data=binary)
    return client.infer(model, [tensor], outputs=[output], **kwargs).as_numpy("logits")


def json_body(x: np.ndarray, name: str = "pixel_values", datatype: str = "FP32") -> bytes:
    return json.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": datatype,
                                   "data": x.reshape(-1).tolist()}]}).encode()


def assert_still_serving(url: str, reference_session) -> None:
    x = pixels(1, seed=99)
    status, _, body = http("POST", f"{url}/v2/models/vit/infer", json_body(x))
    assert status == 200, body
    logits = np.asarray(json.loads(body)["outputs"][0]["data"], np.float32).reshape(1, 10)
    np.testing.assert_allclose(logits, reference_session.run(None, {"pixel_values": x})[0],
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_outputs_equal_onnxruntime(server, reference_session, binary):
    client = tritonclient_http.InferenceServerClient(server.host_port, network_timeout=20)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("vit")
    x = pixels(3, seed=1)
    got = triton_infer(client, x, binary=binary)
    want = reference_session.run(None, {"pixel_values": x})[0]
    # JSON carries float32 as decimal text that round-trips exactly; binary is the bytes
    np.testing.assert_array_equal(got, want)
    # with no outputs named, tritonclient asks for every output in binary
    tensor = tritonclient_http.InferInput("pixel_values", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    np.testing.assert_array_equal(client.infer("vit", [tensor]).as_numpy("logits"), want)
    np.testing.assert_array_equal(triton_infer(client, x, binary=binary, model_version="1"), want)


def test_metadata_reports_providers_in_use_and_embedded_metadata(server):
    client = tritonclient_http.InferenceServerClient(server.host_port)
    meta = client.get_model_metadata("vit")
    assert meta["inputs"] == [{"name": "pixel_values", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert meta["parameters"]["providers"] == ["CPUExecutionProvider"]
    assert meta["parameters"]["metadata"]["m2pt_deploy.labels"] == LABELS
    assert meta["parameters"]["metadata"]["m2pt_deploy.input"]["height"] == 32
    assert any("CPUExecutionProvider" in line for line in server.banner)
    config = client.get_model_config("vit")
    assert config["max_batch_size"] == 8 and config["input"][0]["dims"] == [3, 32, 32]


def test_concurrent_clients_each_get_their_own_rows(server, reference_session):
    def one(i: int) -> bool:
        client = tritonclient_http.InferenceServerClient(server.host_port, network_timeout=30)
        x = pixels(1 + i % 3, seed=100 + i)
        got = triton_infer(client, x, binary=i % 2 == 0)
        return bool(np.array_equal(got, reference_session.run(None, {"pixel_values": x})[0]))

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        assert all(pool.map(one, range(24)))


BAD_BINARY_HEADER = json.dumps({"inputs": [{"name": "pixel_values", "shape": [1, 3, 32, 32],
                                            "datatype": "FP32",
                                            "parameters": {"binary_data_size": 12288}}]}).encode()


def _bad_requests():
    x = pixels(1)
    good_binary = BAD_BINARY_HEADER + x.tobytes()
    n = str(len(BAD_BINARY_HEADER))
    return [
        ("unknown-model", "/v2/models/nope/infer", json_body(x), {}, 404, "unknown model 'nope'"),
        ("unknown-model-metadata", "/v2/models/nope", None, {}, 404, "unknown model 'nope'"),
        ("unknown-version", "/v2/models/vit/versions/7/infer", json_body(x), {}, 404, "no version '7'"),
        ("wrong-name", "/v2/models/vit/infer", json_body(x, name="image"), {}, 400, "unknown input 'image'"),
        ("wrong-shape", "/v2/models/vit/infer", json_body(pixels(1)[:, :, :16]), {}, 400,
         "shape [1, 3, 16, 32], the model takes [-1, 3, 32, 32]"),
        ("wrong-dtype", "/v2/models/vit/infer", json_body(x.astype(np.float64), datatype="FP64"), {},
         400, "datatype FP64, the model takes FP32"),
        ("wrong-count", "/v2/models/vit/infer", json.dumps({"inputs": [{
            "name": "pixel_values", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0.0] * 7}]}).encode(),
         {}, 400, "'data' has 7 elements, shape [1, 3, 32, 32] needs 3072"),
        ("malformed-json", "/v2/models/vit/infer", b'{"inputs": [', {}, 400, "not valid JSON"),
        ("header-longer-than-body", "/v2/models/vit/infer", good_binary,
         {"Inference-Header-Content-Length": str(len(good_binary) + 1)}, 400, "does not fit a body"),
        ("binary-short", "/v2/models/vit/infer", good_binary[:-8],
         {"Inference-Header-Content-Length": n}, 400, "binary data ends after 12280 of its 12288 bytes"),
        ("binary-long", "/v2/models/vit/infer", good_binary + b"\0" * 4,
         {"Inference-Header-Content-Length": n}, 400, "4 bytes of binary data that no input declares"),
        ("header-not-a-number", "/v2/models/vit/infer", good_binary,
         {"Inference-Header-Content-Length": "12x"}, 400, "is not a whole number"),
        ("not-an-image", "/v2/models/vit/classify", b"GIF89a not really", {}, 400,
         "not a readable JPEG or PNG image"),
        ("empty-image", "/v2/models/vit/classify", b"", {}, 400, "not a readable JPEG or PNG image"),
        ("bad-top-k", "/v2/models/vit/classify?top_k=zero", _png(), {}, 400, "top_k 'zero'"),
        ("unknown-route", "/v2/nothing/here", None, {}, 404, "Not Found"),
        ("compressed", "/v2/models/vit/infer", json_body(x), {"Content-Encoding": "gzip"}, 415,
         "Content-Encoding 'gzip' is not supported"),
    ]


def _png(size: tuple[int, int] = (40, 48), color: tuple[int, int, int] | None = None,
         fmt: str = "PNG") -> bytes:
    from PIL import Image

    if color is None:
        data = np.random.default_rng(5).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        image = Image.fromarray(data)
    else:
        image = Image.new("RGB", size, color)
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize(("path", "body", "headers", "status", "message"),
                         [case[1:] for case in _bad_requests()], ids=[c[0] for c in _bad_requests()])
def test_bad_input_gets_a_4xx_that_says_what_is_wrong(server, reference_session, path, body,
                                                      headers, status, message):
    method = "GET" if body is None else "POST"
    got, _, content = http(method, f"{server.url}{path}", body, headers)
    assert got == status, content
    assert message in error_of(content)
    assert_still_serving(server.url, reference_session)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_classify_returns_top_k_from_the_embedded_metadata(server, reference_session, tiny_onnx, fmt):
    from m2pt_deploy.serving.images import decode_image, input_spec
    from m2pt_deploy.serving.runtime import OrtModel

    image = _png(fmt=fmt)
    status, _, body = http("POST", f"{server.url}/v2/models/vit/classify?top_k=3", image,
                           {"Content-Type": f"image/{fmt.lower()}"})
    assert status == 200, body
    classes = json.loads(body)["classes"]
    spec = input_spec(OrtModel("vit", tiny_onnx, providers=["CPUExecutionProvider"]).metadata)
    logits = reference_session.run(None, {"pixel_values": decode_image(image, spec)})[0][0]
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    want = np.argsort(-probs)[:3]
    assert [c["index"] for c in classes] == want.tolist()
    assert [c["label"] for c in classes] == [LABELS[i] for i in want]
    np.testing.assert_allclose([c["score"] for c in classes], probs[want], rtol=1e-5)


def test_metrics_count_requests_errors_latency_batches_and_queue(server):
    from prometheus_client.parser import text_string_to_metric_families

    def families():
        status, headers, body = http("GET", f"{server.url}/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        return {f.name: f for f in text_string_to_metric_families(body.decode())}

    def value(fams, family, sample, **labels):
        return sum(s.value for s in fams[family].samples
                   if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))

    before = families()
    x = pixels(2)
    for _ in range(3):
        assert http("POST", f"{server.url}/v2/models/vit/infer", json_body(x))[0] == 200
    assert http("POST", f"{server.url}/v2/models/vit/infer", b"{")[0] == 400
    after = families()
    ok = dict(model="vit", endpoint="infer", code="200")
    assert value(after, "m2pt_requests", "m2pt_requests_total", **ok) - \
        value(before, "m2pt_requests", "m2pt_requests_total", **ok) == 3
    bad = dict(model="vit", endpoint="infer", code="400")
    assert value(after, "m2pt_request_errors", "m2pt_request_errors_total", **bad) - \
        value(before, "m2pt_request_errors", "m2pt_request_errors_total", **bad) == 1
    assert value(after, "m2pt_request_latency_seconds", "m2pt_request_latency_seconds_count",
                 model="vit", endpoint="infer") >= 4
    rows = value(after, "m2pt_batch_size", "m2pt_batch_size_sum", model="vit") - \
        value(before, "m2pt_batch_size", "m2pt_batch_size_sum", model="vit")
    assert rows == 6
    assert value(after, "m2pt_queue_depth", "m2pt_queue_depth", model="vit") == 0


@pytest.fixture(scope="module")
def guarded(serve_process, tiny_onnx):
    """A server with an API key and a 256 KiB body limit."""
    return serve_process(str(tiny_onnx), "--max-body-mb", "0.25", "--api-key-env", "TEST_KEY",
                         env={"TEST_KEY": "s3cret-key"})


def _raw(host_port: str, request: bytes) -> bytes:
    host, port = host_port.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_api_key_is_required_except_for_health_probes(guarded, reference_session):
    x = json_body(pixels(1))
    url = f"{guarded.url}/v2/models/vit/infer"
    status, headers, body = http("POST", url, x)
    assert status == 401 and "API key" in error_of(body) and headers["www-authenticate"] == "Bearer"
    assert http("POST", url, x, {"Authorization": "Bearer wrong"})[0] == 401
    assert http("POST", url, x, {"X-API-Key": "s3cret-key-and-more"})[0] == 401
    assert http("GET", f"{guarded.url}/metrics")[0] == 401
    assert http("POST", url, x, {"Authorization": "Bearer s3cret-key"})[0] == 200
    assert http("POST", url, x, {"X-API-Key": "s3cret-key"})[0] == 200
    assert http("GET", f"{guarded.url}/v2/health/live")[0] == 200
    assert http("GET", f"{guarded.url}/v2/health/ready")[0] == 200
    _, _, metrics = http("GET", f"{guarded.url}/metrics", headers={"X-API-Key": "s3cret-key"})
    # the four refusals above are counted, before routing, under endpoint "unauthorized"
    assert ('m2pt_requests_total{code="401",endpoint="unauthorized",model="",protocol="http"} 4.0'
            in metrics.decode())
    client = tritonclient_http.InferenceServerClient(guarded.host_port)
    xs = pixels(2)
    got = triton_infer(client, xs, binary=True, headers={"Authorization": "Bearer s3cret-key"})
    np.testing.assert_array_equal(got, reference_session.run(None, {"pixel_values": xs})[0])
    with pytest.raises(InferenceServerException, match="API key"):
        triton_infer(client, xs, binary=True)


def test_oversized_bodies_get_413_declared_or_streamed(guarded):
    auth = b"Authorization: Bearer s3cret-key\r\n"
    declared = _raw(guarded.host_port, b"POST /v2/models/vit/infer HTTP/1.1\r\nHost: x\r\n" + auth
                    + b"Content-Length: 1000000000\r\n\r\n")
    assert declared.startswith(b"HTTP/1.1 413"), declared[:200]
    assert b"exceeds the limit of 262144" in declared
    chunk = b"x" * 100_000
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
    streamed = _raw(guarded.host_port, b"POST /v2/models/vit/classify HTTP/1.1\r\nHost: x\r\n" + auth
                    + b"Transfer-Encoding: chunked\r\n\r\n" + chunked)
    assert streamed.startswith(b"HTTP/1.1 413"), streamed[:200]
    status, _, body = http("POST", f"{guarded.url}/v2/models/vit/infer", json_body(pixels(1)),
                           {"X-API-Key": "s3cret-key"})
    assert status == 200, body


@pytest.fixture
def held_server(tiny_onnx):
    """An in-process server over a HeldModel; yields (url, model) for a given config."""
    from m2pt_deploy.serving.runtime import OrtModel

    running = []

    def start(**config):
        model = HeldModel(OrtModel("vit", tiny_onnx, providers=["CPUExecutionProvider"]))
        url, server, thread = start_inproc_server(model, **config)
        running.append((server, thread, model))
        return url, model

    yield start
    for server, thread, model in running:
        model.gate.set()
        server.should_exit = True
        thread.join(timeout=20)


def test_overload_answers_503_with_retry_after(held_server):
    url, model = held_server(max_batch=1, max_delay_ms=0, max_queue=1)
    body = json_body(pixels(1))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        running = pool.submit(http, "POST", f"{url}/v2/models/vit/infer", body)
        assert model.entered.wait(20)
        queued = pool.submit(http, "POST", f"{url}/v2/models/vit/infer", body)
        deadline = time.monotonic() + 10
        while b"m2pt_queue_depth{model=\"vit\"} 1.0" not in http("GET", f"{url}/metrics")[2]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        status, headers, content = http("POST", f"{url}/v2/models/vit/infer", body)
        assert status == 503 and headers["retry-after"] == "1"
        assert "overloaded" in error_of(content)
        model.gate.set()
        assert running.result()[0] == 200 and queued.result()[0] == 200


def test_a_request_past_its_timeout_gets_504_and_the_server_goes_on(held_server):
    url, model = held_server(max_batch=1, max_delay_ms=0, request_timeout_s=0.3)
    status, _, content = http("POST", f"{url}/v2/models/vit/infer", json_body(pixels(1)))
    assert status == 504 and "timed out" in error_of(content)
    model.gate.set()
    assert http("POST", f"{url}/v2/models/vit/infer", json_body(pixels(1)))[0] == 200


def test_sigterm_lets_in_flight_requests_finish(serve_process, tiny_onnx, reference_session):
    server = serve_process(str(tiny_onnx))
    x = pixels(2, seed=7)
    body = json_body(x)
    host, port = server.host_port.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        # half a body on the wire when SIGTERM arrives: the request is in flight
        sock.sendall(b"POST /v2/models/vit/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                     % len(body) + body[: len(body) // 2])
        time.sleep(0.3)
        server.proc.send_signal(15)
        time.sleep(0.3)
        assert server.proc.poll() is None
        sock.sendall(body[len(body) // 2:])
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head, _, payload = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    got = np.asarray(json.loads(payload)["outputs"][0]["data"], np.float32).reshape(2, 10)
    np.testing.assert_array_equal(got, reference_session.run(None, {"pixel_values": x})[0])
    assert server.stop() == 0
    with pytest.raises(OSError):
        http("GET", f"{server.url}/v2/health/live", timeout=2)


def test_optimized_export_is_not_optimized_again_at_load(tiny_onnx, tmp_path) -> None:
    import onnx
    import onnxruntime as ort

    from m2pt_deploy.export.optimize import optimize_onnx, save_optimized
    from m2pt_deploy.serving.runtime import OrtModel

    optimized = save_optimized(optimize_onnx(onnx.load(tiny_onnx)), tmp_path / "fast.onnx")
    level = ort.GraphOptimizationLevel
    fast = OrtModel("fast", optimized, providers=["CPUExecutionProvider"])
    plain = OrtModel("plain", tiny_onnx, providers=["CPUExecutionProvider"])
    assert fast.session.get_session_options().graph_optimization_level == level.ORT_DISABLE_ALL
    assert plain.session.get_session_options().graph_optimization_level == level.ORT_ENABLE_ALL
