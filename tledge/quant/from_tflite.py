"""A Keras 3 functional model rebuilt from a float TFLite file, so the Keras-level int8 repairs
(tledge.quant.repair) apply to models no loader gives as Keras 3 (SavedModels): "a Keras 3 model
rebuilt from any loader".

Built from data only: the flatbuffer's op list, tensor indices, builtin options and constant tensors
(tledge.quant.tflite_bias.load / op_kinds / tensor_array); nothing in the file is executed. Each op
becomes the Keras layer a Keras-made classifier would have had, with the file's float weights:

  CONV_2D (OHWI -> Conv2D HWIO), DEPTHWISE_CONV_2D (1HW(C*M) -> DepthwiseConv2D HWCM), FULLY_CONNECTED
  (OI -> Dense IO); a fused RELU / RELU6 becomes a ReLU layer after them (what repair.requantised and
  the converters fuse back); ADD / SUB / MUL of two tensors -> Add / Subtract / Multiply; with a scalar
  or per-channel constant -> one Rescaling (chains merged), named like tledge's baked preprocessing
  (tledge.layers.BAKED_NAME) when it reads the graph input, so repair.exact_input sees it; MEAN over H, W
  -> GlobalAveragePooling2D; RESHAPE, SOFTMAX (beta 1), LOGISTIC, PAD (spatial) -> ZeroPadding2D,
  MAX_POOL_2D, AVERAGE_POOL_2D; RELU / RELU6 ops -> ReLU,
  HARD_SWISH -> Activation("hard_swish") (MobileNetV3), CONCATENATION of tensors -> Concatenate (DenseNet); a
  RESHAPE to [batch, constants] whose batch size the graph computes (SHAPE -> STRIDED_SLICE -> PACK,
  EfficientNet's squeeze-excite in a SavedModel) -> Reshape; an image's channels sliced one by one and
  concatenated in another order (STRIDED_SLICE x C -> CONCATENATION: caffe's BGR flip in front of a
  SavedModel) -> a 1x1 Conv2D with a permutation kernel.

Anything else (another op, a fused activation other than RELU/RELU6, one graph input or output other
than one float32 image and one tensor) gives None. The caller checks the copy against the file on real
inputs (tledge.export.repair_model) before using it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tledge._deps import require
from tledge.quant import tflite_bias

FUSED = {0: None, 1: "relu", 3: "relu6"}  # ActivationFunctionType NONE, RELU, RELU6
PADDING = {0: "same", 1: "valid"}  # Padding SAME, VALID


class Unsupported(Exception):
    pass


def from_tflite(data: bytes, name: str = "tledge_from_tflite"):
    """A keras.Model computing what the float TFLite file `data` computes, or None (see the module doc)."""
    try:
        return build(data, name)
    except (Unsupported, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None


def build(data: bytes, name: str = "tledge_from_tflite"):
    """from_tflite, raising Unsupported (or ValueError & co. from a malformed file) with the reason."""
    keras = require("keras", extra="export")
    model = tflite_bias.load(data)
    if len(model.subgraphs) != 1:
        raise Unsupported(f"{len(model.subgraphs)} subgraphs")
    g = model.subgraphs[0]
    if len(g.inputs) != 1 or len(g.outputs) != 1:
        raise Unsupported(f"{len(g.inputs)} inputs, {len(g.outputs)} outputs")
    t = g.tensors[int(g.inputs[0])]
    if tflite_bias.TENSOR_TYPES.get(t.type) is not np.float32 or len(t.shape) != 4:
        raise Unsupported("the input is not a float32 NHWC image")
    inp = keras.Input(tuple(int(d) for d in t.shape[1:]), dtype="float32", name="pixels")
    b = _Builder(model, keras, {int(g.inputs[0]): inp}, int(g.inputs[0]))
    for i, (op, kind) in enumerate(zip(g.operators, tflite_bias.op_kinds(model))):
        handler = HANDLERS.get(kind or "")
        if handler is None:
            raise Unsupported(f"op {kind}")
        out = handler(b, op, f"{kind.lower()}_{i}")
        b.values[int(op.outputs[0])] = out
    return keras.Model(inp, b.tensor(int(g.outputs[0])), name=name)


@dataclass
class _Affine:
    """x * scale + offset of a tensor, not made into a layer yet (consecutive constant ops merge)."""

    source: int  # tensor index
    scale: np.ndarray  # float64, shape () or (C,)
    offset: np.ndarray
    made: object = None


@dataclass
class _Shape:
    """A shape computed in the graph from a tensor with a dynamic batch (Keras' Reshape in a SavedModel:
    SHAPE -> STRIDED_SLICE [0] -> PACK with constants -> RESHAPE): `dims` with None for the batch, or
    `dims` None for the whole SHAPE, or `batch` for the sliced batch size alone."""

    dims: tuple | None = None
    batch: bool = False


@dataclass
class _Channel:
    """One channel of a computed NHWC tensor, x[..., c:c+1] (STRIDED_SLICE): only read by a CONCATENATION
    that puts the channels of one tensor back in another order (caffe's RGB -> BGR flip)."""

    source: int  # tensor index
    channel: int


class _Builder:
    def __init__(self, model, keras, values: dict, input_index: int):
        self.model, self.keras, self.values, self.input_index = model, keras, values, input_index
        self.baked = False  # a Rescaling of the input named as tledge's baked preprocessing (once)

    def const(self, index: int) -> np.ndarray | None:
        if index < 0 or index in self.values:
            return None
        return tflite_bias.tensor_array(self.model, index)

    def tensor(self, index: int):
        """The Keras tensor of TFLite tensor `index` (a pending affine made into one Rescaling layer)."""
        if index not in self.values:
            raise Unsupported(f"tensor {index} is neither computed nor a readable constant")
        v = self.values[index]
        if isinstance(v, (_Shape, _Channel)):
            raise Unsupported("a computed shape or a channel slice used as a tensor")
        return self.made(v) if isinstance(v, _Affine) else v

    def made(self, a: _Affine):
        """The one Rescaling layer's output for a pending affine."""
        if a.made is None:
            a.made = self._rescaling(a)
        return a.made

    def _rescaling(self, a: _Affine):
        from tledge.layers import BAKED_NAME

        x = self.tensor(a.source)
        name = None
        if a.source == self.input_index and not self.baked:
            name, self.baked = BAKED_NAME, True

        def value(arr):
            return float(arr) if arr.ndim == 0 else [float(v) for v in arr]

        return self.keras.layers.Rescaling(value(a.scale), value(a.offset), dtype="float32", name=name)(x)

    def inputs(self, op) -> list[int]:
        return [int(i) for i in op.inputs]


def _activation(b: _Builder, x, code: int, name: str):
    if code not in FUSED:
        raise Unsupported(f"fused activation {code}")
    if FUSED[code] is None:
        return x
    return b.keras.layers.ReLU(max_value=6.0 if FUSED[code] == "relu6" else None, name=f"{name}_{FUSED[code]}")(x)


def _set(layer, x, weights: list[np.ndarray]):
    y = layer(x)
    layer.set_weights([np.asarray(w, np.float32) for w in weights])
    return y


def _bias(b: _Builder, index: int, n: int) -> np.ndarray:
    bias = b.const(index) if index >= 0 else np.zeros(n, np.float32)
    if bias is None or bias.shape != (n,) or bias.dtype != np.float32:
        raise Unsupported("a bias that is not a float32 constant")
    return bias


def _weight(b: _Builder, index: int, ndim: int) -> np.ndarray:
    w = b.const(index)
    if w is None or w.dtype != np.float32 or w.ndim != ndim:
        raise Unsupported("a weight that is not a float32 constant")
    return w


def _conv(b: _Builder, op, name: str):
    ins, o = b.inputs(op), op.builtinOptions
    x, w = b.tensor(ins[0]), _weight(b, ins[1], 4)  # OHWI
    if int(x.shape[-1]) != w.shape[3]:
        raise Unsupported("grouped convolution")
    layer = b.keras.layers.Conv2D(w.shape[0], w.shape[1:3], strides=(o.strideH, o.strideW),
                                  padding=PADDING[o.padding], dilation_rate=(o.dilationHFactor, o.dilationWFactor),
                                  use_bias=True, name=name)
    y = _set(layer, x, [w.transpose(1, 2, 3, 0), _bias(b, ins[2] if len(ins) > 2 else -1, w.shape[0])])
    return _activation(b, y, o.fusedActivationFunction, name)


def _depthwise(b: _Builder, op, name: str):
    ins, o = b.inputs(op), op.builtinOptions
    x, w = b.tensor(ins[0]), _weight(b, ins[1], 4)  # 1, H, W, C*M
    c = int(x.shape[-1])
    if w.shape[0] != 1 or w.shape[3] % c or w.shape[3] // c != max(int(o.depthMultiplier), 1):
        raise Unsupported("depthwise weight shape")
    m = w.shape[3] // c
    layer = b.keras.layers.DepthwiseConv2D(w.shape[1:3], strides=(o.strideH, o.strideW), padding=PADDING[o.padding],
                                           depth_multiplier=m, dilation_rate=(o.dilationHFactor, o.dilationWFactor),
                                           use_bias=True, name=name)
    kernel = w[0].reshape(w.shape[1], w.shape[2], c, m)  # TFLite channel c*M + m, as Keras orders it
    y = _set(layer, x, [kernel, _bias(b, ins[2] if len(ins) > 2 else -1, w.shape[3])])
    return _activation(b, y, o.fusedActivationFunction, name)


def _dense(b: _Builder, op, name: str):
    ins, o = b.inputs(op), op.builtinOptions
    x, w = b.tensor(ins[0]), _weight(b, ins[1], 2)  # O, I
    if o.weightsFormat != 0:
        raise Unsupported("fully connected with shuffled weights")
    if len(x.shape) > 2 and not o.keepNumDims:  # TFLite flattens the input to (-1, I) itself
        if int(np.prod([int(d) for d in x.shape[1:]])) != w.shape[1]:
            raise Unsupported("fully connected whose input does not flatten to one row per image")
        x = b.keras.layers.Reshape((w.shape[1],), name=f"{name}_flat")(x)
    if int(x.shape[-1]) != w.shape[1]:
        raise Unsupported("fully connected input size")
    layer = b.keras.layers.Dense(w.shape[0], use_bias=True, name=name)
    y = _set(layer, x, [w.T, _bias(b, ins[2] if len(ins) > 2 else -1, w.shape[0])])
    return _activation(b, y, o.fusedActivationFunction, name)


def _per_channel(c: np.ndarray, channels: int) -> np.ndarray:
    if c.dtype != np.float32 or (c.size != 1 and (c.size != channels or c.shape[-1] != channels)):
        raise Unsupported("a constant that is neither a scalar nor per channel")
    return c.astype(np.float64).reshape(()) if c.size == 1 else c.astype(np.float64).reshape(-1)


def _binary(kind: str):
    def handler(b: _Builder, op, name: str):
        ins, o = b.inputs(op), op.builtinOptions
        code = o.fusedActivationFunction if o is not None else 0
        consts = [b.const(i) for i in ins[:2]]
        if all(c is None for c in consts):
            layer = {"ADD": b.keras.layers.Add, "SUB": b.keras.layers.Subtract, "MUL": b.keras.layers.Multiply}[kind]
            return _activation(b, layer(name=name)([b.tensor(ins[0]), b.tensor(ins[1])]), code, name)
        if all(c is not None for c in consts):
            raise Unsupported(f"{kind} of two constants")
        pos = 0 if consts[1] is not None else 1  # the tensor operand
        a = _affine(b, ins[pos], kind, consts[1 - pos], tensor_first=pos == 0)
        return a if code == 0 else _activation(b, b.made(a), code, name)
    return handler


def _affine(b: _Builder, src: int, kind: str, c: np.ndarray, *, tensor_first: bool) -> _Affine:
    """The pending affine of `src` op `c`, merged with the one `src` already is."""
    prev = b.values.get(src)
    if not isinstance(prev, _Affine):
        prev = _Affine(src, np.asarray(1.0), np.asarray(0.0))
    c = _per_channel(c, int(b.tensor(prev.source).shape[-1]))
    scale, offset = prev.scale, prev.offset
    if kind == "MUL":
        scale, offset = scale * c, offset * c
    elif kind == "ADD":
        offset = offset + c
    elif tensor_first:  # x - c
        offset = offset - c
    else:  # c - x
        scale, offset = -scale, c - offset
    return _Affine(prev.source, np.asarray(scale), np.asarray(offset))


def _mean(b: _Builder, op, name: str):
    ins, o = b.inputs(op), op.builtinOptions
    x, axes = b.tensor(ins[0]), b.const(ins[1])
    if axes is None or len(x.shape) != 4 or sorted(int(a) % 4 for a in axes.reshape(-1)) != [1, 2]:
        raise Unsupported("MEAN other than over height and width")
    return b.keras.layers.GlobalAveragePooling2D(keepdims=bool(o.keepDims) if o is not None else False, name=name)(x)


def _reshape(b: _Builder, op, name: str):
    ins, o = b.inputs(op), op.builtinOptions
    computed = b.values.get(ins[1]) if len(ins) > 1 else None
    if isinstance(computed, _Shape) and computed.dims is not None:  # [batch, 1, 1, C] packed in the graph
        shape = np.asarray([-1] + list(computed.dims[1:]))
    else:
        shape = b.const(ins[1]) if len(ins) > 1 else None
    if shape is None and o is not None and o.newShape is not None:
        shape = np.asarray(o.newShape)
    if shape is None or shape.ndim != 1 or len(shape) < 1 or int(shape[0]) not in (1, -1):
        raise Unsupported("RESHAPE without a constant batch-first shape")
    rest = [int(d) for d in shape[1:]]
    if int(shape[0]) == -1 and -1 in rest:
        raise Unsupported("RESHAPE with two free dimensions")
    return b.keras.layers.Reshape(tuple(rest), name=name)(b.tensor(ins[0]))


def _shape(b: _Builder, op, name: str):
    b.tensor(b.inputs(op)[0])  # a computed tensor
    return _Shape()


def _strided_slice(b: _Builder, op, name: str):
    """The batch size out of a SHAPE ([0:1:1], axis shrunk), or one channel of an NHWC tensor."""
    ins, o = b.inputs(op), op.builtinOptions
    src = b.values.get(ins[0])
    bounds = [b.const(i) for i in ins[1:4]]
    if len(bounds) != 3 or any(c is None for c in bounds) or (o.ellipsisMask, o.newAxisMask) != (0, 0):
        raise Unsupported("STRIDED_SLICE without constant bounds")
    begin, end, strides = (c.reshape(-1).tolist() for c in bounds)
    if isinstance(src, _Shape) and src.dims is None and not src.batch:
        if (begin, end, strides) == ([0], [1], [1]) and (o.beginMask, o.endMask, o.shrinkAxisMask) == (0, 0, 1):
            return _Shape(batch=True)
    elif src is not None and not isinstance(src, (_Shape, _Channel)):
        channels = int(b.tensor(ins[0]).shape[-1]) if len(b.tensor(ins[0]).shape) == 4 else 0
        if (len(begin) == 4 and strides == [1, 1, 1, 1] and o.beginMask == o.endMask == 7 and o.shrinkAxisMask == 0
                and 0 <= begin[3] < channels and end[3] == begin[3] + 1):
            return _Channel(ins[0], int(begin[3]))
    raise Unsupported("STRIDED_SLICE other than the batch size of a SHAPE or one channel of an image")


def _pack(b: _Builder, op, name: str):
    """A shape [batch, constants...] for RESHAPE."""
    ins, o = b.inputs(op), op.builtinOptions
    first = b.values.get(ins[0])
    rest = [b.const(i) for i in ins[1:]]
    if int(o.axis) != 0 or not (isinstance(first, _Shape) and first.batch) \
            or any(c is None or c.size != 1 or c.dtype.kind not in "iu" for c in rest):
        raise Unsupported("PACK other than [batch size, constants] of a shape")
    return _Shape(dims=(None,) + tuple(int(c.reshape(())) for c in rest))


def _softmax(b: _Builder, op, name: str):
    if op.builtinOptions is not None and abs(float(op.builtinOptions.beta) - 1.0) > 1e-7:
        raise Unsupported("SOFTMAX with beta != 1")
    return b.keras.layers.Softmax(name=name)(b.tensor(b.inputs(op)[0]))


def _logistic(b: _Builder, op, name: str):
    return b.keras.layers.Activation("sigmoid", name=name)(b.tensor(b.inputs(op)[0]))


def _pad(b: _Builder, op, name: str):
    ins = b.inputs(op)
    x, pads = b.tensor(ins[0]), b.const(ins[1])
    if pads is None or pads.shape != (4, 2) or np.any(pads[0]) or np.any(pads[3]) or len(x.shape) != 4:
        raise Unsupported("PAD other than spatial zero padding")
    return b.keras.layers.ZeroPadding2D(((int(pads[1, 0]), int(pads[1, 1])), (int(pads[2, 0]), int(pads[2, 1]))),
                                        name=name)(x)


def _relu(max_value: float | None):
    def handler(b: _Builder, op, name: str):
        return b.keras.layers.ReLU(max_value=max_value, name=name)(b.tensor(b.inputs(op)[0]))
    return handler


def _hard_swish(b: _Builder, op, name: str):
    """TFLite's HARD_SWISH is x * relu6(x + 3) / 6, Keras' hard_swish (MobileNetV3)."""
    return b.keras.layers.Activation("hard_swish", name=name)(b.tensor(b.inputs(op)[0]))


def _concatenation(b: _Builder, op, name: str):
    """Data-only: the inputs side by side (DenseNet); constant inputs are not supported. Single channels of
    one tensor put back in another order (caffe's BGR flip) -> a 1x1 Conv2D with a permutation kernel
    (exact in float), as tledge bakes caffe preprocessing."""
    ins, o = b.inputs(op), op.builtinOptions
    picks = [b.values.get(i) for i in ins]
    if any(isinstance(p, _Channel) for p in picks):
        return _activation(b, _permutation(b, picks, int(o.axis), name), o.fusedActivationFunction, name)
    if any(b.const(i) is not None for i in ins):
        raise Unsupported("CONCATENATION with a constant input")
    xs = [b.tensor(i) for i in ins]
    if len(xs) < 2:
        raise Unsupported("CONCATENATION of one tensor")
    y = b.keras.layers.Concatenate(axis=int(o.axis), name=name)(xs)
    return _activation(b, y, o.fusedActivationFunction, name)


def _permutation(b: _Builder, picks: list, axis: int, name: str):
    if not all(isinstance(p, _Channel) and p.source == picks[0].source for p in picks) or axis not in (3, -1):
        raise Unsupported("CONCATENATION of channel slices other than one tensor's channels reordered")
    x = b.tensor(picks[0].source)
    order = [p.channel for p in picks]
    if sorted(order) != list(range(int(x.shape[-1]))):
        raise Unsupported("CONCATENATION of channel slices that are not a permutation")
    kernel = np.zeros((1, 1, len(order), len(order)), np.float32)
    for out, src in enumerate(order):
        kernel[0, 0, src, out] = 1.0
    return _set(b.keras.layers.Conv2D(len(order), 1, use_bias=False, name=f"{name}_channels"), x, [kernel])


def _pool(kind: str):
    def handler(b: _Builder, op, name: str):
        o = op.builtinOptions
        layer = b.keras.layers.MaxPooling2D if kind == "MAX" else b.keras.layers.AveragePooling2D
        y = layer((o.filterHeight, o.filterWidth), strides=(o.strideH, o.strideW), padding=PADDING[o.padding],
                  name=name)(b.tensor(b.inputs(op)[0]))
        return _activation(b, y, o.fusedActivationFunction, name)
    return handler


HANDLERS = {
    "CONV_2D": _conv, "DEPTHWISE_CONV_2D": _depthwise, "FULLY_CONNECTED": _dense,
    "ADD": _binary("ADD"), "SUB": _binary("SUB"), "MUL": _binary("MUL"),
    "SHAPE": _shape, "STRIDED_SLICE": _strided_slice, "PACK": _pack,
    "RELU": _relu(None), "RELU6": _relu(6.0), "HARD_SWISH": _hard_swish, "CONCATENATION": _concatenation,
    "MEAN": _mean, "RESHAPE": _reshape, "SOFTMAX": _softmax, "LOGISTIC": _logistic, "PAD": _pad,
    "MAX_POOL_2D": _pool("MAX"), "AVERAGE_POOL_2D": _pool("AVERAGE"),
}
