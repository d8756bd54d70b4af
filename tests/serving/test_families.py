"""Video and point-cloud models served by m2pt-serve over KServe v2 (HTTP and gRPC, unmodified
tritonclient): outputs equal to ONNX Runtime run directly; /classify stays image-only and says so."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from m2pt_deploy.families import get_family
from m2pt_deploy.pipelines.export import export_onnx
from m2pt_deploy.runtime.sessions import cpu_session
from m2pt_deploy.serving.runtime import OrtModel
from tests.families.point_formats import point_mae_builder
from tests.families.video_formats import write_videomae_checkpoint
from tests.serving.conftest import error_of, http, start_inproc_servers
from tests.tiny import POINT_OPTIONS

httpclient = pytest.importorskip("tritonclient.http", reason="the serving tests need tritonclient[http]")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="the gRPC tests need tritonclient[grpc]")
# Each input named for what it holds; the server serves whatever name the graph declares.
INPUT_NAMES = {"video": "pixel_values", "points": "points"}


def _export(kind: str, root: Path) -> Path:
    if kind == "video":
        ckpt = write_videomae_checkpoint(root / "checkpoint-34.pth", prefix="module.").path
        result = export_onnx(ckpt, root / "video.onnx", verify=False)
    else:
        ckpt = point_mae_builder(root).path
        result = export_onnx(ckpt, root / "points.onnx", verify=False, model={"options": POINT_OPTIONS})
    return result.files[0]


@pytest.fixture(scope="module", params=["video", "points"])
def served(request, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, str, str]]:
    path = _export(request.param, tmp_path_factory.mktemp(request.param))
    url, target, server, thread = start_inproc_servers(OrtModel("vit", path, providers=["CPUExecutionProvider"]))
    yield request.param, path, url, target
    server.should_exit = True
    thread.join(timeout=10)


def _inputs(kind: str, path: Path, rows: int) -> np.ndarray:
    session = cpu_session(path)
    shape = [d if isinstance(d, int) else rows for d in session.get_inputs()[0].shape]
    rng = np.random.default_rng(rows)
    # Points without ties (farthest-point sampling and KNN pick the same neighbours everywhere).
    x = rng.uniform(-1, 1, shape) if kind == "points" else rng.standard_normal(shape)
    return x.astype(np.float32)


@pytest.mark.parametrize("rows", [1, 3])
def test_http_and_grpc_outputs_equal_onnxruntime(served, rows: int) -> None:
    kind, path, url, target = served
    x = _inputs(kind, path, rows)
    name = INPUT_NAMES[kind]
    want = cpu_session(path).run(None, {name: x})[0]
    with httpclient.InferenceServerClient(url.removeprefix("http://")) as c:
        tensor = httpclient.InferInput(name, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        got_http = c.infer("vit", [tensor]).as_numpy("logits")
    with grpcclient.InferenceServerClient(target) as c:
        tensor = grpcclient.InferInput(name, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        got_grpc = c.infer("vit", [tensor]).as_numpy("logits")
    np.testing.assert_array_equal(got_http, want)
    np.testing.assert_array_equal(got_grpc, want)


def test_metadata_shows_the_input_layout(served) -> None:
    kind, _, url, _ = served
    with httpclient.InferenceServerClient(url.removeprefix("http://")) as c:
        meta = c.get_model_metadata("vit")
    shape = meta["inputs"][0]["shape"]
    assert meta["inputs"][0]["name"] == INPUT_NAMES[kind]
    assert [int(s) for s in shape[1:]] == ([3, 4, 32, 32] if kind == "video" else [128, 3])


def test_classify_is_for_images_and_says_what_to_send(served) -> None:
    kind, _, url, _ = served
    status, _, body = http("POST", f"{url}/v2/models/vit/classify", b"\x89PNG\r\n\x1a\n")
    modality = get_family("videomae" if kind == "video" else "pointmae").modality
    assert status == 400
    assert f"takes {modality}" in error_of(body) and "/infer" in error_of(body)
