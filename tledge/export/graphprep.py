"""The normalisation a SavedModel applies to its input, read from its graph: SavedModels have no layers to read
(tledge.layers.input_rescaling reads Keras models), and "this model does not bake its preprocessing" sent users
to --preprocess tf on a model with a Rescaling inside: normalised twice, and parity said PASSED.

The serving function is frozen (variables to constants, functions inlined) and walked from its image input through
ops that hand pixels on unchanged in value (Identity, Cast, resizes) and per-channel affine ops with a constant
(Mul, Add, Sub, RealDiv: Rescaling and Normalization layers, `x / 127.5 - 1` written as code).
"""
from __future__ import annotations

import numpy as np

THROUGH = {"Identity", "Cast", "ResizeBilinear", "ResizeNearestNeighbor", "ResizeArea", "ResizeBicubic",
           "CropAndResize"}
AFFINE = {"Mul", "AddV2", "Add", "BiasAdd", "Sub", "RealDiv", "Div"}
SHAPE_ONLY = {"Shape", "ShapeN", "Size", "Rank"}


class Unread(str):
    """input_affine's answer for arithmetic at the input it cannot read (a Normalization's Maximum(Sqrt(variance),
    epsilon), a slice it cannot follow): "does not bake its preprocessing" sent users to --preprocess tf on such
    models, which normalised twice (0.43-0.50 agreement, parity PASSED)."""


def input_affine(fn, channels: int, limit: int = 32) -> tuple[np.ndarray, np.ndarray, bool] | Unread | None:
    """(scale, offset, flipped): the affine ops at the start of `fn` (a concrete function taking one image, whose
    variables are alive) as `y[j] = scale[j] * x[j'] + offset[j]`, j' = the channel order reversed when `flipped`
    (caffe's RGB -> BGR: `x[..., ::-1]` or a reverse over the channels), through crops of height and width.
    Unread (a reason) when the walk stops at arithmetic with operands it cannot read, None when the first
    computation is anything else. Never raises: a graph it cannot read is None."""
    read = _frozen_graph(fn)
    if read is None:
        return None
    nodes, users, t = read
    scale, offset, flipped, found = np.ones(channels), np.zeros(channels), False, False
    for _ in range(limit):
        # what reads only the tensor's shape (`tf.reshape(h, [tf.shape(x)[0], -1])`) is no second use of its values
        nxt = [u for u in users.get(t, []) if nodes[u].op not in SHAPE_ONLY]
        if len(nxt) > 1 and not found:  # Keras 3's caffe preprocess_input: a slice per channel, then a stack
            return Unread(f"its input feeds {len(nxt)} ops ({', '.join(sorted({nodes[u].op for u in nxt}))})")
        if len(nxt) != 1:
            break
        n = nodes[nxt[0]]
        data = [i.split(":")[0] for i in n.input if not i.startswith("^")]
        if n.op in THROUGH and data and data[0] == t:
            t = n.name
            continue
        if data and data[0] == t and _channel_flip(nodes, n):
            scale, offset, flipped, found, t = scale[::-1], offset[::-1], not flipped, True, n.name
            continue
        if data and data[0] == t and _spatial_crop(nodes, n):  # CenterCrop, Resizing(crop_to_aspect_ratio=True)
            t = n.name
            continue
        if n.op in ("StridedSlice", "Slice") and not found:
            return Unread(f"its input goes through a {n.op} tledge cannot follow")
        if n.op not in AFFINE or len(data) != 2 or data.count(t) != 1:
            break
        k = _constant(nodes, data[1] if data[0] == t else data[0], channels)
        if k is None:
            if found and _named(scale, offset, flipped, channels):  # EfficientNet's x / 255, then a Normalization
                return scale, offset, flipped  # it cannot read: the model normalises raw pixels itself
            return Unread(f"it starts with arithmetic ({n.op}) on values tledge cannot read (a Normalization "
                          "layer's variance, a computed constant)")  # a part of the map is no map (x - mean)
        applied = _compose(n.op, data[0] == t, k, scale, offset)
        if applied is None:
            break
        (scale, offset), found, t = applied, True, n.name
    return (scale, offset, flipped) if found else None


