"""FLOPs counted from a graph: 2 per multiply-add for MatMul / Gemm / Conv, one per element otherwise."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from m2pt_deploy.bench.flops import graph_flops


def _model():
    w = numpy_helper.from_array(np.ones((8, 16), np.float32), "w")
    k = numpy_helper.from_array(np.ones((4, 3, 2, 2), np.float32), "k")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"]),                      # 2·5·8·16 = 1280
        helper.make_node("Relu", ["y"], ["r"]),                             # 5·16 = 80
        helper.make_node("ReduceSum", ["r"], ["s"], keepdims=1),            # 80 inputs
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),        # moves data: 0
        helper.make_node("Conv", ["img", "k"], ["c"], strides=[2, 2]),      # 2·(4·3·3)·(3·2·2) = 864
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5, 8]),
         helper.make_tensor_value_info("img", TensorProto.FLOAT, ["batch", 3, 6, 6])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("s", "t", "c")], [w, k])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_counts_per_sample_from_the_graph() -> None:
    counted = graph_flops(_model())
    assert counted.uncounted == ()
    assert counted.matmul * 1e9 == pytest.approx(1280 + 864)
    assert counted.other * 1e9 == pytest.approx(80 + 80)
    assert counted.to_dict()["total_gflop"] == pytest.approx(counted.total)


def test_ops_it_cannot_count_are_named() -> None:
    model = _model()
    model.graph.node.append(helper.make_node("Attention", ["x", "w"], ["a"], domain="com.microsoft"))
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert graph_flops(model).uncounted == ("com.microsoft::Attention",)
    del model.opset_import[-1]  # a graph ONNX's shape inference refuses: nothing counted, and said so
    assert set(graph_flops(model).uncounted) == {"com.microsoft::Attention", "MatMul", "Conv", "Relu", "ReduceSum"}
