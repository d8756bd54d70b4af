"""Graph preparation before a TensorRT build, with onnx-graphsurgeon.

Folding constants and dropping dead nodes gives TensorRT's parser less to do and makes
the reduced-precision rewrite see weights as initializers; a topological order is what
the rewrite and the parser both assume; a fixed output name (and the input name the family's export
gave) lets an engine, its sidecar and the runners agree on what to feed.
"""

from __future__ import annotations

from typing import Any

import onnx

from m2pt_deploy.errors import M2ptError
from m2pt_deploy.runtime.io_names import OUTPUT_NAME

__all__ = ["copy_model_fields", "import_graph", "prepare_graph"]


def import_graph(proto: onnx.ModelProto) -> Any:
    """``gs.import_onnx``, leaving ``proto`` as it was: graphsurgeon keeps a reference to the
    proto's opset list and appends to it on export (a fused ``com.microsoft`` node would add its
    domain to the caller's model), so the graph gets its own copy."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(proto)
    graph.import_domains = [onnx.helper.make_opsetid(o.domain, o.version) for o in proto.opset_import]
    return graph


def prepare_graph(
    proto: onnx.ModelProto, *, input_name: str | None = None, output_name: str = OUTPUT_NAME,
) -> onnx.ModelProto:
    """Fold constants, clean up, sort topologically and name the one input and output
    (``input_name`` ``None``: the name the export gave its family's input)."""
    import onnx_graphsurgeon as gs

    graph = import_graph(proto)
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise M2ptError(
            f"expected one input and one output, got {len(graph.inputs)} and {len(graph.outputs)}")
    graph.fold_constants().cleanup().toposort()
    if input_name is not None:
        graph.inputs[0].name = input_name
    graph.outputs[0].name = output_name
    out = gs.export_onnx(graph)
    copy_model_fields(proto, out)
    return out


def copy_model_fields(src: onnx.ModelProto, dst: onnx.ModelProto) -> None:
    """graphsurgeon rebuilds the ModelProto; keep what describes the model, not the graph."""
    dst.producer_name, dst.producer_version = src.producer_name, src.producer_version
    dst.doc_string = src.doc_string
    del dst.metadata_props[:]
    dst.metadata_props.extend(src.metadata_props)
