"""A 1-channel backbone made from RGB weights: the first convolution's 3 input channels are folded into one.

Let the RGB model's first convolution see x_c = a_c * p_c + b_c (our Preprocess and any rescaling /
normalisation layers inside the backbone, probed per channel) and the gray model's see
z = a * g + b (the contract's gray mean/std, plus the channel-agnostic stem layers it keeps). For a
gray image, p_c = g for every channel, so per kernel tap t and output filter f:

    sum_c W[t,c,f] * (a_c g + b_c) = K[t,f] * (a g + b) + C[t,f]
    with K[t,f] = sum_c W[t,c,f] a_c / a   and   C[t,f] = sum_c W[t,c,f] b_c - K[t,f] b.

K is the new 1-channel kernel. The constant sum_t C[t,f] goes into the convolution's bias, or into
the following batch norm's moving mean (BN(y + c) == BN'(y) with mean' = mean - c). This is exact
wherever the whole kernel window lies inside the image. At zero-padded borders it is exact only when
C == 0, i.e. when b_c / a_c is the same for all channels and equals b / a: true for tf / scale /
uniform-rescaling backbones (MobileNet v1-v3, Inception, Xception, ResNet-v2, NASNet); for
per-channel means (caffe, torch, EfficientNet, ...) a zero pad is a different colour per channel, which a
single channel cannot represent, so border outputs differ slightly (this is a starting point; the gray
model is trained on gray images afterwards). `FoldReport.exact_at_borders` says which case applies.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from tledge._deps import require
from tledge.errors import TledgeError

_KEEP = ("ZeroPadding2D",)  # channel-agnostic stem layers kept as they are
_AFFINE = ("Rescaling", "Normalization")


@dataclass(frozen=True)
class FoldReport:
    first_conv: str
    offset_into: str  # "bias", "batchnorm <name>" or "new bias"
    dropped: tuple[str, ...]  # per-channel stem layers folded into the kernel
    exact_at_borders: bool
    max_border_term: float  # max |C|: 0 when exact at borders

    def to_dict(self) -> dict:
        return {"first_conv": self.first_conv, "offset_into": self.offset_into, "dropped": list(self.dropped),
                "exact_at_borders": self.exact_at_borders, "max_border_term": self.max_border_term}


def _stem(backbone) -> tuple[list, object]:
    """(layers between the input and the first convolution, the first Conv2D)."""
    stem = []
    for layer in backbone.layers[1:]:
        kind = layer.__class__.__name__
        if kind == "Conv2D":
            return stem, layer
        if kind not in _KEEP + _AFFINE:
            raise TledgeError(f"--grayscale is not supported for {backbone.name}: layer {layer.name} ({kind}) "
                              "comes before the first convolution")
        stem.append(layer)
    raise TledgeError(f"--grayscale: no Conv2D found in {backbone.name}")


def _channel_specific(layer) -> bool:
    cfg = layer.get_config()
    if layer.__class__.__name__ == "Normalization":
        return True
    if layer.__class__.__name__ == "Rescaling":
        return any(np.size(cfg.get(k, 0)) > 1 for k in ("scale", "offset"))
    return False


def _probe(backbone, conv_name: str, preprocess, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (a, b) with conv input = a * pixel + b, measured on constant images."""
    keras = require("keras")
    h, w = backbone.input.shape[1:3]
    sub = keras.Model(backbone.input, backbone.get_layer(conv_name).input)
    probe = np.stack([np.full((h, w, channels), v, np.float32) for v in (0.0, 255.0, 100.0)])
    out = np.asarray(sub(preprocess(probe)), np.float64)
    cy, cx = out.shape[1] // 2, out.shape[2] // 2
    v0, v255, v100 = out[:, cy, cx, :]
    a, b = (v255 - v0) / 255.0, v0
    if not np.allclose(v100, 100.0 * a + b, rtol=1e-4, atol=1e-4) or np.any(a == 0):
        raise TledgeError(f"--grayscale: the layers before {conv_name} are not a per-channel affine map")
    return a, b


