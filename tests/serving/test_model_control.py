"""Explicit model control (Triton's ``--model-control-mode explicit``): a repository of two models,
one loaded at start, the other loaded, reloaded at a new version and unloaded by clients."""

from __future__ import annotations

import json

import numpy as np
import pytest

grpcclient = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc]", exc_type=ImportError)

import tritonclient.http as httpclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from m2pt_deploy.export.triton import write_triton_repository  # noqa: E402
from tests.serving.conftest import error_of, http  # noqa: E402


@pytest.fixture(scope="module")
def repository(tmp_path_factory, tiny_onnx):
    repo = tmp_path_factory.mktemp("control") / "models"
    for name in ("vit_a", "vit_b"):
        write_triton_repository(tiny_onnx, repo, name=name, max_batch=4)
    return repo


@pytest.fixture(scope="module")
def explicit(serve_process, repository):
    return serve_process(str(repository), "--model-control-mode", "explicit", "--load-model", "vit_a")


def _x(rows: int = 2) -> np.ndarray:
    return np.random.default_rng(rows).standard_normal((rows, 3, 32, 32)).astype(np.float32)


def _infer(client, module, model: str):
    tensor = module.InferInput("pixel_values", [2, 3, 32, 32], "FP32")
    tensor.set_data_from_numpy(_x())
    return client.infer(model, [tensor]).as_numpy("logits")


def test_clients_load_reload_and_unload_models(explicit, repository, tiny_onnx, reference_session):
    assert any(line.endswith("2 models, 1 loaded (explicit model control)") for line in explicit.banner)
    want = reference_session.run(None, {"pixel_values": _x()})[0]
    with httpclient.InferenceServerClient(explicit.host_port) as h, \
            grpcclient.InferenceServerClient(explicit.grpc_target) as g:
        assert h.get_model_repository_index() == [
            {"name": "vit_a", "version": "1", "state": "READY"},
            {"name": "vit_b", "state": "UNAVAILABLE", "reason": "unloaded"}]
        assert not h.is_model_ready("vit_b")
        status, _, body = http("GET", f"{explicit.url}/v2/models/vit_b")
        assert (status, error_of(body)) == (404, "unknown model 'vit_b'; serving vit_a")

        h.load_model("vit_b")  # over HTTP
        assert h.is_model_ready("vit_b") and g.is_model_ready("vit_b")
        np.testing.assert_array_equal(_infer(g, grpcclient, "vit_b"), want)
        assert h.get_model_repository_index()[1] == {"name": "vit_b", "version": "1", "state": "READY"}

        # a new version written into the repository is what the next load serves
        write_triton_repository(tiny_onnx, repository, name="vit_b", max_batch=4, version=2, force=True)
        g.load_model("vit_b")  # over gRPC
        assert h.get_model_metadata("vit_b")["versions"] == ["2"]
        np.testing.assert_array_equal(_infer(h, httpclient, "vit_b"), want)
        (stats,) = h.get_inference_statistics("vit_b")["model_stats"]
        assert stats["version"] == "2" and stats["inference_stats"]["success"]["count"] == 1

        g.unload_model("vit_a")
        with pytest.raises(InferenceServerException) as info:
            _infer(g, grpcclient, "vit_a")
        assert info.value.status() == "StatusCode.NOT_FOUND"
        assert not h.is_model_ready("vit_a")
        assert h.get_model_repository_index()[0] == {"name": "vit_a", "state": "UNAVAILABLE", "reason": "unloaded"}
        g.unload_model("vit_a")  # unloading what is not loaded does nothing, as in Triton
        _, _, metrics = http("GET", f"{explicit.url}/metrics")
        assert b'm2pt_queue_depth{model="vit_a"}' not in metrics
        assert b'm2pt_queue_depth{model="vit_b"}' in metrics


def test_control_refusals(explicit):
    status, _, body = http("POST", f"{explicit.url}/v2/repository/models/nope/load")
    assert (status, error_of(body)) == (404, "no model 'nope' in the repository; it holds vit_a, vit_b")
    with grpcclient.InferenceServerClient(explicit.grpc_target) as g:
        with pytest.raises(InferenceServerException) as info:
            g.unload_model("nope")
        assert info.value.status() == "StatusCode.NOT_FOUND"
    with httpclient.InferenceServerClient(explicit.host_port) as h, \
            pytest.raises(InferenceServerException, match="parameter 'config' is not supported"):
        h.load_model("vit_a", config=json.dumps({"max_batch_size": 2}))
