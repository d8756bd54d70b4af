from __future__ import annotations

import collections
import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.export import onnx as onnx_export
from m2pt_deploy.export.onnx import (
    INPUT_NAME,
    OUTPUT_NAME,
    BatchSpec,
    OnnxFromCheckpoint,
    parse_batch,
    save_onnx,
)
from m2pt_deploy.metadata import read_metadata
from m2pt_deploy.model.build import build_unmerged
from m2pt_deploy.model.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    from m2pt_deploy.model.checkpoint import save_checkpoint
    from m2pt_deploy.model.pathway import pathway_state_dict
    from tests.tiny import TINY, make_pathway_model, pathway_info

    root = tmp_path_factory.mktemp("onnx")
    ckpt = root / "tiny.safetensors"
    save_checkpoint(ckpt, pathway_state_dict(make_pathway_model(n_aux=2)), TINY, pathway=pathway_info(2))
    out = save_onnx(OnnxFromCheckpoint(ckpt)(), root / "tiny.onnx")
    return ckpt, out


def run_ort(path: Path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]


@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_runtime_matches_unmerged_model(exported, batch: int) -> None:
    ckpt, path = exported
    model = build_unmerged(load_checkpoint(ckpt))
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        ref = model(x).numpy()
    got = run_ort(path, x)
    assert np.abs(got - ref).max() <= 1e-4
    assert (got.argmax(1) == ref.argmax(1)).all()


def test_graph_is_checked_with_named_dynamic_io(exported) -> None:
    proto = onnx.load(exported[1])
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, out.name) == (INPUT_NAME, OUTPUT_NAME)
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims[1:] == [3, 32, 32] and isinstance(dims[0], str)


def test_metadata_describes_input_and_source(exported) -> None:
    ckpt, path = exported
    meta = read_metadata(onnx.load(path))
    assert meta["m2pt_deploy.input"] == {"name": INPUT_NAME, "channels": 3, "height": 32, "width": 32,
                                         "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                         "crop_pct": 0.9, "interpolation": "bicubic", "modality": "image",
                                         "layout": ["batch", "channels", "height", "width"], "shape": [3, 32, 32]}
    assert meta["m2pt_deploy.family"] == "vit"
    assert meta["m2pt_deploy.source_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert meta["m2pt_deploy.lambda"]["layers"] == 8 and len(meta["m2pt_deploy.lambda"]["aux"]) == 2
    assert meta["m2pt_deploy.arch"] == "vit_tiny_patch16_224"


def test_no_pathway_op_survives_the_merge(exported) -> None:
    proto = onnx.load(exported[1])
    names = [i.name for i in proto.graph.initializer]
    assert not any("aux" in n or "scale" in n or "parametrizations" in n for n in names)
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    assert ops["MatMul"] + ops["Gemm"] == 2 * 6 + 1  # qkv, q@k, attn@v, proj, fc1, fc2 per block; head


def test_export_is_byte_identical_when_repeated(exported, tmp_path: Path) -> None:
    ckpt, first = exported
    second = save_onnx(OnnxFromCheckpoint(ckpt)(), tmp_path / "again.onnx")
    assert first.read_bytes() == second.read_bytes()


def test_static_batch(exported, tmp_path: Path) -> None:
    path = save_onnx(OnnxFromCheckpoint(exported[0], batch=BatchSpec(3, 3, 3))(), tmp_path / "b3.onnx")
    dims = [d.dim_value for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [3, 3, 32, 32]
    assert run_ort(path, torch.zeros(3, 3, 32, 32)).shape == (3, 10)


def test_fp16_export_keeps_fp32_io_and_agrees(exported, tmp_path: Path) -> None:
    ckpt, fp32 = exported
    path = save_onnx(OnnxFromCheckpoint(ckpt, precision="fp16")(), tmp_path / "half.onnx")
    proto = onnx.load(path)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in proto.graph.initializer)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a, b = run_ort(fp32, x), run_ort(path, x)
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() >= 0.999


def test_large_models_use_external_data(exported, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(onnx_export, "_PROTOBUF_LIMIT", 1000)
    proto = onnx.load(exported[1])
    out = save_onnx(proto, tmp_path / "big.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    x = torch.randn(2, 3, 32, 32)
    np.testing.assert_array_equal(run_ort(out, x), run_ort(exported[1], x))


def test_old_opset_is_refused(exported) -> None:
    with pytest.raises(M2ptError, match="needs opset 17 or newer"):
        OnnxFromCheckpoint(exported[0], opset=13)()


@pytest.mark.parametrize(("text", "spec"), [("8", BatchSpec(8, 8, 8)), ("1:8:32", BatchSpec(1, 8, 32))])
def test_parse_batch(text: str, spec: BatchSpec) -> None:
    assert parse_batch(text) == spec


@pytest.mark.parametrize(("text", "message"), [
    ("0", "each at least 1"), ("x", "whole numbers"), ("1:2", "N or MIN:OPT:MAX"),
    ("32:8:1", "needs MIN <= OPT <= MAX, got 32 > 8 > 1"), ("1:64:8", "needs MIN <= OPT <= MAX"),
])
def test_parse_batch_errors(text: str, message: str) -> None:
    with pytest.raises(M2ptError, match=message):
        parse_batch(text)


def test_metadata_records_the_eval_crop_and_interpolation(m2pt_ckpt) -> None:
    """The server's /classify reads them to preprocess as training evaluated (timm's data config)."""
    import timm

    from m2pt_deploy.export.onnx import OnnxFromCheckpoint
    from m2pt_deploy.metadata import read_metadata
    from tests.tiny import TINY

    meta = read_metadata(OnnxFromCheckpoint(m2pt_ckpt)())["m2pt_deploy.input"]
    cfg = timm.get_pretrained_cfg(TINY.arch)
    assert (meta["crop_pct"], meta["interpolation"]) == (cfg.crop_pct, cfg.interpolation) == (0.9, "bicubic")
