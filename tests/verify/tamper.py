"""Small, valid edits to an exported graph: each should trip exactly the check it targets."""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper

from m2pt_deploy.export.onnx import OUTPUT_NAME


def _initializer(proto: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in proto.graph.initializer if t.name == name)


def perturb_initializer(proto: onnx.ModelProto, name: str, delta: float) -> onnx.ModelProto:
    out = copy.deepcopy(proto)
    tensor = _initializer(out, name)
    values = numpy_helper.to_array(tensor).copy()
    values.flat[0] += delta
    tensor.CopyFrom(numpy_helper.from_array(values, name))
    return out


def reshape_initializer(
    proto: onnx.ModelProto, name: str, shape: tuple[int, ...]
) -> onnx.ModelProto:
    """Same values, new shape, e.g. a bias ``[10]`` as ``[1, 10]``: still broadcasts, still runs."""
    out = copy.deepcopy(proto)
    tensor = _initializer(out, name)
    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).reshape(shape), name))
    return out


def append_identity(proto: onnx.ModelProto) -> onnx.ModelProto:
    """One extra node before the output: numerically a no-op, structurally a difference."""
    out = copy.deepcopy(proto)
    producer = next(n for n in out.graph.node if OUTPUT_NAME in n.output)
    producer.output[list(producer.output).index(OUTPUT_NAME)] = "pre_logits_extra"
    out.graph.node.append(onnx.helper.make_node("Identity", ["pre_logits_extra"], [OUTPUT_NAME]))
    return out


def add_unused_initializer(proto: onnx.ModelProto) -> onnx.ModelProto:
    out = copy.deepcopy(proto)
    out.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), "extra_weight"))
    return out
