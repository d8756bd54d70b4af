"""m2pt-serve against a real Triton: the same good and bad requests, over HTTP and gRPC.

The reference is the ``tritonserver`` binary in the ``nvidia-pytriton`` wheel (python backend
only, CPU), serving the same ``model.onnx`` through a python-backend model that runs ONNX
Runtime. Both serve a repository with ``max_batch_size: 4``. Every request's outcome (HTTP status
and body shape, gRPC status code, outputs) must agree, except the differences listed in
``KNOWN_DIFFERENCES``, which docs/serving.md lists with their reasons; the test fails when a
difference appears or disappears.

``make test`` installs the wheel beside the virtualenv (``--no-deps --target .venv/pytriton``: it
pins numpy < 2, which the rest of the project does not use).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc", reason="the differential test needs tritonclient[grpc]",
                    exc_type=ImportError)

import grpc  # noqa: E402
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402

from m2pt_deploy.serving.loadgen import binary_infer_body  # noqa: E402
from tests.serving.conftest import http  # noqa: E402

MAX_BATCH = 4
START_TIMEOUT_S = 45.0
DOCS = Path(__file__).resolve().parents[2] / "docs" / "serving.md"

# case -> (m2pt-serve's outcome, Triton's outcome); docs/serving.md gives each one's reason.
KNOWN_DIFFERENCES: dict[str, tuple[str, str]] = {
    "http malformed json": ("400 error", "500 error"),
    "http data count wrong": ("400 error", "500 error"),
    "http nan input": ("400 error", "200 outputs"),
    "grpc nan input": ("grpc INVALID_ARGUMENT", "grpc OK"),
    "http unknown model ready": ("404 error", "400 error"),
    "http unknown model statistics": ("404 error", "400 error"),
    "grpc unknown model statistics": ("grpc NOT_FOUND", "grpc INVALID_ARGUMENT"),
    "http live": ("200 json", "200 empty"),
    "http ready": ("200 json", "200 empty"),
    "http model ready": ("200 json", "200 empty"),
}


def _tritonserver_root() -> Path | None:
    """The wheel's ``tritonserver`` folder: beside the venv (make test), or an installed pytriton."""
    candidates = [Path(sys.prefix) / "pytriton" / "pytriton" / "tritonserver"]
    spec = importlib.util.find_spec("pytriton")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "tritonserver" for p in spec.submodule_search_locations]
    return next((c for c in candidates if (c / "bin" / "tritonserver").is_file()), None)


ROOT = _tritonserver_root()
pytestmark = pytest.mark.skipif(
    ROOT is None, reason="no tritonserver: make test installs it with pip install --no-deps "
                         "--target .venv/pytriton nvidia-pytriton==0.7.0")

MODEL_PY = '''\
"""Triton python backend model: the ONNX file beside it, in ONNX Runtime."""
import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        # The stub's embedded interpreter ignores PYTHONPATH: the test's site-packages come in here.
        config = json.loads(args["model_config"])
        sys.path.insert(0, config["parameters"]["site_packages"]["string_value"])
        import onnxruntime as ort

        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        # DLPack both ways: this stub's pybind11 numpy path is built for numpy 1, and under numpy 2
        # as_numpy() repeats the first element and Tensor(name, ndarray) comes out empty. An
        # output borrows its array, which must outlive execute (the stub copies it afterwards).
        self.outputs, responses = [], []
        for request in requests:
            x = np.array(np.from_dlpack(pb_utils.get_input_tensor_by_name(request, "pixel_values")))
            (y,) = self.session.run(None, {"pixel_values": x})
            self.outputs.append(y)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor.from_dlpack("logits", y)]))
        return responses
'''


def _config(backend_line: str, extra: str = "") -> str:
    return (f'name: "vit"\n{backend_line}\nmax_batch_size: {MAX_BATCH}\n'
            'input [ { name: "pixel_values" data_type: TYPE_FP32 dims: [ 3, 32, 32 ] } ]\n'
            'output [ { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] } ]\n'
            f'instance_group [ {{ kind: KIND_CPU count: 1 }} ]\n{extra}')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _backend_dir(root: Path, dest: Path) -> Path:
    """Triton's python backend for this interpreter's version, plus numpy for its stub."""
    python = dest / "python"
    python.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        (python / name).symlink_to(root / "backends" / "python" / name)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    (python / stub.name).symlink_to(stub)
    # The stub imports numpy before any model code; its backend folder is on its sys.path.
    numpy_dir = Path(np.__file__).parent
    for sibling in (numpy_dir, numpy_dir.with_name("numpy.libs")):
        if sibling.exists():
            (python / sibling.name).symlink_to(sibling)
    return dest


