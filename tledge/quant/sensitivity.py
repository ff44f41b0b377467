"""Sensitivity-driven mixed precision (issue 11): which activations to keep at high precision.

Measured on the converted graph, so it works whatever loaded the model: the float ONNX graph is
quantised once on a FIT split of the calibration images, and on the HELD-OUT split (never the
parity/val images) each quantised activation's QuantizeLinear/DequantizeLinear pair is replaced by
a Clip to its range, alone (leave-one-out from the all-int8 graph, run unfused: a simulation of the
file). The score is what reaches the OUTPUT: the change of the reference's (the original model's float
graph) top-1 vs runner-up log-probability margin.
Its distribution gives the expected top-1 agreement, E = 1 - mean_i Phi(-(m_i + mu) / s) (m_i the
float margin of image i, mu / s the mean / std of the margin error), which tracks agreement without
needing flips among a few dozen held-out images. A candidate's gain is how much the margin error
variance drops when it alone stays high precision.

Greedy choice (`choose`): best gain per unit of float cost first (cost: multiply-adds of the
non-depthwise linear ops that stop running int8; thin early layers and depthwise ones are nearly
free, and measured faster in float on x86, docs/int8-fidelity.md), re-measured after each step,
until E reaches the aim or the cost / count budget is spent.

A unit is an activation tensor plus the pass-through tensors after it (Pad, Reshape: same grid).
Keeping it precise means, in the files:
- ONNX (`onnx_overrides`): the tensors get int16 QDQ (TensorQuantOverrides); onnxruntime has no
  int16 Conv kernel, so its producer and consumers run in float on int8 weights. Excluding a node
  instead (`nodes_to_exclude`) does not work mid-graph: onnxruntime re-quantises an excluded Conv's
  float weights per tensor at load (WeightBiasQuantization).
- TFLite (`tflite_keep_float`): its producer and consumers are denylisted (float ops), matched by
  the Keras layer name both graphs carry in their tensor names.
Int8-only targets (Edge TPU) must not use this (tledge.quant.registry: all_int8=False).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from tledge._deps import require

PASS_THROUGH = ("Pad", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose", "MaxPool", "Identity")
LINEAR = ("Conv", "Gemm", "MatMul")


@dataclass
class Candidate:
    tensors: tuple[str, ...]  # the activation and the pass-through tensors after it (one grid)
    layer: str  # the Keras / graph layer that produces it (as named in both files' tensor names)
    macs: float  # multiply-adds of non-depthwise linear ops that would run float (per image)
    gain: float = 0.0  # leave-one-out drop of the margin error variance on the held-out images


@dataclass
class Score:
    agreement: float  # held-out top-1 agreement with the float graph
    expected: float  # expected top-1 agreement from the margin-error distribution
    margin_rmse: float  # RMS change of the float top-1 vs runner-up log-probability margin

    def text(self) -> str:
        return f"agreement {self.agreement:.3f}, expected {self.expected:.4f}, margin rmse {self.margin_rmse:.4f}"


@dataclass
class Selection:
    layers: list[str] = field(default_factory=list)  # chosen, in order of choice
    tensors: list[str] = field(default_factory=list)
    all_layers: list[str] = field(default_factory=list)  # every candidate, graph order
    ranked: list[Candidate] = field(default_factory=list)
    before: Score | None = None
    after: Score | None = None
    images: int = 0  # held-out images measured on
    float_macs: float = 0.0  # fraction of the linear multiply-adds that run float
    seconds: float = 0.0

    def precision(self, high: str) -> dict[str, str]:
        """Every candidate layer's final activation precision ("int8" or `high`)."""
        return {name: (high if name in self.layers else "int8") for name in self.all_layers}

    def summary(self) -> str:
        return (f"sensitivity on {self.images} held-out calibration images: {len(self.layers)} of "
                f"{len(self.all_layers)} activations kept precise ({', '.join(self.layers) or 'none'}; "
                f"{100 * self.float_macs:.1f} % of multiply-adds float); simulated {self.before.text()} -> "
                f"{self.after.text()}; {self.seconds:.1f}s")


