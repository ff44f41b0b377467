"""Original float weights on the layers a mixed-precision choice runs in float (issue 11).

The weight repair (tledge.quant.repair) puts every kernel on the int8 grid, so the repaired FLOAT
model already differs from the original (hymenoptera MobileNet seed 1: 0.987 top-1 agreement on val
before any activation is rounded): precise activations alone cannot go past that. The layers next to a
chosen activation (its producer, and its readers through pass-through layers) run float in the TFLite
file (tledge.quant.sensitivity.tflite_keep_float); `float_set` names them in the Keras model, and the
repair keeps them float (`repair.apply(keep=...)`), so they carry their original (BN-folded) weights and
every later layer is fitted to that. Putting the original weights back AFTER the repair (`restore`, until
the twenty-first session) undid the repair's compensation downstream (EfficientNetB0 seed 1: 453 flips
of 1300 against 90). Not for ONNX: there the weights stay int8 (int16 weights beside int16 activations
overflow onnxruntime's int32 bias: measured worse). Keras 3 models only (any loader through
tledge.quant.rebuild).
"""
from __future__ import annotations

import re
from typing import Sequence

from tledge.quant.kerasgraph import clip_of, linear_kind, nodes

ACTIVATIONS = ("ReLU", "Activation", "LeakyReLU")  # activation layers (`_fused`: the ones the converters fuse)
PASS_THROUGH = ("ZeroPadding2D", "Reshape", "Flatten", "MaxPooling2D", "Cropping2D")


def keras_name(model, graph_layer: str) -> str | None:
    """The model's layer named `graph_layer` in a converter's tensor names (`conv_pw_3_relu_1` is
    layer `conv_pw_3_relu` traced once): exact, else without one trailing name-scope counter."""
    names = {layer.name for layer in model.layers}
    if graph_layer in names:
        return graph_layer
    stripped = re.sub(r"_\d+$", "", graph_layer)
    return stripped if stripped in names else None


def _fused(op) -> bool:
    """An activation layer the converters fuse into the linear op before it (ReLU, ReLU6, linear)."""
    return type(op).__name__ in ACTIVATIONS and clip_of(op) is not False


def float_set(model, graph_layers: Sequence[str]) -> list[str]:
    """The layers of a folded flat `model` that run float in a TFLite file keeping `graph_layers` (chosen
    activations, as the converters name them) float (tledge.quant.sensitivity.tflite_keep_float): each chosen
    layer, the linear layer it is fused into (back through fused activations), and every layer reading it (through
    pass-through layers, kept too) with the activation fused into a linear reader. For the weight repair's
    `keep`: they keep float weights and unrounded outputs, so every later layer is fitted to what the file
    computes (original weights put back after the repair undid the repair's compensation downstream: docs)."""
    producer, consumers, by_name = {}, {}, {}
    for op, node in nodes(model):
        by_name[op.name] = (op, node)
        for t in node.outputs:
            producer[id(t)] = (op, node)
        for t in node.input_tensors:
            consumers.setdefault(id(t), []).append((op, node))
    found: list[str] = []
    for name in filter(None, (keras_name(model, g) for g in graph_layers)):
        op, node = by_name[name]
        found.append(name)
        while _fused(op) and len(node.input_tensors) == 1 and id(node.input_tensors[0]) in producer:
            op, node = producer[id(node.input_tensors[0])]
            found.append(op.name)
        frontier = list(by_name[name][1].outputs)
        while frontier:
            for c_op, c_node in consumers.get(id(frontier.pop()), []):
                found.append(c_op.name)
                if type(c_op).__name__ in PASS_THROUGH:
                    frontier += list(c_node.outputs)
                elif linear_kind(c_op) and len(c_node.outputs) == 1:  # with the activation fused into it
                    after = consumers.get(id(c_node.outputs[0]), [])
                    if len(after) == 1 and _fused(after[0][0]):
                        found.append(after[0][0].name)
    return list(dict.fromkeys(found))
