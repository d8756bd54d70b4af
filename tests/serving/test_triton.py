"""Triton model repositories: parsed with Triton's own schema, then served by m2pt-serve."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from m2pt_deploy.cli.common import EXIT_BAD_INPUT
from m2pt_deploy.errors import M2ptError
from m2pt_deploy.export.triton import write_triton_repository
from tests.serving.conftest import LABELS, error_of, http

tritonclient = pytest.importorskip("tritonclient", reason="needs tritonclient for Triton's schema")


def triton_schema():
    """``model_config_pb2`` as shipped in tritonclient, loaded without its gRPC package."""
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_config(model_dir: Path):
    from google.protobuf import text_format

    pb2 = triton_schema()
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), pb2.ModelConfig()), pb2


def test_repository_config_parses_with_tritons_schema(tmp_path, tiny_onnx):
    model_dir = write_triton_repository(tiny_onnx, tmp_path / "repo", name="vit", max_batch=16,
                                        max_queue_delay_us=500, preferred_batch_sizes=(4, 8),
                                        instance_count=2)
    config, pb2 = parse_config(model_dir)
    assert config.name == "vit" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 16
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("pixel_values", pb2.TYPE_FP32, [3, 32, 32])]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("logits", pb2.TYPE_FP32, [10])]
    assert config.output[0].label_filename == "labels.txt"
    assert (model_dir / "labels.txt").read_text().splitlines() == LABELS
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, pb2.ModelInstanceGroup.KIND_CPU)]
    assert not config.optimization.execution_accelerators.gpu_execution_accelerator
    assert (model_dir / "1" / "model.onnx").read_bytes() == tiny_onnx.read_bytes()
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["vit"]


def test_tensorrt_accelerator_block_and_engine(tmp_path, tiny_onnx):
    engine = tmp_path / "vit.plan"
    engine.write_bytes(b"engine bytes")
    model_dir = write_triton_repository(onnx.load(tiny_onnx), tmp_path / "repo", name="vit_trt",
                                        instance_kind="KIND_GPU", tensorrt_precision="FP16",
                                        engine=engine)
    config, pb2 = parse_config(model_dir)
    (accel,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "FP16"
    assert config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU
    assert (model_dir / "1" / "model.plan").read_bytes() == b"engine bytes"
    assert onnx.load(model_dir / "1" / "model.onnx").graph.input[0].name == "pixel_values"
    plan_dir = write_triton_repository(tiny_onnx, tmp_path / "repo", name="vit_plan",
                                       platform="tensorrt_plan", instance_kind="KIND_GPU",
                                       engine=engine, max_batch=0, version=3)
    config, _ = parse_config(plan_dir)
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 0
    assert list(config.input[0].dims) == [-1, 3, 32, 32]
    assert not config.HasField("dynamic_batching")
    assert (plan_dir / "3" / "model.plan").is_file()


def test_existing_model_needs_force_and_force_replaces_atomically(tmp_path, tiny_onnx):
    repo = tmp_path / "repo"
    write_triton_repository(tiny_onnx, repo, name="vit", max_batch=4)
    with pytest.raises(M2ptError, match="model folder exists; pass --force"):
        write_triton_repository(tiny_onnx, repo, name="vit", max_batch=8)
    assert parse_config(repo / "vit")[0].max_batch_size == 4
    write_triton_repository(tiny_onnx, repo, name="vit", max_batch=8, force=True)
    assert parse_config(repo / "vit")[0].max_batch_size == 8
    assert sorted(p.name for p in repo.iterdir()) == ["vit"]


def test_a_failed_write_leaves_no_model_and_no_temporary_folder(tmp_path, tiny_onnx, monkeypatch):
    repo = tmp_path / "repo"
    write_triton_repository(tiny_onnx, repo, name="other")
    real_copy = shutil.copyfile

    def failing_copy(src, dst, *args, **kwargs):
        if str(dst).endswith("model.plan"):
            raise OSError(28, "No space left on device")
        return real_copy(src, dst, *args, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", failing_copy)
    engine = tmp_path / "e.plan"
    engine.write_bytes(b"x")
    with pytest.raises(M2ptError, match="No space left on device"):
        write_triton_repository(tiny_onnx, repo, name="vit", engine=engine)
    assert sorted(p.name for p in repo.iterdir()) == ["other"]


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(name="../evil"), "model name '../evil'"),
    (dict(name="vit", max_batch=-1), "max batch -1, instance count 1, version 1: need"),
    (dict(name="vit", instance_count=0), "instance count 0"),
    (dict(name="vit", version=0), "version 0: need"),
    (dict(name="vit", platform="tensorrt_plan"), "needs a TensorRT engine"),
    (dict(name="vit", engine="missing.plan"), "no such TensorRT engine file"),
    (dict(name="vit", tensorrt_precision="FP16"), "needs the onnxruntime platform on KIND_GPU"),
])
def test_bad_arguments_are_user_errors(tmp_path, tiny_onnx, kwargs, message):
    with pytest.raises(M2ptError, match=message.replace("(", r"\(").replace(".", r"\.")):
        write_triton_repository(tiny_onnx, tmp_path / "repo", **kwargs)
    assert not (tmp_path / "repo").exists()


def test_not_an_onnx_file_and_fixed_batch_are_user_errors(tmp_path, tiny_onnx):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\xfe not protobuf")
    with pytest.raises(M2ptError, match="not a readable ONNX model") as info:
        write_triton_repository(junk, tmp_path / "repo", name="junk")
    assert info.value.path == str(junk)
    fixed = onnx.load(tiny_onnx)
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    with pytest.raises(M2ptError, match=r"fixed batch dimension \[1\]"):
        write_triton_repository(fixed, tmp_path / "repo", name="fixed")


def test_m2pt_serve_serves_the_generated_repository(tmp_path, tiny_onnx, serve_process,
                                                    reference_session):
    import tritonclient.http as th

    repo = tmp_path / "repo"
    write_triton_repository(tiny_onnx, repo, name="vit_a", max_batch=4)
    write_triton_repository(tiny_onnx, repo, name="vit_b", max_batch=2, version=2)
    (repo / "notes").mkdir()  # folders without a model version are not models
    server = serve_process(str(repo), "--max-batch", "8")
    client = th.InferenceServerClient(server.host_port)
    x = np.random.default_rng(3).standard_normal((3, 3, 32, 32)).astype(np.float32)
    want = reference_session.run(None, {"pixel_values": x})[0]
    for name, version, max_batch in (("vit_a", "1", 4), ("vit_b", "2", 2)):
        assert client.is_model_ready(name)
        assert client.get_model_metadata(name)["versions"] == [version]
        assert client.get_model_config(name)["max_batch_size"] == max_batch
        # at most max_batch_size rows, as Triton takes them (vit_b's 2 of the 3)
        tensor = th.InferInput("pixel_values", [min(3, max_batch), 3, 32, 32], "FP32")
        tensor.set_data_from_numpy(x[:max_batch])
        result = client.infer(name, [tensor], model_version=version)
        np.testing.assert_array_equal(result.as_numpy("logits"), want[:max_batch])
    # more rows than max_batch_size: Triton refuses them (400, its wording), and so do we
    for name, rows, limit in (("vit_a", 8, 4), ("vit_b", 3, 2)):
        big = np.zeros((rows, 3, 32, 32), np.float32)
        body = json.dumps({"inputs": [{"name": "pixel_values", "shape": list(big.shape),
                                       "datatype": "FP32", "data": big.reshape(-1).tolist()}]})
        status, _, content = http("POST", f"{server.url}/v2/models/{name}/infer", body.encode())
        assert status == 400, content
        assert error_of(content) == f"inference request batch-size must be <= {limit} for '{name}'"
    with pytest.raises(Exception, match="unknown model 'notes'"):
        client.get_model_metadata("notes")


def test_m2pt_serve_refuses_an_empty_repository(tmp_path, capsys):
    from m2pt_deploy.cli.common import run_main
    from m2pt_deploy.cli.serve import main

    (tmp_path / "repo" / "vit" / "1").mkdir(parents=True)
    assert run_main(main, [str(tmp_path / "repo"), "--port", "0"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.strip() == f"error: {tmp_path / 'repo'}: no <name>/<version>/model.onnx in this model repository"


def test_external_weights_are_copied_and_relinked(tmp_path, tiny_onnx, reference_session):
    import onnxruntime as ort

    external = tmp_path / "src" / "vit.onnx"
    external.parent.mkdir()
    onnx.save_model(onnx.load(tiny_onnx), external, save_as_external_data=True,
                    location="vit.onnx.data")
    model_dir = write_triton_repository(external, tmp_path / "repo", name="vit")
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == ["model.onnx", "vit.onnx.data"]
    external.with_name("vit.onnx.data").unlink()  # the copy must not lean on the source
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(4).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(session.run(None, {"pixel_values": x})[0],
                                  reference_session.run(None, {"pixel_values": x})[0])
    external.unlink()
    with pytest.raises(M2ptError, match="not a readable ONNX model|no such ONNX file"):
        write_triton_repository(external, tmp_path / "repo", name="gone")


def test_missing_external_weights_are_a_user_error(tmp_path, tiny_onnx):
    external = tmp_path / "vit.onnx"
    onnx.save_model(onnx.load(tiny_onnx), external, save_as_external_data=True,
                    location="weights.bin")
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(M2ptError, match="external weights file weights.bin is missing") as info:
        write_triton_repository(external, tmp_path / "repo", name="vit")
    assert info.value.path == str(external)
    assert not (tmp_path / "repo" / "vit").exists()


def test_model_folder_is_readable_by_other_users(tmp_path, tiny_onnx):
    import stat

    model_dir = write_triton_repository(onnx.load(tiny_onnx), tmp_path / "repo", name="vit")
    umask = os.umask(0)
    os.umask(umask)
    for path in (model_dir, *model_dir.rglob("*")):
        want = (0o777 if path.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(path.stat().st_mode) == want, path


def test_a_kserve_inference_service_is_written_for_the_repository(tmp_path, tiny_onnx):
    import yaml

    from m2pt_deploy.export.triton import write_triton_repository

    cpu = write_triton_repository(tiny_onnx, tmp_path / "repo", name="ViT_tiny.v2", storage_uri="s3://b/repo")
    manifest = yaml.safe_load((cpu / "inferenceservice.yaml").read_text())
    assert manifest["apiVersion"] == "serving.kserve.io/v1beta1" and manifest["kind"] == "InferenceService"
    assert manifest["metadata"]["name"] == "vit-tiny-v2"  # a valid Kubernetes name
    model = manifest["spec"]["predictor"]["model"]
    assert model == {"modelFormat": {"name": "triton"}, "protocolVersion": "v2", "runtime": "kserve-tritonserver",
                     "storageUri": "s3://b/repo"}
    gpu = write_triton_repository(tiny_onnx, tmp_path / "repo", name="g", instance_kind="KIND_GPU")
    limits = yaml.safe_load((gpu / "inferenceservice.yaml").read_text())["spec"]["predictor"]["model"]["resources"]
    assert limits == {"limits": {"nvidia.com/gpu": "1"}}


def test_without_tritonclient_the_export_is_refused_before_any_work(tmp_path, monkeypatch):
    """config.pbtxt is built with Triton's schema, which ships in tritonclient[grpc]."""
    from m2pt_deploy.export.triton import check_model_folder

    monkeypatch.setitem(__import__("sys").modules, "tritonclient.grpc", None)
    with pytest.raises(M2ptError) as info:
        check_model_folder(tmp_path / "repo", "vit")
    assert str(info.value) == ("a Triton model repository is written with Triton's model_config schema, "
                               "which ships in tritonclient[grpc]: pip install 'm2pt-deploy[triton]'")
    assert not (tmp_path / "repo").exists()