def split(n: int, every: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, held-out) of n calibration images: every `every`-th image is held out."""
    idx = np.arange(n)
    held = idx % every == every - 1
    return idx[~held], idx[held]


def layer_of(tensor: str) -> str:
    """The layer scope in a converter's tensor name: `model/conv_pw_3_relu_1/Relu6:0` -> `conv_pw_3_relu_1`."""
    parts = tensor.split(";")[0].split(":")[0].split("/")
    return parts[-2] if len(parts) > 1 else parts[0]


# ---- the QDQ graph ---------------------------------------------------------------------------------
def candidates(qdq) -> list[Candidate]:
    """Quantised activations of a QDQ onnx.ModelProto that feed a linear op (directly or through
    pass-through ops), graph order."""
    inits = {i.name for i in qdq.graph.initializer}
    consumers: dict[str, list] = {}
    for n in qdq.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    qdq_of = {}  # float tensor -> its DQ output
    for n in qdq.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits:
            dq = [c for c in consumers.get(n.output[0], []) if c.op_type == "DequantizeLinear"]
            if dq:
                qdq_of[n.input[0]] = dq[0].output[0]
    macs = _macs(qdq)
    followers = set()
    out = []
    for t, dq_out in qdq_of.items():
        if t in followers:
            continue
        group, cost, frontier, linear = [t], 0.0, [dq_out], False
        while frontier:
            for c in consumers.get(frontier.pop(), []):
                if c.op_type in LINEAR:
                    linear, cost = True, cost + macs.get(c.name, 0.0)
                elif c.op_type in PASS_THROUGH and c.output[0] in qdq_of:
                    group.append(c.output[0])
                    followers.add(c.output[0])
                    frontier.append(qdq_of[c.output[0]])
        if linear:
            out.append(Candidate(tuple(group), layer_of(t), cost + _producer_macs(qdq, t, macs)))
    return out


def _producer_macs(qdq, tensor: str, macs: dict) -> float:
    return next((macs.get(n.name, 0.0) for n in qdq.graph.node if tensor in n.output), 0.0)


