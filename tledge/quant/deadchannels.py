"""Dead output channels zeroed before onnxruntime quantises a graph.

BatchNorm folding leaves some convolution channels with weights of ~1e-12 (a channel the network
switched off) and an ordinary bias (MobileNet v1 0.25 ImageNet: 10 such channels in 5 convolutions).
onnxruntime quantises weights per channel, so such a channel gets a weight scale of ~1e-14, and its
int32 bias scale (input scale x weight scale) cannot hold the bias. For int8 weights (zero point 0)
onnxruntime widens the weight scale itself; for uint8 weights (the U8U8 schemes tledge uses when U8S8
would saturate on AVX2, tledge.export.onnx.ROBUST_SCHEME) it clips the bias and logs "Quantized bias ...
exceeds the range of a int32". The clipped channel then outputs ~0 instead of its
bias; after a ReLU that is harmless for a negative bias and wrong for a positive one. TFLite's
converter widens such weight scales itself. Zeroing a channel whose largest weight is below `rel` of
its layer's largest changes the float function by at most that channel's weights times its input
(~1e-12 here), and onnxruntime then gives it scale 1, under which the bias is exact.
"""
from __future__ import annotations

import numpy as np

from tledge._deps import require

REL = 1e-6
OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def zero_dead(model, rel: float | None = None) -> dict[str, int]:
    """Zero, in place, the output channels of Conv / Gemm weights whose largest |w| is below `rel` times
    the layer's largest (default REL). Returns {node name: channels zeroed}."""
    rel = REL if rel is None else rel
    numpy_helper = require("onnx.numpy_helper", extra="export")

    inits = {i.name: i for i in model.graph.initializer}
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for name in n.input:
            uses[name] = uses.get(name, 0) + 1
    done: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type not in OPS or len(n.input) < 2 or n.input[1] not in inits or uses[n.input[1]] != 1:
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        if w.ndim < 2 or not np.issubdtype(w.dtype, np.floating):
            continue
        axis = _out_axis(n, w)
        amax = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1)
        dead = (amax < rel * amax.max()) & (amax > 0)
        if not dead.any():
            continue
        w = np.moveaxis(w.copy(), axis, 0)
        w[dead] = 0
        inits[n.input[1]].CopyFrom(numpy_helper.from_array(np.moveaxis(w, 0, axis), n.input[1]))
        done[n.name or n.output[0]] = int(dead.sum())
    return done


def _out_axis(node, w) -> int:
    """The output-channel axis of a weight: 0 for Conv (OIHW), 1 for ConvTranspose (IOHW), the last for
    MatMul (K, N) and Gemm unless transB."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans else w.ndim - 1
    return w.ndim - 1
