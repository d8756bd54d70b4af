"""Open Inference Protocol health bodies, the statistics and repository extensions, and metrics
labels, over HTTP and gRPC with Triton's own clients."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

grpcclient = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc]", exc_type=ImportError)

import grpc  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.serving.conftest import error_of, http  # noqa: E402

SERVING = Path(__file__).parents[2] / "m2pt_deploy" / "serving"


def pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def clients(server):
    h = httpclient.InferenceServerClient(server.host_port)
    with grpcclient.InferenceServerClient(server.grpc_target) as g:
        yield h, g
    h.close()


def _infer(client, module, x: np.ndarray, **kwargs):
    tensor = module.InferInput("pixel_values", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, **kwargs) if module is httpclient else tensor.set_data_from_numpy(x)
    return client.infer("vit", [tensor])


def test_health_answers_are_json_objects_and_triton_still_reads_them(server, clients):
    for path, doc in (("/v2/health/live", {"live": True}), ("/v2/health/ready", {"ready": True}),
                      ("/v2/models/vit/ready", {"name": "vit", "ready": True}),
                      ("/v2/models/vit/versions/1/ready", {"name": "vit", "ready": True})):
        status, headers, body = http("GET", f"{server.url}{path}")
        assert (status, headers["content-type"], json.loads(body)) == (200, "application/json", doc), path
    h, _ = clients
    assert h.is_server_live() and h.is_server_ready() and h.is_model_ready("vit")
    assert not h.is_model_ready("nope")


def _stats(client, model: str = "vit") -> dict:
    """One model's statistics as Triton's HTTP JSON, from either client."""
    if isinstance(client, httpclient.InferenceServerClient):
        (entry,) = client.get_inference_statistics(model)["model_stats"]
        return entry
    message = client.get_inference_statistics(model)
    doc = json_format.MessageToDict(message, preserving_proto_field_name=True)
    (entry,) = doc["model_stats"]
    return entry


def _count(stats: dict, kind: str) -> int:
    # proto3 JSON writes uint64 as strings and leaves zero values out
    return int(stats["inference_stats"].get(kind, {}).get("count", 0))


def _ns(stats: dict, kind: str) -> int:
    return int(stats["inference_stats"].get(kind, {}).get("ns", 0))


def test_statistics_count_inferences_over_both_protocols(clients):
    h, g = clients
    before = _stats(h)
    for rows in (1, 2, 1):
        _infer(h, httpclient, pixels(rows, seed=rows))
    _infer(h, httpclient, pixels(2, seed=9), binary_data=False)  # JSON tensors count the same
    for rows in (1, 3):
        _infer(g, grpcclient, pixels(rows, seed=rows))
    for client, module in ((h, httpclient), (g, grpcclient)):
        with pytest.raises(InferenceServerException):
            _infer(client, module, np.zeros((1, 3, 16, 64), np.float32))  # refused: a failure
    over_http, over_grpc = _stats(h), _stats(g)
    for after in (over_http, over_grpc):
        assert after["name"] == "vit" and after["version"] == "1"
        assert _count(after, "success") - _count(before, "success") == 6
        assert _count(after, "fail") - _count(before, "fail") == 2
        assert int(after["inference_count"]) - int(before["inference_count"]) == 10  # rows
        calls = int(after["execution_count"]) - int(before["execution_count"])
        assert 1 <= calls <= 6
        for kind in ("queue", "compute_input", "compute_infer", "compute_output"):
            assert _count(after, kind) - _count(before, kind) == 6, kind  # once per request
        assert _ns(after, "compute_infer") > _ns(before, "compute_infer")
        assert _ns(after, "success") > _ns(before, "success")
        assert int(after["last_inference"]) >= max(int(before["last_inference"]), 1)
        batches = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in after["batch_stats"]}
        assert sum(batches.values()) == int(after["execution_count"])
    # nothing ran between the two reads, so both protocols report the same numbers
    assert {k: over_grpc[k] for k in ("inference_count", "execution_count")} == {
        k: str(over_http[k]) for k in ("inference_count", "execution_count")}


def test_statistics_routes_and_refusals(server, clients):
    h, g = clients
    every = h.get_inference_statistics()["model_stats"]
    assert [m["name"] for m in every] == ["vit"]
    assert [m.name for m in g.get_inference_statistics().model_stats] == ["vit"]
    status, _, body = http("GET", f"{server.url}/v2/models/vit/versions/1/stats")
    assert status == 200 and json.loads(body)["model_stats"][0]["version"] == "1"
    status, _, body = http("GET", f"{server.url}/v2/models/vit/versions/7/stats")
    assert (status, error_of(body)) == (404, "model 'vit' has no version '7'; serving version 1")
    status, _, body = http("GET", f"{server.url}/v2/models/nope/stats")
    assert (status, error_of(body)) == (404, "unknown model 'nope'; serving vit")
    with pytest.raises(InferenceServerException) as info:
        g.get_inference_statistics("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"


def test_repository_index_and_model_control(server, clients):
    h, g = clients
    want = [{"name": "vit", "version": "1", "state": "READY"}]  # no "reason" when none, as Triton
    assert h.get_model_repository_index() == want
    assert json_format.MessageToDict(g.get_model_repository_index(), preserving_proto_field_name=True) == {
        "models": [{"name": "vit", "version": "1", "state": "READY"}]}
    status, _, body = http("POST", f"{server.url}/v2/repository/index", b'{"ready": true}')
    assert status == 200 and json.loads(body) == want
    status, _, body = http("POST", f"{server.url}/v2/repository/index", b'{"ready": 1}')
    assert status == 400 and "'ready' a boolean" in error_of(body)
    with pytest.raises(InferenceServerException, match="explicit model load is not supported"):
        h.load_model("vit")
    for call in (g.load_model, g.unload_model):
        with pytest.raises(InferenceServerException) as info:
            call("vit")
        assert info.value.status() == "StatusCode.UNIMPLEMENTED"
        assert "is not supported: m2pt-serve loaded every model at start" in info.value.message()
    server_meta = h.get_server_metadata()
    assert {"statistics", "model_repository"} <= set(server_meta["extensions"])
    assert list(g.get_server_metadata().extensions) == server_meta["extensions"]


def _metric(server, sample: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    _, _, body = http("GET", f"{server.url}/metrics")
    return sum(s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples
               if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_name_the_model_over_grpc_and_count_unknown_calls(server, clients):
    _, g = clients
    grpc_calls = {"metadata": g.get_model_metadata, "config": g.get_model_config,
                  "model_ready": g.is_model_ready, "statistics": g.get_inference_statistics}
    before = {e: _metric(server, "m2pt_requests_total", model="vit", endpoint=e, protocol="grpc")
              for e in grpc_calls}
    for call in grpc_calls.values():
        call("vit")
    assert {e: _metric(server, "m2pt_requests_total", model="vit", endpoint=e, protocol="grpc") - n
            for e, n in before.items()} == dict.fromkeys(grpc_calls, 1)

    unknown = dict(model="", endpoint="unknown", protocol="http", code="404")
    shm = dict(model="", endpoint="system_shared_memory_status", protocol="grpc", code="UNIMPLEMENTED")
    stray = dict(model="", endpoint="unknown", protocol="grpc", code="UNIMPLEMENTED")
    counted = [_metric(server, "m2pt_requests_total", **labels) for labels in (unknown, shm, stray)]
    assert http("GET", f"{server.url}/v2/no/such/route")[0] == 404
    with pytest.raises(InferenceServerException) as info:
        g.get_system_shared_memory_status()
    assert info.value.message() == "SystemSharedMemoryStatus is not implemented by m2pt-serve"
    with grpc.insecure_channel(server.grpc_target) as channel:
        with pytest.raises(grpc.RpcError) as rpc:
            channel.unary_unary("/inference.Nope/Missing")(b"", timeout=10)
        assert rpc.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert [_metric(server, "m2pt_requests_total", **labels) - n
            for labels, n in zip((unknown, shm, stray), counted, strict=True)] == [1, 1, 1]
    assert _metric(server, "m2pt_request_errors_total", **unknown) >= 1


def _serving_imports(name: str) -> set[str]:
    tree = ast.parse((SERVING / f"{name}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("m2pt_deploy.serving."):
            found.add(node.module.rsplit(".", 1)[-1])
    return found


def test_front_ends_share_the_core_and_never_import_each_other():
    http_imports, grpc_imports = _serving_imports("app"), _serving_imports("grpc_service")
    assert "core" in http_imports and "core" in grpc_imports
    assert "grpc_service" not in http_imports and "app" not in grpc_imports
    assert not _serving_imports("core") & {"app", "grpc_service", "server"}