def _frozen_graph(fn):
    """(nodes by name, users of each node, the one input's name) of `fn` with its variables frozen; None when
    the graph cannot be read or has no single input."""
    try:
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        graph = convert_variables_to_constants_v2(fn).graph.as_graph_def()
    except Exception:  # noqa: BLE001 - an unreadable graph: the user says (--preprocess)
        return None
    nodes = {n.name: n for n in graph.node}
    users: dict[str, list[str]] = {}
    for n in graph.node:
        for i in n.input:
            if not i.startswith("^"):
                users.setdefault(i.split(":")[0], []).append(n.name)
    inputs = [n.name for n in graph.node if n.op == "Placeholder"]
    return (nodes, users, inputs[0]) if len(inputs) == 1 else None


def _compose(op: str, left: bool, k: np.ndarray, scale: np.ndarray, offset: np.ndarray):
    """The map so far followed by `op` with the constant `k` (on the right of the tensor when `left`):
    (scale, offset), or None for an op that is no affine step (a division of a constant by the tensor)."""
    if op == "Mul":
        return scale * k, offset * k
    if op in ("AddV2", "Add", "BiasAdd"):
        return scale, offset + k
    if op == "Sub":
        return (scale, offset - k) if left else (-scale, k - offset)
    if left and np.all(k != 0):  # RealDiv / Div by a constant
        return scale / k, offset / k
    return None


def _channel_flip(nodes: dict, n) -> bool:
    """`x[..., ::-1]` (a StridedSlice: ellipsis, then stride -1 over the whole last axis) or a ReverseV2 over it."""
    if n.op == "ReverseV2" and len(n.input) == 2:
        axis = _constant(nodes, n.input[1].split(":")[0], 1)
        return axis is not None and int(axis[0]) in (-1, 3)
    if n.op != "StridedSlice" or len(n.input) != 4:
        return False
    strides = _constant(nodes, n.input[3].split(":")[0], 2)
    a = {k: n.attr[k].i for k in ("begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask", "shrink_axis_mask")}
    return (strides is not None and list(strides) == [1.0, -1.0] and a["ellipsis_mask"] == 1 and a["begin_mask"] & 2
            and a["end_mask"] & 2 and not a["new_axis_mask"] and not a["shrink_axis_mask"])


def _named(scale, offset, flipped: bool, channels: int) -> bool:
    from tledge.layers import affine_mode

    return affine_mode(scale, offset, channels, flip=flipped) is not None


def _spatial_crop(nodes: dict, n) -> bool:
    """A slice of an NHWC image that keeps the batch and every channel with stride 1 (begin and end may be
    computed): a crop of height and width, which hands pixel values on unchanged."""
    if n.op == "Slice" and len(n.input) == 3:
        begin, size = (_constant(nodes, n.input[i].split(":")[0], 4) for i in (1, 2))
        return begin is not None and size is not None and begin[0] == 0 and begin[3] == 0 and size[0] == -1 \
            and size[3] == -1
    if n.op != "StridedSlice" or len(n.input) != 4:
        return False
    strides = _constant(nodes, n.input[3].split(":")[0], 4)
    a = {k: n.attr[k].i for k in ("begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask", "shrink_axis_mask")}
    return (strides is not None and np.all(strides == 1) and a["begin_mask"] & 9 == 9 and a["end_mask"] & 9 == 9
            and not (a["ellipsis_mask"] or a["new_axis_mask"] or a["shrink_axis_mask"]))


def _constant(nodes: dict, name: str, channels: int) -> np.ndarray | None:
    """A Const (through Identity and Cast) of one value or one per channel, as float64; else None."""
    from tensorflow.python.framework import tensor_util

    for _ in range(8):
        n = nodes.get(name)
        if n is None:
            return None
        if n.op in ("Identity", "Cast") and n.input:
            name = n.input[0].split(":")[0]
            continue
        if n.op != "Const":
            return None
        v = np.asarray(tensor_util.MakeNdarray(n.attr["value"].tensor), np.float64).reshape(-1)
        return np.broadcast_to(v, channels).copy() if v.size in (1, channels) and np.all(np.isfinite(v)) else None
    return None
