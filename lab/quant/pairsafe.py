"""Pair-safe s8 weights: a QDQ U8S8 file whose u8 x s8 pair sums cannot saturate onnxruntime's AVX2 kernels.

A LAB EXPERIMENT, not in the export: it holds on both x86 kernel paths and makes int8 ONNX files faster than fp32,
but on the zoo it lost fidelity (docs/int8-fidelity.md, "Pair-safe U8S8"). (OpenCV 5.1's dnn refused onnxruntime's U8S8
files as written, a Gemm head's int32 bias; quantize_int8 now writes that bias as a float constant, which the bias
correction here moves in float units.)

Without VNNI, onnxruntime's u8 x s8 kernels (`vpmaddubsw`) add two neighbouring products of the reduction axis
(im2col order (kh, kw, cin), cin fastest; a MatMul's K) into a saturating int16 (tledge.quant.saturation). Both
activations are >= 0, so a pair can only saturate when its two weights have the same sign; it cannot when
`a1 * |w1| + a2 * |w2| <= limit`, a1, a2 the largest uint8 values those two input positions take (255 on any
input). tledge falls back to uint8 weights (U8U8, exact everywhere) when any pair saturated, and onnxruntime's U8U8
convolutions take 2.8x the time of U8S8 ones. Here only the output channels with a pair over the bound change: each
is rounded again on a grid just coarse enough (scale x need / limit, at most about 2x: 7 bits for that channel),
a pair still over after rounding is shrunk towards zero, and the change's mean effect goes into the int32 bias
(bias correction on calibration images). Moving only the offending weights instead (`method="shrink"`) moves 2 %
of them but by up to 79 steps: measured worse (docs/int8-fidelity.md, "Pair-safe U8S8").

Only group-1 Conv, MatMul and Gemm with uint8 activations and int8 weights are touched
(tledge.quant.saturation.conv_inputs; depthwise kernels use 16-bit sums); a MatMul / Gemm keeps the replay's 3/4
of int16 (saturation.DENSE_HEADROOM), so `saturation.check` finds nothing on a file made here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tledge._deps import require
from tledge.quant import unfused
from tledge.quant.saturation import DENSE_HEADROOM, INT16_MAX, conv_inputs
from tledge.quant.subset import spread


@dataclass(frozen=True)
class Moved:
    """What `make_safe` changed in one weight."""

    node: str
    channels: int  # output channels of the layer
    coarser: int  # output channels put on a coarser grid
    weights: int  # int8 weights of the layer
    moved: int  # int8 values that changed
    widest: float  # the largest factor a channel's scale grew by (1.0: none)


@dataclass(frozen=True)
class _Layer:
    node: object
    act: str  # the uint8 input tensor
    init: str  # the int8 weight initializer
    scale: str  # its per-channel (or per-tensor) scale initializer
    wk: np.ndarray  # (O, K) int32 in the kernels' reduction order
    bias: tuple[str, str] | None  # the int32 bias initializer and its scale (Conv / Gemm input 2 through a DQ)
    float_bias: tuple[str, str] | None = None  # a float bias initializer (quantize_int8's Gemm) and the input's scale


def make_safe(qdq_bytes: bytes, pixels: np.ndarray | None = None, *, method: str = "coarsen", observed: bool = False,
              margin: float = 1.25, images: int = 64) -> tuple[bytes, list[Moved]]:
    """The file with pair-safe weights, and what changed per layer. Every activation is bounded by 255 (safe on any
    input), or with `observed` by each input channel's largest value on `images` of `pixels` (an even spread) times
    `margin`.
    `method="coarsen"`: each output channel with a pair over the bound is rounded again on a grid just coarse enough
    (its scale times need / limit, at most about 2: a 7-bit grid), then any pair still over is shrunk; "shrink":
    only the pairs over the bound move (shrink_pairs), scales kept. With `pixels`, the change's mean effect on those
    images goes into the int32 bias (bias correction with each input channel's mean activation)."""
    onnx = require("onnx", extra="export")
    from onnx import numpy_helper

    model = onnx.load_from_string(qdq_bytes)
    layers = _layers(model)
    if not layers:
        return qdq_bytes, []
    stats = _activation_stats(model, sorted({ly.act for ly in layers}), spread(pixels, images)) \
        if pixels is not None else {}
    inits = {i.name: i for i in model.graph.initializer}
    report = []
    for ly in layers:
        amax, mean = _bounds(ly, stats.get(ly.act), margin, observed)
        limit = INT16_MAX if ly.node.op_type == "Conv" else DENSE_HEADROOM
        grow = channel_growth(ly.wk, amax, limit) if method == "coarsen" else np.ones(len(ly.wk))
        if numpy_helper.to_array(inits[ly.scale]).size == 1:  # per-tensor: one grid for every channel
            grow = np.full(len(ly.wk), grow.max())
        new = shrink_pairs(np.rint(ly.wk / grow[:, None]).astype(np.int64), amax, limit)
        if np.array_equal(new, ly.wk) and grow.max() == 1.0:
            continue
        if ly.float_bias is not None and mean is not None:  # float units: old weight steps x input scale
            steps = numpy_helper.to_array(inits[ly.scale]).astype(np.float64) * \
                float(numpy_helper.to_array(inits[ly.float_bias[1]]).reshape(-1)[0])
            fb = numpy_helper.to_array(inits[ly.float_bias[0]]).astype(np.float64)
            _put(inits, ly.float_bias[0], (fb - (new * grow[:, None] - ly.wk) @ mean * steps).astype(np.float32))
        _put(inits, ly.init, _from_rows(new, numpy_helper.to_array(inits[ly.init]), ly.node).astype(np.int8))
        _widen(inits, ly.scale, grow)
        if ly.bias is not None:
            b = numpy_helper.to_array(inits[ly.bias[0]]).astype(np.float64)
            if mean is not None:  # original int32 units: the change's mean effect put back
                b = b - (new * grow[:, None] - ly.wk) @ mean
            _put(inits, ly.bias[0], np.clip(np.rint(b / grow), -2 ** 31, 2 ** 31 - 1).astype(np.int32))
            _widen(inits, ly.bias[1], grow)
        report.append(Moved(ly.node.name, len(ly.wk), int(np.sum(grow > 1)), int(ly.wk.size),
                            int(np.count_nonzero(new != ly.wk)), float(grow.max())))
    return model.SerializeToString(), report


def is_safe(model) -> bool:
    """Whether no u8 x s8 pair of the QDQ model (an onnx.ModelProto) can leave its limit on any input (activations
    up to 255): what make_safe guarantees. False when nothing is eligible."""
    layers = conv_inputs(model)
    return bool(layers) and all(
        channel_growth(_rows(w, node), np.full(_rows(w, node).shape[1], 255),
                       INT16_MAX if node.op_type == "Conv" else DENSE_HEADROOM).max() <= 1.0
        for node, _, w, _ in layers)


def channel_growth(wk: np.ndarray, amax: np.ndarray, limit: int = INT16_MAX) -> np.ndarray:
    """Per output channel of (O, K) int weights: by how much its scale must grow (>= 1) for the largest same-sign
    pair's amax-weighted sum, and every single product, to fit `limit`."""
    o, k = wk.shape
    w = np.pad(np.abs(np.asarray(wk, np.int64)) * np.asarray(amax, np.int64), ((0, 0), (0, k % 2))).reshape(o, -1, 2)
    same = np.pad(np.sign(wk), ((0, 0), (0, k % 2))).reshape(o, -1, 2).prod(axis=2) > 0
    need = np.maximum(np.where(same, w.sum(axis=2), w.max(axis=2)).max(axis=1), 0)
    return np.maximum(need / limit, 1.0)


def _widen(inits: dict, name: str, grow: np.ndarray) -> None:
    """A per-channel (or per-tensor) scale initializer times each channel's growth."""
    from onnx import numpy_helper

    scale = numpy_helper.to_array(inits[name])
    _put(inits, name, (scale * (grow if scale.ndim else grow.max())).astype(np.float32))


def _put(inits: dict, name: str, value: np.ndarray) -> None:
    from onnx import numpy_helper

    inits[name].CopyFrom(numpy_helper.from_array(np.asarray(value), name))


def shrink_pairs(wk: np.ndarray, amax: np.ndarray, limit: int = INT16_MAX, balanced: bool = True) -> np.ndarray:
    """(O, K) int weights with every same-sign neighbouring pair (k = 2i, 2i + 1) satisfying
    amax[2i] * |w[2i]| + amax[2i+1] * |w[2i+1]| <= limit, each weight moved towards zero. `balanced`: the least
    squared change (both weights shrink in proportion to their activation bounds, rounded up); else the pair's
    larger contribution shrinks alone by the fewest steps. Either way a weight that reaches zero passes the rest of
    the excess to the other one. A pair of opposite signs sums to at most the larger product: each
    amax[k] * |w[k]| <= limit (only a limit under 255 x 127 moves any)."""
    o, k = wk.shape
    w = np.pad(np.asarray(wk, np.int64), ((0, 0), (0, k % 2)))
    a = np.pad(np.asarray(amax, np.int64), (0, k % 2))
    m = np.minimum(np.abs(w), limit // np.maximum(a, 1)).reshape(o, -1, 2)
    same = (np.sign(w).reshape(o, -1, 2).prod(axis=2) > 0)
    a2 = a.reshape(-1, 2)
    excess = np.where(same, (m * a2).sum(axis=2) - limit, 0)
    first = np.argmax(m * a2, axis=2)  # (O, K/2): which of the pair contributes more
    rows, cols = np.nonzero(excess > 0)
    for r, c in zip(rows, cols):
        e, pair = int(excess[r, c]), a2[c]
        if balanced:  # m_i - lam * a_i with lam * (a1^2 + a2^2) = e
            lam = e / max(1, int(pair @ pair))
            for j in (0, 1):
                steps = min(int(m[r, c, j]), int(np.ceil(lam * pair[j])))
                m[r, c, j] -= steps
                e -= steps * int(pair[j])
        for j in (first[r, c], 1 - first[r, c]):
            if e <= 0 or pair[j] == 0:
                continue
            steps = min(int(m[r, c, j]), -(-e // int(pair[j])))
            m[r, c, j] -= steps
            e -= steps * int(pair[j])
    out = (np.sign(w) * m.reshape(o, -1))[:, :k]
    return out.astype(np.asarray(wk).dtype)


def _layers(model) -> list[_Layer]:
    """The eligible layers (saturation.conv_inputs) whose weight, scale and bias initializers are their own."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    uses: dict = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    out = []
    for node, act, w, _ in conv_inputs(model):
        dq = producer[node.input[1]]
        bias = None
        bdq = producer.get(node.input[2]) if len(node.input) > 2 else None
        if bdq is not None and bdq.op_type == "DequantizeLinear" and bdq.input[0] in inits and bdq.input[1] in inits:
            bias = (bdq.input[0], bdq.input[1])
        fbias = (node.input[2], producer[node.input[0]].input[1]) if bias is None and len(node.input) > 2 \
            and node.input[2] in inits else None
        names = [dq.input[0], dq.input[1], *(bias or ()), *(fbias[:1] if fbias else ())]
        if len(dq.input) < 2 or any(n not in inits or uses.get(n, 0) != 1 for n in names):
            continue  # a shared initializer: rescaling it would change another node too
        out.append(_Layer(node, act, dq.input[0], dq.input[1], _rows(w, node), bias, fbias))
    return out


def _transposed(node) -> bool:
    return node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)


def _rows(w: np.ndarray, node) -> np.ndarray:
    """The weight as (O, K) in the kernels' reduction order: a Conv's (kh, kw, cin), a MatMul's K."""
    if node.op_type == "Conv":
        return np.transpose(w, (0, 2, 3, 1)).reshape(w.shape[0], -1).astype(np.int32)
    return (w if _transposed(node) else w.T).astype(np.int32)


def _from_rows(wk: np.ndarray, like: np.ndarray, node) -> np.ndarray:
    if node.op_type == "Conv":
        o, c, kh, kw = like.shape
        return np.transpose(wk.reshape(o, kh, kw, c), (0, 3, 1, 2))
    return wk if _transposed(node) else wk.T


def _bounds(ly: _Layer, stat, margin: float, observed: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Per reduction position: the activation bound (uint8 units) and the mean activation minus its zero point
    (None without calibration statistics)."""
    k = ly.wk.shape[1]
    if stat is None:
        return np.full(k, 255, np.int64), None
    cmax, cmean, zp = stat
    reps = k // len(cmax)  # a Conv's kh * kw positions per input channel (cin fastest)
    bound = np.minimum(255, np.ceil(np.maximum(cmax, zp) * margin)).astype(np.int64) if observed else \
        np.full(len(cmax), 255, np.int64)
    return np.tile(bound, reps), np.tile(cmean - zp, reps)


def _activation_stats(model, tensors: list[str], pixels: np.ndarray) -> dict:
    """{uint8 tensor: (per-channel max, per-channel mean, zero point)} on `pixels` (channel axis 1, or the last of a
    2-D tensor)."""
    from onnx import numpy_helper

    sess = unfused.session(model.SerializeToString(), tensors)  # (bytes: a copy gets the outputs, not `model`)
    feed = sess.get_inputs()[0].name
    inits = {i.name: i for i in model.graph.initializer}
    zps = {}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in tensors and len(n.input) > 2 and n.input[2] in inits:
            zps[n.input[0]] = float(numpy_helper.to_array(inits[n.input[2]]).reshape(-1)[0])
    acc: dict = {}
    for i in range(0, len(pixels), 16):
        for t, a in zip(tensors, sess.run(tensors, {feed: np.asarray(pixels[i:i + 16], np.float32)})):
            a = a.reshape(-1, a.shape[-1]) if a.ndim == 2 else np.moveaxis(a, 1, -1).reshape(-1, a.shape[1])
            mx, sm, n = a.max(axis=0).astype(np.float64), a.sum(axis=0, dtype=np.float64), len(a)
            if t in acc:
                mx, sm, n = np.maximum(mx, acc[t][0]), sm + acc[t][1], n + acc[t][2]
            acc[t] = (mx, sm, n)
    return {t: (mx, sm / n, zps.get(t, 0.0)) for t, (mx, sm, n) in acc.items()}