class Triton:
    """A real tritonserver on 127.0.0.1, free ports; always killed in :meth:`stop`."""

    def __init__(self, root: Path, repo: Path, backends: Path, log: Path) -> None:
        self.http_port, self.grpc_port = _free_port(), _free_port()
        libdir = sysconfig.get_config_var("LIBDIR")
        env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(
            [libdir, str(root.parent.parent / "nvidia_pytriton.libs"), os.environ.get("LD_LIBRARY_PATH", "")])}
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(root / "bin" / "tritonserver"), f"--model-repository={repo}",
                 f"--backend-directory={backends}", "--model-control-mode=none",
                 "--allow-metrics=false", "--allow-sagemaker=false", "--allow-vertex-ai=false",
                 "--http-address=127.0.0.1", f"--http-port={self.http_port}",
                 "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
                 "--exit-timeout-secs=5", "--log-verbose=0"],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(OSError):
                if http("GET", f"{self.url}/v2/health/ready", timeout=2)[0] == 200:
                    return
            time.sleep(0.2)
        self.stop()
        tail = self.log.read_text(errors="replace").splitlines()[-25:]
        raise RuntimeError("tritonserver did not become ready:\n" + "\n".join(tail))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def repositories(tmp_path_factory, tiny_onnx) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("differential")
    site = Path(np.__file__).parent.parent
    triton_repo, ours = root / "triton", root / "m2pt"
    for repo, config in (
        (triton_repo, _config('backend: "python"',
                              f'parameters: {{ key: "site_packages" value: {{ string_value: "{site}" }} }}\n')),
        (ours, _config('platform: "onnxruntime_onnx"')),
    ):
        (repo / "vit" / "1").mkdir(parents=True)
        (repo / "vit" / "config.pbtxt").write_text(config)
        shutil.copy(tiny_onnx, repo / "vit" / "1" / "model.onnx")
    (triton_repo / "vit" / "1" / "model.py").write_text(MODEL_PY)
    return triton_repo, ours


@pytest.fixture(scope="module")
def triton(repositories, tmp_path_factory) -> Iterator[Triton]:
    assert ROOT is not None
    root = tmp_path_factory.mktemp("triton")
    server = Triton(ROOT, repositories[0], _backend_dir(ROOT, root / "backends"), root / "triton.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def both(triton, repositories, serve_process):
    """m2pt-serve started while Triton loads its model, then Triton waited for."""
    ours = serve_process(str(repositories[1]), "--max-batch", "8")
    start = time.monotonic()
    triton.wait_ready()
    print(f"tritonserver ready {time.monotonic() - start:.1f} s after m2pt-serve")
    return ours, triton


# ---- the requests -------------------------------------------------------------------------

def _pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def _http_outcome(status: int, headers: dict[str, str], body: bytes) -> tuple[str, np.ndarray | None]:
    """``"<status> <shape>"``: ``error`` for ``{"error": str}``, ``outputs`` for an infer
    response, ``empty``; and the logits when there are any."""
    if not body:
        return f"{status} empty", None
    header_length = headers.get("inference-header-content-length")
    head = body[:int(header_length)] if header_length else body
    try:
        doc = json.loads(head)
    except ValueError:
        return f"{status} not-json", None
    if isinstance(doc, dict) and set(doc) == {"error"} and isinstance(doc["error"], str) and doc["error"]:
        return f"{status} error", None
    if isinstance(doc, dict) and "outputs" in doc:
        out = doc["outputs"][0]
        if "data" in out:
            logits = np.asarray(out["data"], np.float32).reshape(out["shape"])
        else:
            logits = np.frombuffer(body[int(header_length or 0):], "<f4").reshape(out["shape"])
        return f"{status} outputs", logits
    return f"{status} json", None


def _json_body(x: np.ndarray, name: str = "pixel_values", datatype: str = "FP32", **extra) -> bytes:
    return json.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": datatype,
                                   "data": x.ravel().tolist()}], **extra}).encode()


def _infer_http(body: bytes, headers: dict[str, str] | None = None, model: str = "vit"):
    def send(url: str, target: str) -> tuple[str, np.ndarray | None]:
        return _http_outcome(*http("POST", f"{url}/v2/models/{model}/infer", body, headers or {}))
    return send


def _binary(x: np.ndarray, cut: int = 0):
    body, headers = binary_infer_body({"pixel_values": x}, {"pixel_values": "FP32"})
    return _infer_http(body[:len(body) - cut], headers)


def _get(path: str):
    def send(url: str, target: str) -> tuple[str, np.ndarray | None]:
        status, headers, body = http("GET", f"{url}{path}")
        return _http_outcome(status, headers, body)
    return send


def _post(path: str, body: bytes):
    def send(url: str, target: str) -> tuple[str, np.ndarray | None]:
        status, headers, answer = http("POST", f"{url}{path}", body, {"Content-Type": "application/json"})
        return _http_outcome(status, headers, answer)
    return send