def _macs(qdq) -> dict[str, float]:
    """Node name -> multiply-adds per image of each non-depthwise Conv / Gemm / MatMul (weights'
    element count times output positions, from shape inference); depthwise convs count 0."""
    onnx = require("onnx", extra="export")
    try:
        inferred = onnx.shape_inference.infer_shapes(qdq)
    except Exception:
        inferred = qdq
    shapes = {v.name: [d.dim_value or 1 for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    inits = {i.name: i for i in qdq.graph.initializer}
    producer = {o: n for n in qdq.graph.node for o in n.output}
    out = {}
    for n in qdq.graph.node:
        if n.op_type not in LINEAR or len(n.input) < 2:
            continue
        w = n.input[1]
        if w in producer and producer[w].op_type == "DequantizeLinear":
            w = producer[w].input[0]
        if w not in inits:
            continue
        dims = list(inits[w].dims)
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        if group > 1:
            out[n.name] = 0.0
            continue
        positions = float(np.prod(shapes.get(n.output[0], [1])[2:])) if n.op_type == "Conv" else 1.0
        out[n.name] = float(np.prod(dims)) * positions
    return out


def bypass(qdq, tensors: Sequence[str]):
    """A copy of `qdq` in which these tensors are not rounded: their QuantizeLinear/DequantizeLinear
    pair becomes a Clip to the same range (onnxruntime's quantiser drops a Relu/Clip before a Q whose
    range clips the same way, so the range must stay)."""
    import copy

    from onnx import helper, numpy_helper

    model = copy.deepcopy(qdq)
    wanted = set(tensors)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    clipped = {}  # Q output -> clipped float tensor
    for n in list(model.graph.node):
        if n.op_type != "QuantizeLinear" or n.input[0] not in wanted:
            continue
        scale = float(inits[n.input[1]])
        zp = inits[n.input[2]] if len(n.input) > 2 and n.input[2] else np.zeros((), np.uint8)
        info = np.iinfo(zp.dtype)
        lo, hi = (float(info.min) - float(zp)) * scale, (float(info.max) - float(zp)) * scale
        out = n.input[0] + "_tledge_precise"
        bounds = [numpy_helper.from_array(np.array(v, np.float32), f"{out}_{k}") for k, v in (("lo", lo), ("hi", hi))]
        model.graph.initializer.extend(bounds)
        model.graph.node.append(helper.make_node("Clip", [n.input[0], bounds[0].name, bounds[1].name], [out]))
        clipped[n.output[0]] = out
    rewire = {n.output[0]: clipped[n.input[0]] for n in model.graph.node
              if n.op_type == "DequantizeLinear" and n.input[0] in clipped}
    for n in model.graph.node:
        n.input[:] = [rewire.get(t, t) for t in n.input]
    return _sorted(model)


def _sorted(model):
    """Nodes in topological order (appended Clip nodes moved before their consumers)."""
    ready = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    pending, order = list(model.graph.node), []
    while pending:
        rest = []
        for n in pending:
            if all(t in ready for t in n.input):
                order.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            order += rest
            break
        pending = rest
    del model.graph.node[:]
    model.graph.node.extend(order)
    return model


# ---- scoring -----------------------------------------------------------------------------------------
class Evaluator:
    """Runs QDQ variants unfused (onnxruntime, optimisation off) on the held-out images and scores
    them against the float graph's outputs there."""

    def __init__(self, reference: np.ndarray, pixels: np.ndarray, batch: int = 32):
        self.ref, self.pixels, self.batch, self.runs = _as_logprob(reference), pixels, batch, 0
        order = np.argsort(-self.ref, axis=1)
        self.top, self.second = order[:, 0], order[:, 1]
        rows = np.arange(len(self.ref))
        self.margin = self.ref[rows, self.top] - self.ref[rows, self.second]

    def outputs(self, model) -> np.ndarray:
        return run(model.SerializeToString() if hasattr(model, "SerializeToString") else model, self.pixels,
                   self.batch)

    def score(self, model) -> Score:
        self.runs += 1
        q = _as_logprob(self.outputs(model))
        rows = np.arange(len(q))
        err = (q[rows, self.top] - q[rows, self.second]) - self.margin
        mu, s = float(err.mean()), float(err.std()) + 1e-9
        flip = [0.5 * math.erfc((m + mu) / s / math.sqrt(2)) for m in self.margin]
        return Score(float(np.mean(q.argmax(1) == self.top)), 1.0 - float(np.mean(flip)),
                     float(np.sqrt(np.mean(err ** 2))))


def _as_logprob(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    if np.all(y >= 0) and np.allclose(y.sum(1), 1.0, atol=1e-3):  # probabilities
        return np.log(np.clip(y, 1e-12, None))
    y = y - y.max(1, keepdims=True)  # logits
    return y - np.log(np.exp(y).sum(1, keepdims=True))


def run(model_bytes: bytes, pixels: np.ndarray, batch: int = 32) -> np.ndarray:
    """Outputs of an ONNX model on float32 pixels, graph optimisation off (the QDQ simulation)."""
    ort = require("onnxruntime", extra="export")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: np.asarray(pixels[i:i + batch], np.float32)})[0]
                           for i in range(0, len(pixels), batch)])


def rank(qdq, ev: Evaluator) -> tuple[list[Candidate], Score]:
    """Every candidate with its leave-one-out gain, most sensitive first; and the all-int8 score."""
    base = ev.score(qdq)
    cands = candidates(qdq)
    for c in cands:
        c.gain = base.margin_rmse ** 2 - ev.score(bypass(qdq, c.tensors)).margin_rmse ** 2
    return sorted(cands, key=lambda c: -c.gain), base


