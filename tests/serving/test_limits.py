"""m2pt-serve's input limits: non-finite tensors, hostile JSON, overload and stalled uploads.

Each test is bounded in requests and seconds and talks to loopback only.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import socket
import threading
import time

import numpy as np
import pytest

from m2pt_deploy.serving.protocol import (
    MAX_JSON_DEPTH,
    MAX_JSON_ELEMENTS,
    ProtocolError,
    json_depth,
    parse_infer_request,
)
from tests.serving.conftest import HeldModel, error_of, http, start_inproc_server

INFER = "/v2/models/vit/infer"


def strict_json(body: bytes) -> object:
    """json.loads that refuses the NaN / Infinity tokens Python would otherwise accept."""

    def refuse(token: str) -> object:
        raise AssertionError(f"response holds bare {token}: not JSON")

    return json.loads(body, parse_constant=refuse)


def tensor_request(x: np.ndarray, datatype: str = "FP32", *, binary: bool = False,
                   outputs_binary: bool | None = None) -> tuple[bytes, dict[str, str]]:
    entry: dict[str, object] = {"name": "pixel_values", "shape": list(x.shape), "datatype": datatype}
    doc: dict[str, object] = {"inputs": [entry]}
    if outputs_binary is not None:
        doc["outputs"] = [{"name": "logits", "parameters": {"binary_data": outputs_binary}}]
    if not binary:
        entry["data"] = x.reshape(-1).tolist()
        return json.dumps(doc).encode(), {}
    raw = np.ascontiguousarray(x).tobytes()
    entry["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps(doc).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


def pixels(batch: int = 1) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((batch, 3, 32, 32)).astype(np.float32)


@pytest.fixture
def inproc(tiny_onnx):
    """An in-process server (so its log is caplog's) for a given ServeConfig; yields its URL."""
    from m2pt_deploy.serving.runtime import OrtModel

    running = []

    def start(model=None, **config):
        model = model or OrtModel("vit", tiny_onnx, providers=["CPUExecutionProvider"])
        url, server, thread = start_inproc_server(model, **config)
        running.append((server, thread))
        return url

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(timeout=20)


def _connect(url: str, timeout: float = 10) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=timeout)


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


# --- NaN and Inf ------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_inputs_are_refused_in_every_float_type(datatype, binary, bad):
    from m2pt_deploy.serving.protocol import DATATYPES

    x = np.zeros((1, 4), DATATYPES[datatype])
    x[0, 2] = bad
    body, headers = tensor_request(x, datatype, binary=binary)
    with pytest.raises(ProtocolError) as info:
        parse_infer_request(body, headers.get("Inference-Header-Content-Length"))
    assert info.value.status == 400 and "\n" not in info.value.message
    assert ("NaN" in info.value.message or "Infinity" in info.value.message)
    got = parse_infer_request(body, headers.get("Inference-Header-Content-Length"),
                              allow_nonfinite=True).inputs["pixel_values"]
    np.testing.assert_array_equal(got, x)


def test_json_numbers_past_fp16_range_are_refused():
    body, _ = tensor_request(np.array([[1e6]]), "FP16")
    with pytest.raises(ProtocolError, match="NaN or Inf values .*past FP16's range"):
        parse_infer_request(body)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_server_refuses_nonfinite_input_with_a_valid_json_400(server, binary):
    x = pixels()
    x[0, 1, 2, 3] = np.nan
    body, headers = tensor_request(x, binary=binary)
    status, _, content = http("POST", f"{server.url}{INFER}", body, headers)
    assert status == 400, content
    assert "NaN" in strict_json(content)["error"]  # type: ignore[index]


def test_nonfinite_outputs_never_make_invalid_json(serve_process, tiny_onnx):
    server = serve_process(str(tiny_onnx), "--allow-nonfinite")
    x = pixels()
    x[0, 0, 0, 0] = np.nan  # accepted with --allow-nonfinite; the ViT's logits turn NaN
    body, headers = tensor_request(x, binary=True, outputs_binary=False)
    status, _, content = http("POST", f"{server.url}{INFER}", body, headers)
    assert status == 500, content
    assert "output 'logits' holds NaN or Inf, which JSON cannot carry" in strict_json(content)["error"]  # type: ignore[index]
    body, headers = tensor_request(x, binary=True, outputs_binary=True)
    status, response_headers, content = http("POST", f"{server.url}{INFER}", body, headers)
    assert status == 200  # binary tensors carry NaN as bytes, as Triton does
    n = int(response_headers["inference-header-content-length"])
    strict_json(content[:n])
    assert np.isnan(np.frombuffer(content[n:], np.float32)).all()


# --- hostile JSON -----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "depth"), [
    (b'{"a": "[[[[{{", "b": [1]}', 2),
    (b'{"a": "\\"[[[", "b": [[1]]}', 3),
    (b'{"a": "\\\\", "b": [[1]]}', 3),
    (b"[[[]]]" * 3, 3),
    (b'"[[["', 0),
])
def test_json_depth_ignores_brackets_inside_strings(text, depth):
    assert json_depth(text, 32) == depth


def test_element_limit_is_decided_before_parsing():
    body = json.dumps({"inputs": [{"name": "x", "shape": [11], "datatype": "FP32",
                                   "data": [0.0] * 11}]}).encode()
    with pytest.raises(ProtocolError, match="more than 10 elements; send large tensors"):
        parse_infer_request(body, max_elements=10)


