"""A per-channel normalisation on the NHWC pixels of a converted ONNX graph, with its constants tiled along W.

tf2onnx converts an NHWC graph's `pixels * scale + offset` (tledge's `--preprocess torch` / `custom`, or a model's
own per-channel Rescaling) as written: Mul and Add with [3] constants on the NHWC input, then the Transpose to the
first Conv's NCHW. onnxruntime broadcasts a [3] constant against [N, H, W, 3] three floats at a time: on MobileNet
0.25 at 224 px the two ops took half of the fp32 file's time and 40 % of the int8 file's. Moving them behind the
Transpose as [C, 1, 1] helps the fp32 file only: in the int8 file onnxruntime's own layout pass (QLinearConv runs
NHWC) pushes that Transpose back through them, and their constants are [1, 1, 1, 3] again. The same values tiled to
[W, C] broadcast over whole image rows (W x C floats at a time) in both files, wherever onnxruntime puts the
Transpose: fp32 2.56 -> 1.25 ms, int8 2.99 -> 1.74 ms (benchmarks/onnx_prep_cost.py, docs/onnx-files.md). Every element gets the same
float32 operation with the same operand, so the outputs are bit-identical, and no op or tensor name changes (the
int8 quantiser keeps this chain float: tledge.quant.pixelgrid). One value for every channel (`tf`, `scale`) is a
scalar already (tledge.export.loader.trace), which onnxruntime runs fast as it is.
"""
from __future__ import annotations

import numpy as np

from tledge.quant.constadds import tensor_consumers

ELEMENTWISE = ("Mul", "Add", "Sub", "Div")
NHWC_TO_NCHW = [0, 3, 1, 2]
SUFFIX = "_rows"


def tile_constants(model) -> int:
    """In place: the chain of ELEMENTWISE ops with one constant operand each that takes the graph's NHWC input first
    and whose end feeds only the NHWC -> NCHW Transpose gets each per-channel constant ([C], or [1, 1, 1, C] and the
    like) tiled to [W, C], when it has one. Returns how many constants were tiled (0: the graph as it was)."""
    graph = model.graph
    dims = graph.input[0].type.tensor_type.shape.dim if len(graph.input) == 1 else []
    if len(dims) != 4 or not dims[2].dim_value or not dims[3].dim_value:
        return 0
    constants = _chain(graph, dims[3].dim_value)
    if constants is None:
        return 0
    _tile(graph, constants, dims[2].dim_value, dims[3].dim_value)
    return sum(c.size > 1 for _, _, c in constants)


def _chain(graph, channels: int):
    """[(node, index of its constant operand, the constant)] of the chain, or None when the graph has no such chain
    with a per-channel constant."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in graph.initializer}
    consumers = tensor_consumers(graph)
    outputs = {o.name for o in graph.output}
    chain, constants, tensor = [], [], graph.input[0].name
    while len(consumers.get(tensor, [])) == 1 and tensor not in outputs:
        node = consumers[tensor][0]
        if node.op_type not in ELEMENTWISE:
            break
        j = 1 - _at(node, tensor) if len(node.input) == 2 else -1
        if j < 0 or node.input[j] == tensor or node.input[j] not in inits:
            return None
        shape = list(inits[node.input[j]].dims)
        if len(shape) > 4 or any(d != 1 for d in shape[:-1]) or (shape and shape[-1] not in (1, channels)):
            return None  # not one value, or one per channel, for every pixel
        chain.append(node)
        constants.append((node, j, numpy_helper.to_array(inits[node.input[j]])))
        tensor = node.output[0]
    ends = consumers.get(tensor, [])
    transpose = ends[0] if len(ends) == 1 and ends[0].op_type == "Transpose" else None
    if (not chain or transpose is None or tensor in outputs
            or [helper.get_attribute_value(a) for a in transpose.attribute if a.name == "perm"] != [NHWC_TO_NCHW]):
        return None
    if not any(c.size == channels > 1 for _, _, c in constants):
        return None  # scalars only: fast as they are
    return constants


def _at(node, tensor: str) -> int:
    return list(node.input).index(tensor)


def _tile(graph, constants: list, width: int, channels: int) -> None:
    """Each per-channel constant as a new initializer of its values tiled to [W, C] (the old one removed where
    nothing else uses it); one-value constants stay."""
    from onnx import numpy_helper

    names = {i.name for i in graph.initializer}
    for node, j, value in constants:
        if value.size == 1:
            continue
        old = node.input[j]
        new = old + SUFFIX
        while new in names:
            new += "_"
        graph.initializer.append(numpy_helper.from_array(np.tile(value.reshape(1, channels), (width, 1)), new))
        names.add(new)
        node.input[j] = new
        if not any(old in n.input for n in graph.node) and old not in {o.name for o in graph.output}:
            graph.initializer.remove(next(i for i in graph.initializer if i.name == old))
