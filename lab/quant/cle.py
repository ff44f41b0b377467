"""Lab experiment, not run by the product (measured: no gain with per-channel weights, see
docs/int8-fidelity.md). Cross-layer equalisation (Nagel et al. 2019) of a folded flat Keras model.

Pairs of conv/depthwise/dense layers joined only by single-use, channel-wise positively
homogeneous ops (ReLU, ReLU6, ZeroPadding2D, GlobalAveragePooling2D) get the first layer's output
channel i divided by s_i and the second layer's input channel i multiplied by s_i. Exact for ReLU;
through ReLU6 only while no calibration activation is pushed across the clip (relu6="bound").
"""
from __future__ import annotations

import numpy as np

from tledge.errors import ExportError
from tledge.quant.kerasgraph import clip_of, clone_layer, keras_lib, linear_kind, rebuild_model, single_use

def cle_pairs(model):
    """[(first, second, clip, rectified)] of layers that can be equalised: first's output channels
    reach second's input channels through single-use channel-wise homogeneous ops only."""
    pairs = []
    for first in model.layers:
        kind = linear_kind(first)
        act = first.get_config().get("activation")
        if kind is None or not single_use(first) or act not in ("linear", "relu"):
            continue
        if kind == "DepthwiseConv2D" and first.depth_multiplier != 1:
            continue
        op, clip, rectified = first._outbound_nodes[0].operation, None, act == "relu"
        while op is not None and clip_of(op) is not False and single_use(op):
            c = clip_of(op)
            clip = c if c is not None else clip
            rectified = rectified or type(op).__name__ in ("ReLU", "Activation")
            op = op._outbound_nodes[0].operation if op._outbound_nodes else None
        if op is not None and linear_kind(op) and len(op._inbound_nodes) == 1:
            if type(op).__name__ != "DepthwiseConv2D" or op.depth_multiplier == 1:
                pairs.append((first, op, clip, rectified))
    return pairs


def _out_ranges(layer, kernel):
    if type(layer).__name__ == "DepthwiseConv2D":
        return np.abs(kernel[:, :, :, 0]).max(axis=(0, 1))
    return np.abs(kernel.reshape(-1, kernel.shape[-1])).max(axis=0)


def _in_ranges(layer, kernel):
    if type(layer).__name__ == "DepthwiseConv2D":
        return np.abs(kernel[:, :, :, 0]).max(axis=(0, 1))
    if type(layer).__name__ == "Dense":
        return np.abs(kernel).max(axis=1)
    return np.abs(kernel).max(axis=(0, 1, 3))


def _scale_in(layer, kernel, s):
    if type(layer).__name__ == "DepthwiseConv2D":
        return kernel * s[None, None, :, None]
    return kernel * (s[:, None] if type(layer).__name__ == "Dense" else s[None, None, :, None])


def _channel_range(model, pairs, calib, batch=16):
    """Per channel calibration range of each pair's first output: max (rectified) or max |x|."""
    keras = keras_lib()
    probe = keras.Model(model.inputs[0] if len(model.inputs) == 1 else model.inputs, [p[0].output for p in pairs])
    out = None
    for i in range(0, len(calib), batch):
        ys = probe(calib[i:i + batch])
        ys = ys if isinstance(ys, (list, tuple)) else [ys]
        m = []
        for (_, _, _, rect), y in zip(pairs, ys):
            y = keras.ops.convert_to_numpy(y).reshape(-1, y.shape[-1])
            m.append(y.max(axis=0) if rect else np.abs(y).max(axis=0))
        out = m if out is None else [np.maximum(a, b) for a, b in zip(out, m)]
    return out


def _pair_scale(a, b, clip, z, criterion, relu6, headroom):
    """Scale s per channel (first's channel divided by s, second's input multiplied by s)."""
    r1, r2 = _out_ranges(a, a.get_weights()[0]), _in_ranges(b, b.get_weights()[0])
    fill = criterion == "range" or (criterion == "auto" and type(b).__name__ == "DepthwiseConv2D")
    if fill:  # fill the tensor's activation range (free for the weights when second is depthwise)
        target = clip / headroom if clip is not None else z.max()
        s = np.where(z > 0, np.minimum(z / max(target, 1e-30), 1.0), 1.0)
    else:  # Nagel et al.: equal weight ranges
        s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.maximum(r2, 1e-30)), 1.0)
    if clip is not None and relu6 == "bound":
        s = np.where(z * headroom >= clip, 1.0, np.maximum(s, z * headroom / clip))
    return s


def equalize(model, calib=None, *, criterion: str = "auto", relu6: str = "bound", headroom: float = 1.1,
             iterations: int = 4):
    """Cross-layer equalisation of a folded flat model. Returns (new_model, number of pairs).

    criterion: "weights" (Nagel: equal per-channel weight ranges), "range" (scale each channel up
    to fill the per-tensor activation range, what per-tensor int8 activations need), "auto"
    ("range" where the second layer is depthwise, which per-channel weight quantisation makes
    free, else "weights"). relu6: "bound" (scales limited so calibration activations stay below
    clip/headroom; clipped channels keep scale 1), "ignore" (the clip moves: not
    function-preserving), "skip" (pairs through a clip are left alone)."""
    m = rebuild_model(model, clone_layer)
    pairs = [p for p in cle_pairs(m) if not (p[2] is not None and relu6 == "skip")]
    if not pairs:
        return m, 0
    if calib is None:
        raise ExportError("cross-layer equalisation needs calibration images")
    zmax = _channel_range(m, pairs, calib)
    total = [np.ones_like(z, np.float64) for z in zmax]
    for _ in range(iterations):
        for k, (a, b, clip, _) in enumerate(pairs):
            s = _pair_scale(a, b, clip, zmax[k] / total[k], criterion, relu6, headroom)
            total[k] *= s
            wa, wb = a.get_weights(), b.get_weights()
            div = s[None, None, :, None] if type(a).__name__ == "DepthwiseConv2D" else s
            wa[0] = (wa[0] / div).astype(np.float32)
            if len(wa) > 1:
                wa[1] = (wa[1] / s).astype(np.float32)
            wb[0] = _scale_in(b, wb[0], s).astype(np.float32)
            a.set_weights(wa)
            b.set_weights(wb)
    return m, len(pairs)


def step(criterion: str = "auto", relu6: str = "bound"):
    """An `extra` step for tledge.quant.repair.apply: equalise, and note pairs / max abs / clip hits."""
    from tledge.quant.kerasgraph import predict

    def run(model, calib, log):
        before = predict(model, calib)
        m, pairs = equalize(model, calib, criterion=criterion, relu6=relu6)
        diff = np.abs(predict(m, calib) - before)
        log.notes.append(f"cle: {pairs} pairs, max abs {float(diff.max()):.2g}, "
                         f"clip hits {int((diff.max(axis=-1) > 1e-4).sum())}")
        return m
    return run