def _grpc_infer(x: np.ndarray, *, model: str = "vit", datatype: str = "FP32", name: str = "pixel_values",
                shape: list[int] | None = None, output: str | None = None, cut: int = 0):
    def send(url: str, target: str) -> tuple[str, np.ndarray | None]:
        request = service_pb2.ModelInferRequest(model_name=model)
        request.inputs.add(name=name, datatype=datatype, shape=shape or list(x.shape))
        if output:
            request.outputs.add(name=output)
        raw = x.tobytes()
        request.raw_input_contents.append(raw[:len(raw) - cut])
        with grpc.insecure_channel(target) as channel:
            try:
                response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=20)
            except grpc.RpcError as e:
                return f"grpc {e.code().name}{'' if e.details() else ' no-details'}", None
        logits = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(response.outputs[0].shape)
        return "grpc OK", logits
    return send


def _grpc_call(method: str, request) -> Callable[[str, str], tuple[str, np.ndarray | None]]:
    def send(url: str, target: str) -> tuple[str, np.ndarray | None]:
        with grpc.insecure_channel(target) as channel:
            try:
                response = getattr(service_pb2_grpc.GRPCInferenceServiceStub(channel), method)(request, timeout=20)
            except grpc.RpcError as e:
                return f"grpc {e.code().name}", None
        fields = {f.name: v for f, v in response.ListFields()}
        return "grpc OK " + " ".join(f"{k}={v}" for k, v in sorted(fields.items()) if k in ("live", "ready")), None
    return send


NAN = np.full((1, 3, 32, 32), np.nan, np.float32)
CASES: dict[str, Callable[[str, str], tuple[str, np.ndarray | None]]] = {
    # good requests
    "http live": _get("/v2/health/live"),
    "http ready": _get("/v2/health/ready"),
    "http model ready": _get("/v2/models/vit/ready"),
    "http infer json": _infer_http(_json_body(_pixels(2, 1))),
    "http infer binary": _binary(_pixels(3, 2)),
    "http infer max batch": _binary(_pixels(MAX_BATCH, 3)),
    "grpc live": _grpc_call("ServerLive", service_pb2.ServerLiveRequest()),
    "grpc ready": _grpc_call("ServerReady", service_pb2.ServerReadyRequest()),
    "grpc model ready": _grpc_call("ModelReady", service_pb2.ModelReadyRequest(name="vit")),
    "grpc infer raw": _grpc_infer(_pixels(2, 4)),
    "grpc infer max batch": _grpc_infer(_pixels(MAX_BATCH, 5)),
    # bad requests
    "http unknown model": _infer_http(_json_body(_pixels(1)), model="nope"),
    "http unknown model metadata": _get("/v2/models/nope"),
    "http unknown model ready": _get("/v2/models/nope/ready"),
    "http statistics": _get("/v2/models/vit/stats"),
    "http all statistics": _get("/v2/models/stats"),
    "http unknown model statistics": _get("/v2/models/nope/stats"),
    "http repository index": _post("/v2/repository/index", b"{}"),
    "http wrong shape": _infer_http(_json_body(_pixels(1)[:, :, :16])),
    "http wrong datatype": _infer_http(_json_body(_pixels(1).astype(np.float64), datatype="FP64")),
    "http wrong input name": _infer_http(_json_body(_pixels(1), name="x")),
    "http too many rows": _binary(_pixels(MAX_BATCH + 1)),
    "http malformed json": _infer_http(b'{"inputs": [ '),
    "http data count wrong": _infer_http(json.dumps({"inputs": [{
        "name": "pixel_values", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [1.0, 2.0]}]}).encode()),
    "http binary truncated": _binary(_pixels(1), cut=8),
    "http unknown output": _infer_http(_json_body(_pixels(1), outputs=[{"name": "probs"}])),
    "http nan input": _binary(NAN),
    "grpc unknown model": _grpc_infer(_pixels(1), model="nope"),
    "grpc unknown model metadata": _grpc_call("ModelMetadata", service_pb2.ModelMetadataRequest(name="nope")),
    "grpc unknown model ready": _grpc_call("ModelReady", service_pb2.ModelReadyRequest(name="nope")),
    "grpc statistics": _grpc_call("ModelStatistics", service_pb2.ModelStatisticsRequest(name="vit")),
    "grpc unknown model statistics": _grpc_call("ModelStatistics", service_pb2.ModelStatisticsRequest(name="nope")),
    "grpc repository index": _grpc_call("RepositoryIndex", service_pb2.RepositoryIndexRequest()),
    "grpc wrong shape": _grpc_infer(_pixels(1), shape=[1, 3, 16, 64]),
    "grpc wrong datatype": _grpc_infer(_pixels(1).view(np.int32), datatype="INT32"),
    "grpc wrong input name": _grpc_infer(_pixels(1), name="x"),
    "grpc too many rows": _grpc_infer(_pixels(MAX_BATCH + 1)),
    "grpc raw truncated": _grpc_infer(_pixels(1), cut=8),
    "grpc unknown output": _grpc_infer(_pixels(1), output="probs"),
    "grpc nan input": _grpc_infer(NAN),
}


