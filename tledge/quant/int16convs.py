"""int16 activations next to an int8-weight Conv become float in the int8 ONNX files, for OpenCV.

OpenCV 5.1's dnn fuses DequantizeLinear -> Conv (int8 weight) -> QuantizeLinear into its own int8 convolution
(`Conv2Int8`) whatever the activations' type, and computes every tensor it touches as 8 bits. An int16 activation
(tledge.quant.sensitivity's rung, TensorQuantOverrides QInt16) written by such a Conv made it refuse the file at the
first forward (`inputs[0] == inputs[2] || wideFp8Pair in function 'getTypes'`: the fused Conv's 8-bit output met the
int16 DequantizeLinear); one read by such a Conv, `inp_ref.type() == CV_8SC1 || inp_ref.type() == CV_8UC1`; and one
between two such Convs ran with no error and WRONG answers (top-1 agreement with onnxruntime 0.48 on a MobileNet,
0.33 on the tiny model). A Gemm / GlobalAveragePool / Squeeze fed int16, and any Conv with uint8 weights (U8U8 files,
which OpenCV does not fuse), compute the int16 tensors right (docs/int8-fidelity.md, "What OpenCV refuses").

`float_int16_at_int8_convs` replaces each such tensor's int16 QuantizeLinear / DequantizeLinear pair by a Clip to the
same range (`qdqgraph.bypass`: the Relu / Relu6 the quantiser folded into the pair stays), the rung's own simulation
of "kept precise": onnxruntime has no int16 Conv kernel, so it ran those Convs float on int8 weights before and does
now, only without the int16 rounding between them.
"""
from __future__ import annotations

from tledge.quant.constadds import prune_initializers, tensor_consumers
from tledge.quant.qdqgraph import bypass

_INT8, _INT16, _UINT16 = 3, 5, 4  # onnx.TensorProto.INT8 / INT16 / UINT16


def int16_at_int8_convs(model) -> list[str]:
    """The float tensors of an onnx ModelProto quantised through an int16 (or uint16) QuantizeLinear whose input an
    int8-weight Conv writes or whose DequantizeLinear an int8-weight Conv reads as its input, in graph order."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers = tensor_consumers(graph)

    def int8_conv(node) -> bool:
        dq = producer.get(node.input[1]) if node is not None and node.op_type == "Conv" and len(node.input) > 1 \
            else None
        return dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits and \
            inits[dq.input[0]].data_type == _INT8

    found = []
    for q in graph.node:
        zp = q.input[2] if q.op_type == "QuantizeLinear" and len(q.input) > 2 else ""
        if zp not in inits or inits[zp].data_type not in (_INT16, _UINT16) or len(inits[zp].dims) > 0:
            continue  # (a per-channel pair: not an activation's)
        readers = [(c, dq.output[0]) for dq in consumers.get(q.output[0], []) if dq.op_type == "DequantizeLinear"
                   for c in consumers.get(dq.output[0], [])]
        if int8_conv(producer.get(q.input[0])) or any(int8_conv(c) and c.input[0] == t for c, t in readers):
            found.append(q.input[0])
    return found


def float_int16_at_int8_convs(model) -> list[str]:
    """`int16_at_int8_convs`' tensors made float, in place: each int16 QuantizeLinear / DequantizeLinear pair becomes
    a Clip to the range it stated (`qdqgraph.bypass`), the pair and its initializers dropped. Returns the tensors."""
    tensors = int16_at_int8_convs(model)
    if not tensors:
        return []
    clipped = bypass(model, tensors)
    graph = clipped.graph
    while True:  # the bypassed pairs: a DequantizeLinear no node reads, then its QuantizeLinear
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    read = {i for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") for i in n.input[1:]}
    prune_initializers(graph, among=read)  # their scales and zero points, nothing else of the quantiser's
    model.graph.CopyFrom(graph)
    return tensors
