"""Runners with one ``infer`` interface: torch and ONNX Runtime give the same logits for the same model,
and any runtime's refusal is one ``M2ptError`` line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from polygraphy.datatype import DataType
from polygraphy.logger import G_LOGGER
from torch import nn

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.merge import merge_model
from m2pt_deploy.model.build import build_unmerged
from m2pt_deploy.model.checkpoint import Checkpoint
from m2pt_deploy.runtime.runners import (
    SessionFromOnnxNoSpin,
    TorchRunner,
    cpu_runner,
    onnxrt_runner,
    ort_runner,
    quiet_polygraphy,
    run_runners,
)
from m2pt_deploy.verify.metrics import error_stats
from m2pt_deploy.verify.tolerance import TOLERANCES
from tests.tiny import TINY

SHAPE = (None, *TINY.input_size)


@pytest.fixture(scope="module")
def merged(pathway_ckpt: Checkpoint) -> nn.Module:
    """The model the export holds: the pathway model with its pathways folded in."""
    return merge_model(build_unmerged(pathway_ckpt), pathway_ckpt.spec).eval()


def _feeds(*batches: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    return [{"pixel_values": rng.standard_normal((b, *TINY.input_size), dtype=np.float32)} for b in batches]


def _custom_op_onnx(path: Path) -> Path:
    """A graph the ONNX checker accepts and ONNX Runtime refuses: an op of an unknown domain."""
    graph = helper.make_graph([helper.make_node("Foo", ["pixel_values"], ["logits"], domain="com.example")], "g",
                              [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])
    onnx.checker.check_model(proto)
    onnx.save(proto, path)
    return path


def test_torch_and_every_onnx_runtime_runner_agree(merged, good_onnx, good_proto) -> None:
    runners = [
        TorchRunner(merged, SHAPE, name="torch"),
        onnxrt_runner(good_onnx),
        onnxrt_runner(good_onnx, name="onnxrt-nospin", spinning=False),
        cpu_runner(good_onnx, threads=1),
        ort_runner(good_proto.SerializeToString(), name="ort-bytes", optimization="none"),
    ]
    feeds = _feeds(1, 3)
    out = run_runners(runners, feeds)
    assert list(out) == ["torch", "onnxrt", "onnxrt-nospin", "onnxrt-cpu:pathway.onnx", "ort-bytes"]
    with torch.inference_mode():
        eager = [merged(torch.from_numpy(f["pixel_values"])).numpy() for f in feeds]
    fp32 = TOLERANCES["fp32"]
    for name, per_feed in out.items():
        for want, got in zip(eager, per_feed, strict=True):
            assert list(got) == ["logits"] and got["logits"].shape == want.shape
            # The torch runner is the model itself; the runtimes are judged by the fp32 tolerance.
            if name == "torch":
                np.testing.assert_array_equal(got["logits"], want)
            else:
                assert not fp32.failures(error_stats(want, got["logits"])), name


def test_torch_runner_builds_its_model_when_activated(merged) -> None:
    built: list[nn.Module] = []

    def build() -> nn.Module:
        built.append(merged)
        return merged

    runner = TorchRunner(build, SHAPE, input_name="x", output_name="y")
    assert not built, "a factory is called at activation, not before"
    assert runner.name.startswith("torch-runner")
    with runner:
        meta = runner.get_input_metadata(use_numpy_dtypes=False)
        assert list(meta) == ["x"] and tuple(meta["x"].shape) == SHAPE and meta["x"].dtype == DataType.FLOAT32
        # A non-contiguous feed (a transposed view) is copied, not refused by torch.from_numpy.
        x = np.asfortranarray(_feeds(2)[0]["pixel_values"])
        assert not x.flags.c_contiguous
        y = runner.infer({"x": x})
        assert runner.last_inference_time() > 0
        with torch.inference_mode():
            np.testing.assert_array_equal(y["y"], merged(torch.from_numpy(np.ascontiguousarray(x))).numpy())
    assert len(built) == 1
    assert list(y) == ["y"] and y["y"].shape == (2, TINY.num_classes) and np.isfinite(y["y"]).all()
    assert not merged.training


def test_runner_names_must_be_unique(good_onnx) -> None:
    def never() -> nn.Module:
        raise AssertionError("refused before any runner is activated")

    runners = [TorchRunner(never, SHAPE, name="same"), onnxrt_runner(good_onnx, name="same")]
    with pytest.raises(M2ptError, match=r"runner names must be unique, got \['same', 'same'\]"):
        run_runners(runners, _feeds(1))


@pytest.mark.parametrize("make", [
    lambda path: onnxrt_runner(path),
    lambda path: onnxrt_runner(path, spinning=False),
    lambda path: cpu_runner(path),
    lambda path: ort_runner(path, name="ort", path=path),
], ids=["onnxrt", "onnxrt-nospin", "cpu", "ort"])
def test_a_graph_onnx_runtime_refuses_is_one_line_naming_the_file(tmp_path, make) -> None:
    path = _custom_op_onnx(tmp_path / "custom.onnx")
    with pytest.raises(M2ptError) as e:
        run_runners([make(path)], [{"pixel_values": np.zeros((1, 4), np.float32)}])
    text = str(e.value)
    assert text.startswith(f"{path}: ONNX Runtime cannot load this model: ") and "\n" not in text, text
    assert "com.example:Foo" in text


def test_a_runtime_polygraphy_refuses_is_an_m2pt_error(good_onnx) -> None:
    # Polygraphy logs an unknown execution provider as critical, which raises its own exception.
    with pytest.raises(M2ptError, match=r"^a runtime failed: .*provider") as e:
        run_runners([onnxrt_runner(good_onnx, providers=("no-such-provider",))], _feeds(1))
    assert "\n" not in str(e.value)


def test_session_without_spinning_lets_idle_threads_sleep(good_onnx) -> None:
    loader = SessionFromOnnxNoSpin(Path(good_onnx), threads=1)
    assert loader.onnx_path == str(good_onnx)
    options = loader().get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 1


def test_cpu_runner_names_the_file_unless_told(good_onnx) -> None:
    assert cpu_runner(good_onnx).name == "onnxrt-cpu:pathway.onnx"
    assert cpu_runner(good_onnx, name="served").name == "served"


def test_quiet_polygraphy_restores_the_verbosity() -> None:
    before = G_LOGGER.module_severity.get()
    with quiet_polygraphy():
        assert G_LOGGER.module_severity.get() == G_LOGGER.ERROR
    assert G_LOGGER.module_severity.get() == before