@pytest.fixture(scope="module")
def outcomes(both) -> dict[str, tuple[tuple[str, np.ndarray | None], tuple[str, np.ndarray | None]]]:
    ours, triton = both
    assert ours.grpc_target is not None
    return {case: (send(ours.url, ours.grpc_target), send(triton.url, triton.grpc_target))
            for case, send in CASES.items()}


def test_status_codes_and_error_shapes_agree_but_for_the_listed_differences(outcomes):
    differ = {case: (mine[0], theirs[0]) for case, (mine, theirs) in outcomes.items()
              if mine[0] != theirs[0]}
    table = "\n".join(f"{case}: m2pt-serve {m!r}, Triton {t!r}" for case, (m, t) in sorted(differ.items()))
    assert differ == KNOWN_DIFFERENCES, "observed differences:\n" + table


def test_outputs_agree(outcomes, reference_session):
    compared, differ = 0, []
    for case, ((_, mine), (_, theirs)) in outcomes.items():
        if mine is None or theirs is None:
            continue
        # Both run ONNX Runtime on the same file; thread counts differ, so summation order may.
        if mine.shape != theirs.shape or not np.allclose(mine, theirs, rtol=1e-5, atol=1e-6):
            gap = np.abs(mine - theirs).max() if mine.shape == theirs.shape else "shape"
            differ.append(f"{case}: max |diff| {gap}")
        compared += 1
    assert differ == [], differ
    assert compared == 5
    _, logits = outcomes["grpc infer raw"][0]
    np.testing.assert_array_equal(logits, reference_session.run(None, {"pixel_values": _pixels(2, 4)})[0])


def test_metadata_and_config_agree(both):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    def described(url: str, target: str) -> list[dict]:
        with httpclient.InferenceServerClient(url.removeprefix("http://")) as h, \
                grpcclient.InferenceServerClient(target) as g:
            over_grpc = g.get_model_metadata("vit", as_json=True)
            over_grpc = {k: over_grpc[k] for k in ("name", "versions", "inputs", "outputs")}
            for tensor in (*over_grpc["inputs"], *over_grpc["outputs"]):
                tensor["shape"] = [int(d) for d in tensor["shape"]]
            over_http = {k: h.get_model_metadata("vit")[k] for k in ("name", "versions", "inputs", "outputs")}
            config = g.get_model_config("vit").config
            shape = {"max_batch_size": config.max_batch_size,
                     "input": [(t.name, t.data_type, list(t.dims)) for t in config.input],
                     "output": [(t.name, t.data_type, list(t.dims)) for t in config.output]}
            return [over_http, over_grpc, shape]

    ours, triton = both
    mine, theirs = described(ours.url, ours.grpc_target), described(triton.url, triton.grpc_target)
    assert mine == theirs
    assert mine[2]["max_batch_size"] == MAX_BATCH


def _shape_of(doc):
    """The key structure of a JSON document: what a schema fixes, not the values."""
    if isinstance(doc, dict):
        return {k: _shape_of(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_shape_of(doc[0])] if doc else []
    return type(doc).__name__


def test_statistics_and_repository_index_have_tritons_schema(both):
    """After the same inference on each, both answer the statistics and the index alike."""
    import tritonclient.http as httpclient

    answers = []
    for server in both:
        with httpclient.InferenceServerClient(server.url.removeprefix("http://")) as client:
            x = httpclient.InferInput("pixel_values", [1, 3, 32, 32], "FP32")
            x.set_data_from_numpy(_pixels(1))
            client.infer("vit", [x])
            (stats,) = client.get_inference_statistics("vit")["model_stats"]
            answers.append((stats, client.get_model_repository_index()))
    (mine, my_index), (theirs, their_index) = answers
    assert _shape_of(mine) == _shape_of(theirs)
    assert {k: mine[k] for k in ("name", "version")} == {k: theirs[k] for k in ("name", "version")}
    assert mine["batch_stats"][0]["batch_size"] == theirs["batch_stats"][0]["batch_size"] == 1
    assert my_index == their_index == [{"name": "vit", "version": "1", "state": "READY"}]


def test_docs_list_every_known_difference():
    text = DOCS.read_text()
    section = text[text.index("### Differences from Triton"):]
    for case in KNOWN_DIFFERENCES:
        assert f"| {case} |" in section, case