def choose(qdq, ev: Evaluator, *, aim: float = 0.995, max_float_macs: float = 0.2, max_layers: int = 8,
           free_macs: float = 0.01) -> Selection:
    """Greedy: best gain per cost first (cost: the float multiply-adds, plus `free_macs` of the
    total so that free layers still rank by gain), until the expected agreement reaches `aim`."""
    start = time.perf_counter()
    ranked, base = rank(qdq, ev)
    total = sum(v for v in _macs(qdq).values()) or 1.0
    sel = Selection(all_layers=[c.layer for c in candidates(qdq)], ranked=ranked, before=base, after=base,
                    images=len(ev.pixels))
    order = sorted((c for c in ranked if c.gain > 0), key=lambda c: -c.gain / (c.macs / total + free_macs))
    spent = 0.0
    for c in order:
        if sel.after.expected >= aim or len(sel.layers) >= max_layers:
            break
        if spent + c.macs / total > max_float_macs:
            continue
        trial = ev.score(bypass(qdq, sel.tensors + list(c.tensors)))
        if trial.margin_rmse >= sel.after.margin_rmse:  # no better together with the others: skip
            continue
        sel.layers.append(c.layer)
        sel.tensors += list(c.tensors)
        sel.after, spent = trial, spent + c.macs / total
    sel.float_macs, sel.seconds = spent, time.perf_counter() - start
    return sel


def select(float_onnx, quantize: Callable, calib: np.ndarray, *, workdir, reference=None, **options) -> Selection:
    """Quantise the float graph (`quantize(src, dst, images)`, the export's own quantiser) on the fit
    split of `calib`, score on the held-out split against `reference` (the ORIGINAL model's float
    graph when `float_onnx` is a repaired one: its weight residual counts too; default `float_onnx`),
    choose (`choose` options)."""
    onnx = require("onnx", extra="export")
    start = time.perf_counter()
    fit, held = split(len(calib))
    dst = workdir / "sensitivity_qdq.onnx"
    quantize(float_onnx, dst, calib[fit])
    qdq = onnx.load(str(dst))
    reference = run(open(reference or float_onnx, "rb").read(), calib[held])
    sel = choose(qdq, Evaluator(reference, calib[held]), **options)
    sel.seconds = time.perf_counter() - start
    return sel


# ---- applying a selection to the files -----------------------------------------------------------------
def onnx_overrides(sel: Selection) -> dict:
    """onnxruntime quantize_static TensorQuantOverrides: the chosen activations as int16 (weights stay
    int8: int16 weights with int16 activations overflow the int32 bias, measured 0.967 vs 0.987)."""
    q = require("onnxruntime.quantization", extra="export")
    return {t: [{"quant_type": q.QuantType.QInt16}] for t in sel.tensors}


def tflite_keep_float(ops: Sequence[tuple[str, str, Sequence[str]]], layers: Sequence[str]) -> list[str]:
    """TFLite denylist (output tensor names) for the chosen layers: `ops` are (op, output name,
    input names) in execution order (selective.tflite_graph). A layer's producing op and every op
    reading its output (through pass-through ops) run float, so the tensor is never rounded."""
    wanted = set(layers)
    consumers: dict[str, list] = {}
    for op in ops:
        for t in op[2]:
            consumers.setdefault(t, []).append(op)
    keep: list[str] = []
    for op, out, _ in ops:
        if not {layer_of(name) for name in out.split(";")} & wanted:
            continue
        frontier = [out]
        keep.append(out)
        while frontier:
            for c_op, c_out, _ in consumers.get(frontier.pop(), []):
                if c_out not in keep:
                    keep.append(c_out)
                    if c_op in ("PAD", "RESHAPE", "SQUEEZE", "QUANTIZE", "DEQUANTIZE", "MAX_POOL_2D"):
                        frontier.append(c_out)
    return keep
