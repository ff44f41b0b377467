"""Per-tensor 8-bit activation rounding as the converters do it (quantise, dequantise), for the sequential weight
repair (tledge.quant.repair, which re-exports these): `fake_quant` in numpy, in place, and `fake_quant_tensor`
with backend ops, the same bits; `swish_int8`, a swish as an int8 TFLite file computes it."""
from __future__ import annotations

import numpy as np

from tledge.quant.kerasgraph import KEEP_BYTES, keras_lib


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


def swish(op) -> bool:
    """A Keras Activation layer computing swish (silu), which the converters split into a sigmoid and a multiply."""
    fn = getattr(op, "activation", None)
    return type(op).__name__ == "Activation" and getattr(fn, "__name__", "") in ("swish", "silu")


def swish_int8(x, chunk_bytes=1 << 26):
    """What an int8 TFLite file computes for swish before its output is rounded: the sigmoid is written on
    LOGISTIC's fixed int8 grid (scale 1/256, zero point -128), then multiplied by x. Slices of `chunk_bytes` along
    the first axis bound the temporaries; a larger result is a numpy array (as `fake_quant_tensor`'s)."""
    ops = keras_lib().ops

    def one(part):
        return ops.multiply(part, fake_quant_tensor(ops.sigmoid(part), 0.0, 255.0 / 256.0))
    total = 4 * int(np.prod(x.shape))
    if len(x.shape) == 0 or total <= chunk_bytes:
        return one(x)
    return _into_numpy(one, x, max(1, chunk_bytes * x.shape[0] // total))