def _gray_config(cfg: dict, drop: set[str], conv: str, stem: set[str], add_bias: bool) -> dict:
    cfg = copy.deepcopy(cfg)
    source = {}
    for lc in cfg["layers"]:
        if lc["name"] in drop:
            source[lc["name"]] = lc["inbound_nodes"][0]["args"][0]["config"]["keras_history"][0]
    one_channel = stem | {conv, cfg["input_layers"][0][0] if isinstance(cfg["input_layers"][0], list)
                          else cfg["input_layers"][0]}

    def fix_shape(shape):
        return list(shape[:-1]) + [1] if shape and shape[-1] == 3 else shape

    for lc in cfg["layers"]:
        if lc["class_name"] == "InputLayer":
            lc["config"]["batch_shape"] = fix_shape(lc["config"]["batch_shape"])
        if lc["name"] in one_channel and lc.get("build_config"):
            lc["build_config"]["input_shape"] = fix_shape(lc["build_config"]["input_shape"])
        for node in lc["inbound_nodes"]:
            for arg in node["args"]:
                hist = arg.get("config", {}).get("keras_history") if isinstance(arg, dict) else None
                if hist:
                    while hist[0] in source:
                        hist[0] = source[hist[0]]
                    if lc["name"] in one_channel:
                        arg["config"]["shape"] = fix_shape(arg["config"]["shape"])
        if lc["name"] == conv and add_bias:
            lc["config"]["use_bias"] = True
    cfg["layers"] = [lc for lc in cfg["layers"] if lc["name"] not in drop]
    return cfg


def _next_batchnorm(backbone, cfg: dict, conv: str):
    """The BatchNormalization layer that is the only consumer of `conv`, if there is one."""
    users = [lc for lc in cfg["layers"] if any(
        isinstance(arg, dict) and arg.get("config", {}).get("keras_history", [None])[0] == conv
        for node in lc["inbound_nodes"] for arg in node["args"])]
    if len(users) == 1 and users[0]["class_name"] == "BatchNormalization":
        return backbone.get_layer(users[0]["name"])
    return None


def fold_to_gray(backbone3, preprocess3, preprocess1) -> tuple[object, FoldReport]:
    """A 1-channel copy of `backbone3` (weights folded as the module doc says) and a report.

    `preprocess3` / `preprocess1` are the tledge.layers.Preprocess layers placed in front of each.
    """
    keras = require("keras")
    stem, conv = _stem(backbone3)
    drop = {l.name for l in stem if _channel_specific(l)}
    a3, b3 = _probe(backbone3, conv.name, preprocess3, 3)
    cfg3 = backbone3.get_config()
    bn = None if conv.use_bias else _next_batchnorm(backbone3, cfg3, conv.name)
    add_bias = not conv.use_bias and bn is None
    cfg = _gray_config(cfg3, drop, conv.name, {l.name for l in stem}, add_bias)
    backbone1 = keras.Model.from_config(cfg)
    a1, b1 = _probe(backbone1, conv.name, preprocess1, 1)
    w3 = conv.get_weights()
    kernel3 = w3[0].astype(np.float64)  # (kh, kw, 3, F)
    k1 = np.einsum("hwcf,c->hwf", kernel3, a3) / a1[0]
    border = np.einsum("hwcf,c->hwf", kernel3, b3) - k1 * b1[0]
    offset = border.sum(axis=(0, 1))
    for layer in backbone1.layers:
        if layer.weights and layer.name != conv.name:
            layer.set_weights(backbone3.get_layer(layer.name).get_weights())
    new_conv = backbone1.get_layer(conv.name)
    bias = w3[1] + offset if conv.use_bias else offset
    if bn is not None:
        new_conv.set_weights([k1[:, :, None, :].astype(np.float32)])
        mm = backbone1.get_layer(bn.name).moving_mean
        mm.assign(np.asarray(mm.numpy(), np.float64) - offset)
        into = f"batchnorm {bn.name}"
    else:
        new_conv.set_weights([k1[:, :, None, :].astype(np.float32), bias.astype(np.float32)])
        into = "bias" if conv.use_bias else "new bias"
    max_border = float(np.abs(border).max())
    scale = float(np.abs(np.einsum("hwcf,c->hwf", kernel3, b3)).max()) or 1.0
    return backbone1, FoldReport(conv.name, into, tuple(sorted(drop)), max_border <= 1e-5 * scale, max_border)
