"""The grid of the first quantised tensor of an int8 ONNX file: every pixel level gets its own code.

A baked preprocessing (`x / 127.5 - 1`, a per-channel mean and std) sits between the file's pixel
input and its first convolution. onnxruntime calibrates the convolution's input like any
activation: on photos that hold pixel values 0 and 255 the range of `x / 127.5 - 1` is [-1, 1], so the
scale is 2/255 (one pixel level per step) with zero point 128, and every level lands half-way between
two codes: QuantizeLinear rounds half to even, so levels 1 and 2, 3 and 4, ... share a code and the
network sees 7-bit pixels. The fused kernel onnxruntime ran for the Add before this rule (QLinearAdd)
hid it by rounding otherwise (tledge.quant.constadds): on the demo's 3-class model the file's own
arithmetic agreed with the fp32 file on 0.975 of 120 images, 0.992 on this grid.

`plan` finds the chain of constant elementwise ops from the pixel input to the first linear ops, which
quantize_int8 keeps float (the pixels are exact there), evaluates the chain on the 256 pixel levels and
gives the convolutions' input tensors the uint8 grid, among the calibrated-like range and slightly wider
ones, that keeps the most levels apart (TensorQuantOverrides). Nothing is matched by name. A graph
whose input meets any other op first (a channel flip by Gather or Slice, a Resize) gets no plan.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tledge._deps import require
from tledge.paths import loadable
from tledge.quant.constadds import constants, tensor_consumers

CHAIN = frozenset({"Mul", "Add", "Sub", "Div", "Transpose", "Cast", "Identity", "Reshape", "Pad"})
LINEAR = frozenset({"Conv", "Gemm", "MatMul", "ConvTranspose"})
WIDEN = (0, 1, 2, 3, 4)  # candidate scales: the full range / 255 x (1 + k / 254)


@dataclass(frozen=True)
class Plan:
    float_nodes: tuple[str, ...] = ()  # the preprocessing chain, kept float
    overrides: dict = field(default_factory=dict)  # TensorQuantOverrides for the linear ops' inputs
    kept_apart: dict = field(default_factory=dict)  # tensor -> (levels kept apart, of levels x channels)


def _chain(model) -> tuple[list[str], list[str]]:
    """(chain node names, tensors fed by the chain into linear ops), or ([], []) when the pixel input
    reaches anything but constant elementwise ops and linear ops first."""
    consts = constants(model)
    consumers = tensor_consumers(model.graph)
    if len(model.graph.input) != 1:
        return [], []
    live, nodes, feeds, todo = {model.graph.input[0].name}, [], [], [model.graph.input[0].name]
    while todo:
        t = todo.pop()
        for n in consumers.get(t, []):
            if n.op_type in LINEAR and n.input[0] == t and all(i in consts for i in n.input[1:] if i):
                feeds.append(t)
            elif n.op_type in CHAIN and all(i in live or i in consts for i in n.input if i):
                if n.name not in nodes:
                    nodes.append(n.name)
                    live.update(n.output)
                    todo.extend(n.output)
            else:
                return [], []
    return nodes, sorted(set(feeds))


def _levels(pre: Path, feeds: list[str]) -> dict[str, np.ndarray]:
    """Each feed tensor at the centre position, for constant images of pixel levels 0..255: [256, C]."""
    onnx = require("onnx", extra="export")
    ort = require("onnxruntime", extra="export")
    import tempfile

    model = onnx.load(str(pre))
    inp = model.graph.input[0]
    dims = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
    dtype = {onnx.TensorProto.UINT8: np.uint8}.get(inp.type.tensor_type.elem_type, np.float32)
    x = np.broadcast_to(np.arange(256, dtype=np.float32).reshape(256, *[1] * (len(dims) - 1)),
                        (256, *dims[1:])).astype(dtype)
    with tempfile.TemporaryDirectory(prefix="tledge-pixelgrid-") as tmp:
        sub = Path(tmp) / "chain.onnx"
        onnx.utils.extract_model(str(pre), str(sub), [inp.name], feeds)
        outs = ort.InferenceSession(loadable(sub), providers=["CPUExecutionProvider"]).run(feeds, {inp.name: x})
    got = {}
    for name, y in zip(feeds, outs):
        y = np.asarray(y, np.float32)
        if y.ndim == 4:  # NCHW into a Conv: channels on axis 1
            got[name] = y[:, :, y.shape[2] // 2, y.shape[3] // 2]
        else:
            got[name] = y.reshape(256, -1)
    return got


def _codes(v: np.ndarray, scale: float, zp: int) -> np.ndarray:
    """onnxruntime's own QuantizeLinear of float32 values (its float32 division and half-to-even rounding:
    computed in float64, values such as 1/127.5 x 3 - 1 are a hair off the half-way point that float32
    lands on exactly)."""
    onnx = require("onnx", extra="export")
    ort = require("onnxruntime", extra="export")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["v", "s", "z"], ["q"])], "q",
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, list(v.shape))],
        [helper.make_tensor_value_info("q", TensorProto.UINT8, list(v.shape))],
        [helper.make_tensor("s", TensorProto.FLOAT, [], [np.float32(scale)]),
         helper.make_tensor("z", TensorProto.UINT8, [], [zp])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"v": v.astype(np.float32)})[0]


def best_grid(v: np.ndarray) -> tuple[float, int, int]:
    """(scale, uint8 zero point, levels kept apart summed over channels) for values [levels, C]."""
    lo, hi = min(float(v.min()), 0.0), max(float(v.max()), 0.0)
    best = None
    for k in WIDEN:
        scale = (hi - lo) / 255 * (1 + k / 254) or 1.0
        zp = int(np.clip(np.rint(-lo / scale), 0, 255))
        codes = _codes(v, scale, zp)
        apart = sum(len(np.unique(codes[:, c])) for c in range(v.shape[1]))
        if best is None or apart > best[2]:
            best = (scale, zp, apart)
    return best


_PLANS: dict[tuple, Plan] = {}  # (graph digest, excluded feeds, activations) -> Plan: the rungs of one export
# quantise the same pre-processed graph many times (0.2-0.9 s a plan for MobileNetV2 at 224 px)


def plan(pre: Path, exclude: set[str], activations: str = "uint8") -> Plan:
    """The float chain and the grids for the pre-processed graph `pre`; `exclude`: node names kept float
    (a linear op among them gets no grid: its input is not quantised)."""
    import hashlib

    onnx = require("onnx", extra="export")
    data = Path(pre).read_bytes()
    model = onnx.load_from_string(data)
    nodes, feeds = _chain(model)
    by_input = {n.input[0]: n for n in model.graph.node if n.op_type in LINEAR}
    feeds = [t for t in feeds if by_input[t].name not in exclude]
    if not nodes or not feeds:
        return Plan()
    key = (hashlib.sha1(data).hexdigest(), tuple(feeds), activations)
    if key not in _PLANS:
        _PLANS.clear()  # one graph at a time: a long-lived process exports models one after another
        _PLANS[key] = _plan(pre, nodes, feeds, activations)
    return copy.deepcopy(_PLANS[key])  # onnxruntime may rewrite the override dicts it is given


def _plan(pre: Path, nodes: list[str], feeds: list[str], activations: str) -> Plan:
    try:
        levels = _levels(pre, feeds)
    except Exception:  # noqa: BLE001 - an improvement of the grid, never a reason to fail the export
        return Plan()  # (onnx's extractor or the session refusing the sub-graph): onnxruntime's calibration
    overrides, apart = {}, {}
    for name, v in levels.items():
        if not np.all(np.isfinite(v)):
            continue
        scale, zp, kept = best_grid(v)
        if activations == "int8":
            overrides[name] = [{"scale": np.array(scale, np.float32), "zero_point": np.array(zp - 128, np.int8)}]
        else:
            overrides[name] = [{"scale": np.array(scale, np.float32), "zero_point": np.array(zp, np.uint8)}]
        apart[name] = (kept, v.size)
    return Plan(tuple(nodes), overrides, apart)
