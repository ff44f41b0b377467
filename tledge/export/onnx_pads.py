"""Zero padding in front of a pooling op, kept out of onnxruntime's Pad fusion.

Keras writes `ZeroPadding2D` before a `MaxPooling2D` (ResNet50V2's `pool1_pad` -> `pool1_pool`, ResNet50's
`pool1_pad`), and tf2onnx writes that as `Pad` (constant 0) -> `MaxPool`. onnxruntime's level-1 optimiser
`Pad_Fusion` (onnxruntime/core/optimizer/pad_fusion.cc, onnxruntime 1.31) folds such a Pad into the pool's
own `pads`: right for a Conv, which pads with zeros, wrong for MaxPool, whose padding is -inf (a window of
negative values at the border then gives its maximum instead of 0), and for AveragePool, which leaves its
padding out of the mean. ResNet50V2's fp32 ONNX file gave max abs 0.113 and 22 of 24 labels with default
session options, 9.5e-6 with `Pad_Fusion` disabled (twenty-seventh session, family sweep). The same fold is
a known bug of onnx-optimizer's `fuse_pad_into_pool` (onnx/optimizer PR 318, onnxsim issue 290).

The fusion only applies to a pool "with explicit padding": `auto_pad="VALID"` (no padding, as the pool had)
keeps every runtime to the file's meaning. cv2.dnn reads it too.
"""
from __future__ import annotations

from tledge.quant.constadds import tensor_consumers

POOLS = ("MaxPool", "AveragePool")


def keep_zero_pads(model) -> int:
    """Mark every pool fed by a Pad alone `auto_pad="VALID"` (in place, main graph), where it has no padding of
    its own. Returns how many."""
    from onnx import helper

    consumers = tensor_consumers(model.graph)
    done = 0
    for node in model.graph.node:
        if node.op_type != "Pad" or len(consumers.get(node.output[0], [])) != 1:
            continue
        pool = consumers[node.output[0]][0]
        attrs = {a.name: helper.get_attribute_value(a) for a in pool.attribute}
        if pool.op_type not in POOLS or any(attrs.get("pads", ())) or attrs.get("auto_pad", b"NOTSET") != b"NOTSET":
            continue
        keep = [a for a in pool.attribute if a.name not in ("pads", "auto_pad")]
        del pool.attribute[:]
        pool.attribute.extend(keep + [helper.make_attribute("auto_pad", "VALID")])
        done += 1
    return done
