"""Reshapes that change nothing, removed from a converted ONNX graph.

Where tf2onnx's transpose optimiser cannot cancel a Transpose that only moves size-1 dimensions (the
[N, 1, 1, C] <-> [N, C, 1, 1] squeeze-excite vectors of MobileNetV3 and EfficientNet) it writes a
Reshape instead, and after the pass most of those reshape [N, C, 1, 1] to [-1, C, 1, 1]: nothing. Free in
float, but quantisation wraps each in its own QuantizeLinear/DequantizeLinear pair (MobileNetV3Small: 20
such Reshapes, 40 extra nodes in the int8 file).
"""
from __future__ import annotations

from tledge._deps import require


def drop_identity(model) -> int:
    """Remove, in place, every Reshape whose constant target shape is provably its input's shape (ONNX
    shape inference; at most one -1, every other entry equal to a known input dim or 0 = copy).
    Graph outputs, graphs with subgraphs, and `allowzero` reshapes are left alone. Returns how many."""
    onnx = require("onnx", extra="export")
    from onnx import numpy_helper

    graph = model.graph
    if any(a.HasField("g") or len(a.graphs) for n in graph.node for a in n.attribute):
        return 0
    shapes = _inferred_shapes(onnx, model)
    inits = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    renames, dropped = {}, []
    for node in graph.node:
        if (node.op_type != "Reshape" or len(node.input) != 2 or node.input[1] not in inits
                or node.output[0] in outputs or any(a.name == "allowzero" and a.i for a in node.attribute)):
            continue
        target = numpy_helper.to_array(inits[node.input[1]]).tolist()
        if _same(shapes.get(node.input[0]), target):
            renames[node.output[0]] = renames.get(node.input[0], node.input[0])
            dropped.append(node)
    for node in dropped:
        graph.node.remove(node)
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
    used = {n for node in graph.node for n in node.input}
    for name in {node.input[1] for node in dropped} - used:
        graph.initializer.remove(inits[name])
    for vi in [vi for vi in graph.value_info if vi.name in renames]:
        graph.value_info.remove(vi)
    return len(dropped)


def _inferred_shapes(onnx, model) -> dict:
    """Tensor name -> list of dims (int, or None where unknown), from ONNX shape inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # e.g. a model over protobuf's 2 GB: keep every Reshape
        return {}
    out = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return out


def _same(src: list | None, target: list) -> bool:
    """Whether reshaping a tensor of dims `src` to `target` (0: copy the dim, -1: the rest) keeps its shape."""
    if src is None or len(src) != len(target) or target.count(-1) > 1:
        return False
    for have, want in zip(src, target):
        if want == -1:
            continue  # the element counts are equal, so the one -1 is the remaining dim
        if want != 0 and (have is None or have != want or have == 0):
            return False
    return True
