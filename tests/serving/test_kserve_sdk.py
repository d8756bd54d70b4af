"""Open Inference Protocol conformance with KServe's own SDK, REST and gRPC, beside tritonclient:
health, inference (JSON and binary tensors), errors, and the statistics that count it.

KServe 0.21 pins its own dependencies (fastapi, pydantic, kubernetes, a protobuf build of the
``inference.*`` messages that clashes with tritonclient's), so ``make test`` installs it apart,
``pip install --target .venv/kserve kserve==0.21.0``, and the SDK runs in a child process with that
folder first on its path (``kserve_sdk_probe.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

KSERVE_DIR = Path(sys.prefix) / "kserve"
PROBE = Path(__file__).with_name("kserve_sdk_probe.py")

pytestmark = pytest.mark.skipif(
    not (KSERVE_DIR / "kserve" / "__init__.py").is_file(),
    reason=f"KServe's SDK is not installed at {KSERVE_DIR} (make test installs it: "
           "pip install --target .venv/kserve kserve==0.21.0)")


@pytest.fixture(scope="module")
def probe(server, reference_session, tmp_path_factory):
    """One run of the probe against the shared server: what it saw, its outputs, the reference."""
    import tritonclient.http as httpclient

    root = tmp_path_factory.mktemp("kserve")
    x = np.random.default_rng(5).standard_normal((3, 3, 32, 32)).astype(np.float32)
    np.savez(root / "in.npz", x=x)
    with httpclient.InferenceServerClient(server.host_port) as triton:
        (before,) = triton.get_inference_statistics("vit")["model_stats"]
        done = subprocess.run(
            [sys.executable, str(PROBE), server.url, server.grpc_target, str(root / "in.npz"),
             str(root / "out.npz")],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": str(KSERVE_DIR)})
        assert done.returncode == 0, done.stderr[-3000:]
        (after,) = triton.get_inference_statistics("vit")["model_stats"]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    with np.load(root / "out.npz") as outputs:
        arrays = dict(outputs)
    return seen, arrays, reference_session.run(None, {"pixel_values": x})[0], before, after


def test_the_sdk_is_kserves_own(probe):
    seen, *_ = probe
    assert Path(seen["kserve"]).is_relative_to(KSERVE_DIR)


def test_health_over_rest_and_grpc(probe):
    seen, *_ = probe
    assert {k: seen[k] for k in ("rest_live", "rest_ready", "rest_model_ready", "grpc_live",
                                 "grpc_ready", "grpc_model_ready")} == dict.fromkeys(
        ("rest_live", "rest_ready", "rest_model_ready", "grpc_live", "grpc_ready", "grpc_model_ready"),
        True)
    assert seen["rest_unknown_model_ready"] is False


@pytest.mark.parametrize("kind", ["rest_json", "rest_binary", "grpc"])
def test_inference_is_bit_identical_to_onnxruntime(probe, kind):
    seen, arrays, want, *_ = probe
    got = arrays[kind]
    assert got.dtype == np.float32 and got.shape == (3, 10)
    np.testing.assert_array_equal(got, want)
    if kind != "grpc":
        assert seen[f"{kind}_model"] == "vit" and seen[f"{kind}_id"] == "kserve-probe"
    else:
        assert seen["grpc_model"] == "vit"


def test_errors_reach_the_sdk_as_protocol_codes(probe):
    seen, *_ = probe
    status, message = seen["rest_unknown_model"]
    assert status == 404 and "unknown model 'nope'; serving vit" in message
    status, message = seen["rest_bad_shape"]
    assert status == 400 and "input 'pixel_values': shape [3, 3, 16, 32], the model takes" in message
    assert seen["grpc_unknown_model"] == ["NOT_FOUND", "unknown model 'nope'; serving vit"]
    code, message = seen["grpc_bad_shape"]
    assert code == "INVALID_ARGUMENT" and "shape [3, 3, 16, 32]" in message


def test_statistics_count_what_the_sdk_sent(probe):
    """Three good inferences of three rows (REST JSON, REST binary, gRPC) and two refusals."""
    *_, before, after = probe

    def delta(kind: str) -> int:
        return after["inference_stats"][kind]["count"] - before["inference_stats"][kind]["count"]

    assert (delta("success"), delta("fail")) == (3, 2)
    assert after["inference_count"] - before["inference_count"] == 9


def test_inference_service_manifests_fit_kserves_models(tmp_path, tiny_onnx):
    from m2pt_deploy.export.triton import write_triton_repository

    cpu = write_triton_repository(tiny_onnx, tmp_path / "repo", name="vit_cpu",
                                  storage_uri="s3://bucket/models") / "inferenceservice.yaml"
    gpu = write_triton_repository(tiny_onnx, tmp_path / "repo", name="Vit.GPU_1", instance_kind="KIND_GPU",
                                  storage_uri="gs://bucket/models") / "inferenceservice.yaml"
    # a negative control: the check must be able to fail
    typo = tmp_path / "typo.yaml"
    typo.write_text(cpu.read_text().replace("storageUri", "storageURI").replace('"v2"', "2"))
    done = subprocess.run([sys.executable, str(PROBE), "--isvc", str(cpu), str(gpu), str(typo)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(KSERVE_DIR)})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report[str(cpu)] == [] and report[str(gpu)] == []
    assert report[str(typo)] == [
        "InferenceService.spec.predictor.model.protocolVersion: 2 is not str",
        "InferenceService.spec.predictor.model.storageURI: not a field of V1beta1ModelSpec"]
