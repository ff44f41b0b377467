"""Per-tensor 8-bit activation rounding as the converters do it (quantise, dequantise), for the sequential weight
repair (tledge.quant.repair, which re-exports these): `fake_quant` in numpy, in place, and `fake_quant_tensor`
with backend ops, the same bits; `logistic_int8` / `logistic_output`, a sigmoid or swish as an int8 TFLite file
computes it."""
from __future__ import annotations

import numpy as np

from tledge.quant.kerasgraph import KEEP_BYTES, activation_off, call_layer, keras_lib, linear_kind


def fake_quant(x, lo, hi, levels=256):
    """Per-tensor asymmetric 8-bit quantise-dequantise with the range widened to hold 0."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo <= 0:
        return x
    scale = (hi - lo) / (levels - 1)
    zp = np.round(-lo / scale)
    x = np.asarray(x)
    if x.dtype != np.float32:
        return ((np.clip(np.round(x / scale) + zp, 0, levels - 1) - zp) * scale).astype(np.float32)
    # in place, float32 where exact (integer steps), the product in float64 as before: 3x faster, same bits
    q = x / scale  # (scale is a Python float: float32 steps)
    np.round(q, out=q)
    np.clip(q, -zp, levels - 1 - zp, out=q)
    q += 0.0  # no -0.0 steps
    return np.multiply(q, scale, out=q, dtype=np.float64, casting="same_kind")


def fake_quant_tensor(x, lo, hi, levels=256, chunk_bytes=1 << 26, keep_bytes=None):
    """`fake_quant` of a float32 array or tensor with backend ops (the same steps: float32 division, half-to-even
    rounding, the product in float64), on every core, in slices of `chunk_bytes` along the first axis (on a whole
    activation the float64 temporaries took 6x its size). Up to `keep_bytes` (kerasgraph.KEEP_BYTES) the result
    is a backend tensor the next layer takes without a copy; larger ones are written into a numpy array
    (kerasgraph.call_layer says why)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo <= 0:
        return x
    ops = keras_lib().ops
    scale = (hi - lo) / (levels - 1)
    zp = float(np.round(-lo / scale))

    def one(part):
        q = ops.clip(ops.round(ops.divide(part, np.float32(scale))), -zp, levels - 1 - zp) + 0.0  # no -0.0 steps
        return ops.cast(ops.multiply(ops.cast(q, "float64"), scale), "float32")
    total = 4 * int(np.prod(x.shape))
    if len(x.shape) == 0 or total <= chunk_bytes:
        return one(x)
    step = max(1, chunk_bytes * x.shape[0] // total)
    if total <= (KEEP_BYTES if keep_bytes is None else keep_bytes):
        return ops.concatenate([one(x[i:i + step]) for i in range(0, x.shape[0], step)], axis=0)
    return _into_numpy(one, x, step)


def _into_numpy(one, x, step: int) -> np.ndarray:
    """`one` applied to slices of `step` along the first axis, written into one float32 numpy array."""
    out = np.empty(x.shape, np.float32)
    for i in range(0, x.shape[0], step):
        out[i:i + step] = np.asarray(one(x[i:i + step]))
    return out


LOGISTIC_RANGE = (0.0, 255.0 / 256.0)  # int8 LOGISTIC's output grid in TFLite: scale 1/256, zero point -128


def logistic_activation(op) -> str | None:
    """'swish' or 'sigmoid' where `op` (an Activation layer, or a conv / dense with that activation inside it) ends
    in a function an int8 TFLite file computes through LOGISTIC (swish: LOGISTIC then MUL), else None."""
    if type(op).__name__ != "Activation" and not linear_kind(op):  # SeparableConv2D, Conv1D, grouped convs: the
        return None  # sigmoid was applied to the layer's input (8 channels for 16), and the repair rungs failed
    name = getattr(getattr(op, "activation", None), "__name__", "")
    return {"swish": "swish", "silu": "swish", "sigmoid": "sigmoid"}.get(name)


def logistic_int8(kind: str, x, chunk_bytes=1 << 26):
    """What an int8 TFLite file computes for `kind` ('sigmoid' or 'swish', see `logistic_activation`) of x: the
    sigmoid written on LOGISTIC's fixed grid (final for 'sigmoid'), times x for 'swish' (whose product the file then
    rounds to its own grid). Slices of `chunk_bytes` along the first axis bound the temporaries; a larger result is
    a numpy array (as `fake_quant_tensor`'s)."""
    ops = keras_lib().ops

    def one(part):
        gate = fake_quant_tensor(ops.sigmoid(part), *LOGISTIC_RANGE)
        return ops.multiply(part, gate) if kind == "swish" else gate
    total = 4 * int(np.prod(x.shape))
    if len(x.shape) == 0 or total <= chunk_bytes:
        return one(x)
    return _into_numpy(one, x, max(1, chunk_bytes * x.shape[0] // total))


def logistic_output(op, qop, kind: str, f_call, q_call, x_q, act_range):
    """The quantised path's output of an op ending in a sigmoid or swish, as the int8 file computes it: for a conv
    / dense, its output first rounded to its own grid (the float model's range), since the file's LOGISTIC reads an
    int8 tensor; then the sigmoid on LOGISTIC's fixed grid (`logistic_int8`). `f_call` / `q_call`: the
    float / quantised layer's arguments and keyword arguments; `x_q`: the quantised path's input; `act_range`: the
    pre-activation's grid range from its float values ((lo, hi); tledge.quant.ranges.RANGE_OF)."""
    if not linear_kind(op):
        return logistic_int8(kind, x_q)
    with activation_off(op), activation_off(qop):
        view = np.asarray(call_layer(op, *f_call))
        pre = fake_quant_tensor(call_layer(qop, *q_call), *act_range(view))
    return logistic_int8(kind, pre)
