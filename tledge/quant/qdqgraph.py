"""The QDQ graph side of tledge.quant.sensitivity: which quantised activations can be kept precise,
what that costs, and the graph a candidate's bypass runs.

A unit is an activation tensor plus the pass-through tensors after it (Pad, Reshape: one grid).
Candidates (`candidates`) are the units that feed a linear op. A candidate with `members` stands for several
units chosen as one (the role groups of lab/quant/role_groups.py: measured, not in the export).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tledge._deps import require
from tledge.quant.constadds import tensor_consumers

PASS_THROUGH = ("Pad", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose", "MaxPool", "Identity")
LINEAR = ("Conv", "Gemm", "MatMul")


@dataclass
class Candidate:
    tensors: tuple[str, ...]  # the activation and the pass-through tensors after it (one grid)
    layer: str  # the Keras / graph layer that produces it (as named in both files' tensor names)
    macs: float  # multiply-adds of non-depthwise linear ops that would run float (per image)
    gain: float = 0.0  # leave-one-out drop of the margin error variance on the held-out images
    members: tuple[str, ...] = ()  # several units as one (lab/quant/role_groups.py): their layers, graph order
    noise: float = 0.0  # local rounding noise-to-signal ratio (`local_noise`: the cheap proxy)
    measured: bool = True  # False: not among the `max_trials` singles with the most local noise

    @property
    def layers(self) -> tuple[str, ...]:
        return self.members or (self.layer,)


# TensorFlow name scopes some Keras layers open inside their own (SeparableConv2D: `separable_conv2d/depthwise`,
# BatchNormalization: `batchnorm/add_1`): the layer is the scope above them
INNER_SCOPES = ("separable_conv2d", "batchnorm")


def layer_of(tensor: str) -> str:
    """The layer scope in a converter's tensor name: `model/conv_pw_3_relu_1/Relu6:0` -> `conv_pw_3_relu_1`,
    `model/block2_sepconv1_1/separable_conv2d/depthwise` -> `block2_sepconv1_1` (Xception's separable convs all
    came out as `separable_conv2d`, so a float choice of one kept 68 of 104 ops float)."""
    parts = tensor.split(";")[0].split(":")[0].split("/")
    if len(parts) < 2:
        return parts[0]
    i = len(parts) - 2
    while i > 0 and parts[i] in INNER_SCOPES:
        i -= 1
    return parts[i]


def _graph(qdq):
    """(initializer names, consumers per tensor, producer per tensor, float tensor -> its DQ output)."""
    inits = {i.name for i in qdq.graph.initializer}
    consumers = tensor_consumers(qdq.graph)
    producer = {o: n for n in qdq.graph.node for o in n.output}
    qdq_of = {}
    for n in qdq.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits:
            dq = [c for c in consumers.get(n.output[0], []) if c.op_type == "DequantizeLinear"]
            if dq:
                qdq_of[n.input[0]] = dq[0].output[0]
    return inits, consumers, producer, qdq_of


def units(qdq) -> list[tuple[Candidate, bool]]:
    """Every quantised activation unit (graph order) with its float cost, and whether it feeds a
    linear op."""
    inits, consumers, producer, qdq_of = _graph(qdq)
    macs = macs_per_node(qdq)
    followers, out = set(), []
    for t, dq_out in qdq_of.items():
        if t in followers:
            continue
        group, linear, frontier = [t], set(), [dq_out]
        while frontier:
            for c in consumers.get(frontier.pop(), []):
                if c.op_type in LINEAR:
                    linear.add(c.name)
                elif c.op_type in PASS_THROUGH and c.output[0] in qdq_of:
                    group.append(c.output[0])
                    followers.add(c.output[0])
                    frontier.append(qdq_of[c.output[0]])
        cost = sum(macs.get(n, 0.0) for n in linear) + (macs.get(producer[t].name, 0.0) if t in producer else 0.0)
        out.append((Candidate(tuple(group), layer_of(t), cost), bool(linear)))
    return out


def candidates(qdq) -> list[Candidate]:
    """Quantised activations of a QDQ onnx.ModelProto that feed a linear op (directly or through
    pass-through ops), graph order."""
    return [c for c, linear in units(qdq) if linear]


def macs_per_node(qdq) -> dict[str, float]:
    """Node name -> multiply-adds per image of each non-depthwise Conv / Gemm / MatMul (weights'
    element count times output positions, from shape inference); depthwise convs count 0."""
    onnx = require("onnx", extra="export")
    try:
        inferred = onnx.shape_inference.infer_shapes(qdq)
    except Exception:
        inferred = qdq
    shapes = {v.name: [d.dim_value or 1 for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    inits = {i.name: i for i in qdq.graph.initializer}
    producer = {o: n for n in qdq.graph.node for o in n.output}
    out = {}
    for n in qdq.graph.node:
        if n.op_type not in LINEAR or len(n.input) < 2:
            continue
        w = n.input[1]
        if w in producer and producer[w].op_type == "DequantizeLinear":
            w = producer[w].input[0]
        if w not in inits:
            continue
        dims = list(inits[w].dims)
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        if group > 1:
            out[n.name] = 0.0
            continue
        positions = float(np.prod(shapes.get(n.output[0], [1])[2:])) if n.op_type == "Conv" else 1.0
        out[n.name] = float(np.prod(dims)) * positions
    return out


def bypass(qdq, tensors: Sequence[str]):
    """A copy of `qdq` in which these tensors are not rounded: their QuantizeLinear/DequantizeLinear
    pair becomes a Clip to the same range (onnxruntime's quantiser drops a Relu/Clip before a Q whose
    range clips the same way, so the range must stay)."""
    import copy

    from onnx import helper, numpy_helper

    model = copy.deepcopy(qdq)
    wanted = set(tensors)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    clipped = {}  # Q output -> clipped float tensor
    for n in list(model.graph.node):
        if n.op_type != "QuantizeLinear" or n.input[0] not in wanted:
            continue
        scale = float(inits[n.input[1]])
        zp = inits[n.input[2]] if len(n.input) > 2 and n.input[2] else np.zeros((), np.uint8)
        info = np.iinfo(zp.dtype)
        lo, hi = (float(info.min) - float(zp)) * scale, (float(info.max) - float(zp)) * scale
        out = n.input[0] + "_tledge_precise"
        bounds = [numpy_helper.from_array(np.array(v, np.float32), f"{out}_{k}") for k, v in (("lo", lo), ("hi", hi))]
        model.graph.initializer.extend(bounds)
        model.graph.node.append(helper.make_node("Clip", [n.input[0], bounds[0].name, bounds[1].name], [out]))
        clipped[n.output[0]] = out
    rewire = {n.output[0]: clipped[n.input[0]] for n in model.graph.node
              if n.op_type == "DequantizeLinear" and n.input[0] in clipped}
    for n in model.graph.node:
        n.input[:] = [rewire.get(t, t) for t in n.input]
    return _sorted(model)


def _sorted(model):
    """Nodes in topological order (appended Clip nodes moved before their consumers)."""
    ready = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    pending, order = list(model.graph.node), []
    while pending:
        rest = []
        for n in pending:
            if all(t in ready for t in n.input):
                order.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            order += rest
            break
        pending = rest
    del model.graph.node[:]
    model.graph.node.extend(order)
    return model
