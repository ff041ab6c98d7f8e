"""torch -> ONNX with the exporter's provenance removed, so a graph's bytes depend only on what it computes.

The dynamo exporter annotates every node with the Python stack that produced it (file paths of this checkout
and of site-packages), its FX node text and module scopes. model_version is a hash of the exported files, so
with those annotations the same checkpoint exported from two checkouts got two versions, and histories would
be keyed apart. ONNX Runtime never reads them.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch


def _strip(graph: onnx.GraphProto) -> None:
    graph.doc_string = ""
    del graph.metadata_props[:]
    for value in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        value.doc_string = ""
        del value.metadata_props[:]
    for node in graph.node:
        node.doc_string = ""
        del node.metadata_props[:]
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _strip(attr.g)
            for sub in attr.graphs:
                _strip(sub)


def strip_provenance(path: Path) -> None:
    """Rewrites `path` without doc strings or metadata on its graphs, nodes and values (weights untouched)."""
    proto = onnx.load(str(path), load_external_data=False)
    proto.doc_string = ""
    del proto.metadata_props[:]
    _strip(proto.graph)
    for fn in proto.functions:
        fn.doc_string = ""
        del fn.metadata_props[:]
        for node in fn.node:
            node.doc_string = ""
            del node.metadata_props[:]
    onnx.save(proto, str(path))


def export_graph(
    module: torch.nn.Module,
    args: tuple,
    path: Path,
    inputs: list[str],
    outputs: list[str],
    dynamic_shapes: tuple,
    external_data: bool = False,
) -> None:
    with torch.no_grad():
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=dynamic_shapes,
            dynamo=True,
            external_data=external_data,
            verbose=False,
        )
    strip_provenance(path)
