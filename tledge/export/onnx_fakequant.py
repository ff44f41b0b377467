"""A quantization-aware-trained model's fake-quant ops in the fp32 ONNX file, as float arithmetic.

tf2onnx writes each FakeQuantWithMinMaxVars as a QuantizeLinear -> DequantizeLinear pair on the activation and
keeps the weights float. onnxruntime's default session reads such a pair in front of a Conv as a quantised
operator and quantises the float weights itself (WeightBiasQuantization, from its BASIC level): on a tfmot QAT
MobileNet the fp32 file agreed with the model on 0.654 of 153 photos (0.77 max abs), while OpenCV and a session
with graph optimisation off computed it right (session 37). Each pair is written as the arithmetic it stands for,
`(clip(round(x * (1 / scale)) + zp, lo, hi) - zp) * scale` (ONNX's Round: half to even, as QuantizeLinear;
the reciprocal as TensorFlow's FakeQuant and onnxruntime's optimised sessions multiply), which no
runtime takes for a quantised operator: the fp32 file then computes the model's fake quantisation in float, in
every client. Only per-tensor pairs with constant scale and zero point are rewritten; anything else is left.
"""
from __future__ import annotations

import numpy as np

from tledge.quant.constadds import tensor_consumers

_RANGES = {2: (0, 255), 3: (-128, 127)}  # TensorProto UINT8, INT8


def as_float(model) -> int:
    """Rewrite QuantizeLinear -> DequantizeLinear pairs of `model` (an onnx.ModelProto) in place; how many."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    users = tensor_consumers(graph)
    outputs = {o.name for o in graph.output}
    replace, drop, count = {}, set(), 0
    for q in graph.node:
        pair = _pair(q, users, inits, outputs)
        if pair is None:
            continue
        dq, scale, zp, (lo, hi) = pair
        p = f"{q.name or q.output[0]}_float"
        consts = [numpy_helper.from_array(np.array(v, np.float32), f"{p}_{k}")
                  for k, v in (("scale", scale), ("inv", np.float32(1) / np.float32(scale)), ("zp", zp), ("lo", lo),
                               ("hi", hi))]
        graph.initializer.extend(consts)
        s, inv, z, lo_name, hi_name = (c.name for c in consts)
        x, y = q.input[0], dq.output[0]
        replace[id(q)] = [helper.make_node("Mul", [x, inv], [f"{p}_div"], name=f"{p}_div"),
                          helper.make_node("Round", [f"{p}_div"], [f"{p}_round"], name=f"{p}_round"),
                          helper.make_node("Add", [f"{p}_round", z], [f"{p}_add"], name=f"{p}_add"),
                          helper.make_node("Clip", [f"{p}_add", lo_name, hi_name], [f"{p}_clip"], name=f"{p}_clip"),
                          helper.make_node("Sub", [f"{p}_clip", z], [f"{p}_sub"], name=f"{p}_sub"),
                          helper.make_node("Mul", [f"{p}_sub", s], [y], name=f"{p}_mul")]
        drop.add(id(dq))
        count += 1
    if count:
        nodes = [m for n in graph.node if id(n) not in drop for m in replace.get(id(n), [n])]
        del graph.node[:]
        graph.node.extend(nodes)
    return count


def _pair(q, users: dict, inits: dict, outputs: set):
    """(DequantizeLinear, scale, zero point, (lo, hi)) when `q` is a per-tensor QuantizeLinear whose one user is a
    DequantizeLinear of the same constants, else None."""
    from onnx import numpy_helper

    if q.op_type != "QuantizeLinear" or len(q.input) != 3 or q.output[0] in outputs:
        return None
    after = users.get(q.output[0], [])
    if len(after) != 1 or after[0].op_type != "DequantizeLinear" or list(after[0].input[1:]) != list(q.input[1:]):
        return None
    scale, zp = inits.get(q.input[1]), inits.get(q.input[2])
    if scale is None or zp is None or zp.data_type not in _RANGES:
        return None
    s, z = numpy_helper.to_array(scale), numpy_helper.to_array(zp)
    if s.size != 1 or z.size != 1 or not np.isfinite(s).all() or float(s.reshape(-1)[0]) <= 0:
        return None
    return after[0], float(s.reshape(-1)[0]), float(z.reshape(-1)[0]), _RANGES[zp.data_type]