def test_deep_or_long_json_gets_400_without_a_traceback(inproc, caplog):
    url = inproc()
    caplog.set_level(logging.WARNING)
    deep = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    start = time.monotonic()
    status, _, content = http("POST", f"{url}{INFER}", deep)
    assert status == 400 and time.monotonic() - start < 5
    assert error_of(content) == f"request JSON nests deeper than {MAX_JSON_DEPTH} levels"
    long = b'{"inputs": [{"data": [' + b"0," * MAX_JSON_ELEMENTS + b"0]}]}"
    status, _, content = http("POST", f"{url}{INFER}", long)
    assert status == 400 and f"more than {MAX_JSON_ELEMENTS} elements" in error_of(content)
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    assert http("POST", f"{url}{INFER}", tensor_request(pixels())[0])[0] == 200


def test_readiness_answers_while_large_bodies_are_parsed(inproc):
    url = inproc()
    data = np.random.default_rng(1).standard_normal(1_500_000).astype(np.float32)
    big = json.dumps({"inputs": [{"name": "pixel_values", "shape": [len(data)], "datatype": "FP32",
                                  "data": data.tolist()}]}).encode()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        uploads = [pool.submit(http, "POST", f"{url}{INFER}", big, None, 60) for _ in range(3)]
        slowest = 0.0
        while not all(u.done() for u in uploads):
            start = time.monotonic()
            assert http("GET", f"{url}/v2/health/ready", timeout=10)[0] == 200
            slowest = max(slowest, time.monotonic() - start)
            time.sleep(0.02)
        assert [u.result()[0] for u in uploads] == [400] * 3  # parsed, then the shape is wrong
    assert slowest < 2.0


# --- overload and stalled uploads -------------------------------------------------------------


def test_a_full_queue_refuses_before_the_body_is_sent(inproc, tiny_onnx):
    from m2pt_deploy.serving.runtime import OrtModel

    model = HeldModel(OrtModel("vit", tiny_onnx, providers=["CPUExecutionProvider"]))
    url = inproc(model, max_batch=1, max_delay_ms=0, max_queue=1)
    body = tensor_request(pixels())[0]
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            running = pool.submit(http, "POST", f"{url}{INFER}", body)
            assert model.entered.wait(20)
            queued = pool.submit(http, "POST", f"{url}{INFER}", body)
            deadline = time.monotonic() + 10
            while b'm2pt_queue_depth{model="vit"} 1.0' not in http("GET", f"{url}/metrics")[2]:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            with _connect(url, timeout=5) as sock:  # headers only: the body never comes
                start = time.monotonic()
                sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
                             % INFER.encode())
                head = sock.recv(65536)
                assert time.monotonic() - start < 2
            assert head.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in head.lower()
            model.gate.set()
            assert running.result()[0] == 200 and queued.result()[0] == 200
    finally:
        model.gate.set()


def test_a_stalled_upload_gets_408_and_holds_no_batch_back(inproc):
    url = inproc(max_batch=8, max_delay_ms=200, body_timeout_s=1.0)
    body = tensor_request(pixels())[0]
    with _connect(url) as stalled:
        stalled.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                        % (INFER.encode(), len(body)) + body[: len(body) // 2])
        start = time.monotonic()
        times = []
        for _ in range(5):
            t = time.monotonic()
            assert http("POST", f"{url}{INFER}", body)[0] == 200
            times.append(time.monotonic() - t)
        # a stalled upload is not announced to the batcher, so no one waits the 200 ms for it
        assert max(times) < 0.15, times
        response = _read_all(stalled)  # the server answers and closes: recv ends
        waited = time.monotonic() - start
    assert response.startswith(b"HTTP/1.1 408"), response[:200]
    assert b"connection: close" in response.lower()
    assert b"request body stalled: nothing received for 1 s" in response
    assert 0.5 < waited < 5


def test_the_request_timeout_covers_a_trickling_upload(inproc):
    url = inproc(request_timeout_s=0.5, body_timeout_s=10)
    body = tensor_request(pixels())[0]
    done = threading.Event()

    def trickle(sock: socket.socket) -> None:
        for i in range(50):  # one byte every 0.1 s: never idle, never done
            if done.wait(0.1):
                return
            try:
                sock.sendall(body[i:i + 1])
            except OSError:
                return

    with _connect(url, timeout=5) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                     % (INFER.encode(), len(body)))
        start = time.monotonic()
        sender = threading.Thread(target=trickle, args=(sock,), daemon=True)
        sender.start()
        try:
            response = sock.recv(65536)
            waited = time.monotonic() - start
        finally:
            done.set()
            sender.join(timeout=10)
        # The rest of the 408, then the server closes; a byte sent after it stopped reading may
        # turn that close into a reset, which the client may see before the rest of the body.
        with contextlib.suppress(ConnectionResetError):
            response += _read_all(sock)
    assert response.startswith(b"HTTP/1.1 408"), response[:200]
    assert b"not received within the request timeout of 0.5 s" in response or response.endswith(b"\r\n\r\n")
    assert waited < 3


def test_large_bodies_are_parsed_one_at_a_time_and_small_ones_beside_them() -> None:
    """Three concurrent 60 MB JSON bodies once stacked three parses in RSS (+814 MB): the large
    lane runs them in turn, while a small body's parse does not wait for it."""
    import asyncio
    import threading
    import time as clock

    from m2pt_deploy.serving.core import LARGE_PARSE_BYTES, off_loop

    running, peak, lock = [0], [0], threading.Lock()
    order: list[str] = []

    def work(name: str) -> str:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        clock.sleep(0.15)
        with lock:
            running[0] -= 1
        order.append(name)
        return name

    async def main() -> list[str]:
        large = [off_loop(LARGE_PARSE_BYTES, lambda n=n: work(f"large{n}")) for n in range(3)]
        small = off_loop(1 << 20, lambda: work("small"))
        return await asyncio.gather(*large, small)

    assert asyncio.run(main()) == ["large0", "large1", "large2", "small"]
    assert peak[0] == 2, "one large parse at a time, the small one beside it"
    assert order.index("small") < order.index("large2")
