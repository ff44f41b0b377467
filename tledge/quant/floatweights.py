"""Original float weights back on the layers a mixed-precision choice runs in float (issue 11).

The weight repair (tledge.quant.repair) puts every kernel on the int8 grid, so the repaired FLOAT
model already differs from the original (hymenoptera MobileNet seed 1: 0.987 top-1 agreement on val
before any activation is rounded): precise activations alone cannot go past that. The linear layers
next to a chosen activation (its producer, and its consumers through pass-through layers) run float in
the TFLite file (tledge.quant.sensitivity.tflite_keep_float), so they can take their original
(BN-folded) weights back. Not for ONNX: there the weights stay int8 (int16 weights beside int16
activations overflow onnxruntime's int32 bias: measured worse). Keras 3 models only (any loader
through tledge.quant.rebuild).
"""
from __future__ import annotations

import re
from typing import Sequence

from tledge.quant.kerasgraph import linear_kind, nodes

ACTIVATIONS = ("ReLU", "Activation", "LeakyReLU")  # fused into the linear op by the converters
PASS_THROUGH = ("ZeroPadding2D", "Reshape", "Flatten", "MaxPooling2D", "Cropping2D")


def keras_name(model, graph_layer: str) -> str | None:
    """The model's layer named `graph_layer` in a converter's tensor names (`conv_pw_3_relu_1` is
    layer `conv_pw_3_relu` traced once): exact, else without one trailing name-scope counter."""
    names = {layer.name for layer in model.layers}
    if graph_layer in names:
        return graph_layer
    stripped = re.sub(r"_\d+$", "", graph_layer)
    return stripped if stripped in names else None


def neighbours(model, layer: str) -> list[str]:
    """Linear layers around `layer`'s output: the one producing it (through activations) and those
    reading it (through pass-through layers)."""
    producer, consumers = {}, {}
    for op, node in nodes(model):
        for t in node.outputs:
            producer[id(t)] = (op, node)
        for t in node.input_tensors:
            consumers.setdefault(id(t), []).append((op, node))
    by_name = {op.name: (op, node) for op, node in nodes(model)}
    if layer not in by_name:
        return []
    found = []
    op, node = by_name[layer]
    while (type(op).__name__ in ACTIVATIONS and len(node.input_tensors) == 1
           and id(node.input_tensors[0]) in producer):
        op, node = producer[id(node.input_tensors[0])]
    if linear_kind(op):
        found.append(op.name)
    frontier = list(by_name[layer][1].outputs)
    while frontier:
        for c_op, c_node in consumers.get(id(frontier.pop()), []):
            if linear_kind(c_op):
                found.append(c_op.name)
            elif type(c_op).__name__ in PASS_THROUGH:
                frontier += list(c_node.outputs)
    return list(dict.fromkeys(found))


def restore(repaired, original, graph_layers: Sequence[str]):
    """A copy of `repaired` whose linear layers around the chosen activations carry `original`'s
    weights (`original`: the folded float model the repair started from, same layer names), and the
    names of those layers."""
    keras = require_keras()
    copy = keras.models.clone_model(repaired)
    copy.set_weights(repaired.get_weights())
    names: list[str] = []
    for g in graph_layers:
        name = keras_name(copy, g)
        names += [n for n in (neighbours(copy, name) if name else []) if n not in names]
    for n in names:
        dst, src = copy.get_layer(n), original.get_layer(n).get_weights()
        have = dst.get_weights()
        if len(src) == len(have):
            dst.set_weights(src)
        elif len(src) == 1 and len(have) == 2:  # the repair gave a bias-less layer a bias
            dst.set_weights([src[0], have[1] * 0.0])
    return copy, names


def require_keras():
    from tledge._deps import require

    return require("keras", purpose="int8 repairs")
