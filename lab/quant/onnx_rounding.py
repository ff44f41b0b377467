"""Adaptive re-rounding of the int8 QDQ ONNX file's weights (any loader). A lab experiment, not a rung:
measured on the hymenoptera MobileNet 0.25 SavedModel it gives 0.948-0.974 agreement (0.967 in the full
export), no better than `onnx-bias` (0.974), which runs first (docs/int8-fidelity.md, "TFLite graph-level
re-rounding"). Built and measured in the sixth session; kept here with its tests.

The ONNX counterpart of tledge.quant.tflite_rounding. Every Conv (depthwise = one group per input
channel), Gemm and MatMul of the QDQ file whose weight is a DequantizeLinear of an initializer gets, in
graph order,

- quantised weights chosen on the file's own per-channel scales and zero points to minimise the op's
  output error on the inputs the integer kernels actually give it (GPTQ, tledge.quant.gptq), towards the
  float weights of the node of the same name in the pre-processed float graph;
- the int32 bias that makes its mean output on those inputs equal the float node's mean output on the
  float graph's inputs (`repair.rounded`).

Inputs are read as the uint8/int8 QuantizeLinear outputs feeding each node's input DequantizeLinear,
from an onnxruntime session with the default (full) graph optimisation: those tensors are the fused
QLinearConv kernels' own outputs, and adding them as graph outputs keeps the fusion (measured: the
same scores to the bit), so the values are the integer path's, not the float emulation's (which
differ: MobileNet 0.25's file agrees 0.954 emulated vs 0.941 fused). The file is re-run after every op
(sequential: chunks double-count the bias correction). Scales, zero points, the graph, the metadata are
kept; weights move only on the grid they were on: int8 (zero point 0) or uint8 on the symmetric int8
grid (zero point 128, tledge.export.onnx's U8U8 scheme). Other grids (asymmetric, 7-bit reduce_range,
per-tensor) and grouped convolutions that are not depthwise are skipped and counted.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from tledge._deps import require
from tledge.quant import moments, repair

IMAGES = 32  # calibration images the moments cover
BUDGET = 1 << 28  # bytes of float-graph inputs read in one pass
MIN_ROWS = 4  # as tflite_rounding.MIN_ROWS: fewer input rows than 4 x kernel rows leave the op as quantised
KERAS_KIND = {"conv": "Conv2D", "depthwise": "DepthwiseConv2D", "dense": "Dense", "dense_t": "Dense"}


@dataclass
class RoundingLog:
    layers: int = 0  # ops re-rounded
    runs: int = 0  # passes of the int8 file over the calibration images
    changed: int = 0  # quantised weight values that moved
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def summary(self) -> str:
        skipped = sum(self.skipped.values())
        why = f" ({', '.join(f'{n} {r}' for r, n in sorted(self.skipped.items()))})" if skipped else ""
        return (f"adaptive rounding + bias correction of {self.layers} int8 ONNX ops on their int8 inputs "
                f"({self.changed} weights moved, {self.runs} passes of the int8 file, {self.seconds:.1f}s); "
                f"{skipped} skipped{why}")


@dataclass
class QNode:
    """One linear node of the QDQ file and where its quantised tensors live."""

    name: str
    kind: str  # conv | depthwise | dense | dense_t (Gemm with transB)
    attrs: dict
    input: str  # the float tensor the node reads
    read: str  # the tensor read for it: the QuantizeLinear output behind its DequantizeLinear, else `input`
    read_quant: tuple | None  # (scale, zero point) dequantising `read`, None when `read` is float
    weight: str  # quantised weight initializer
    w_scale: np.ndarray  # broadcast to the weight's shape
    w_zp: np.ndarray
    bias: str | None  # int32 bias initializer (None: weights only)
    b_scale: np.ndarray | None


def to_keras(kind: str, w: np.ndarray, channels: int) -> np.ndarray:
    """ONNX weight layout -> the Keras kernel layout repair.to_groups reads (`channels`: the op's input
    channels)."""
    if kind == "conv":  # (O, I, kh, kw) -> (kh, kw, I, O)
        return w.transpose(2, 3, 1, 0)
    if kind == "depthwise":  # (C m, 1, kh, kw): output c m + j reads input c -> (kh, kw, C, m)
        o, _, kh, kw = w.shape
        return w.reshape(channels, o // channels, kh, kw).transpose(2, 3, 0, 1)
    return w.T if kind == "dense_t" else w  # Gemm transB (O, I) / MatMul (I, O) -> (I, O)


def from_keras(kind: str, k: np.ndarray) -> np.ndarray:
    if kind == "conv":
        return k.transpose(3, 2, 0, 1)
    if kind == "depthwise":
        kh, kw, c, m = k.shape
        return k.transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw)
    return k.T if kind == "dense_t" else k


def _ints(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def same_pads(size: tuple[int, int], kernel, strides, dilations) -> list[int]:
    """TensorFlow's 'same' padding as ONNX pads [top, left, bottom, right] (the extra one bottom/right)."""
    lo, hi = [], []
    for n, k, s, d in zip(size, kernel, strides, dilations):
        total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
        lo.append(total // 2)
        hi.append(total - total // 2)
    return lo + hi


def geometry(node: QNode, kernel: np.ndarray, size: tuple[int, int]) -> tuple[moments.Geometry, list[int] | None]:
    """The node's moments.Geometry and the explicit zero padding its NHWC input needs first (None: none,
    or TensorFlow's 'same' which the Geometry does itself)."""
    kind = KERAS_KIND[node.kind]
    rows = int(np.prod(kernel.shape[:-1]))
    if kind == "Dense":
        return moments.Geometry(kind, rows=rows), None
    a = node.attrs
    k = tuple(int(v) for v in kernel.shape[:2])
    s = tuple(int(v) for v in a.get("strides", (1, 1)))
    d = tuple(int(v) for v in a.get("dilations", (1, 1)))
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    same = same_pads(size, k, s, d)
    pads = {"SAME_UPPER": same, "VALID": [0, 0, 0, 0],
            "SAME_LOWER": same[2:] + same[:2]}.get(auto, [int(p) for p in a.get("pads", (0, 0, 0, 0))])
    if pads == same:
        return moments.Geometry(kind, k, s, d, "same", rows), None
    return moments.Geometry(kind, k, s, d, "valid", rows), (pads if any(pads) else None)


def to_nhwc(x: np.ndarray, pads: list[int] | None) -> np.ndarray:
    """A node input (N, C, H, W) -> (N, H, W, C), zero-padded by ONNX `pads` (quantised zero is exact)."""
    x = x.transpose(0, 2, 3, 1)
    if pads:
        x = np.pad(x, ((0, 0), (pads[0], pads[2]), (pads[1], pads[3]), (0, 0)))
    return x


def linear_nodes(model, log: RoundingLog) -> list[QNode]:
    """The Conv / Gemm / MatMul nodes of a QDQ graph whose weight is a DequantizeLinear of an initializer."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}

    def dq_of(tensor):
        p = producer.get(tensor)
        if p is None or p.op_type != "DequantizeLinear" or p.input[0] not in inits:
            return None
        arrays = [numpy_helper.to_array(inits[t]) if t in inits else None for t in p.input[1:3]]
        zp = arrays[1] if len(arrays) > 1 and arrays[1] is not None else np.zeros_like(arrays[0], np.int64)
        return p.input[0], arrays[0].astype(np.float64), zp.astype(np.int64), int(_ints(p).get("axis", 1))

    out = []
    for n in model.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2:
            continue
        w = dq_of(n.input[1])
        if w is None:
            continue
        a = _ints(n)
        wq = numpy_helper.to_array(inits[w[0]])
        kind = {"Conv": "conv", "Gemm": "dense_t" if a.get("transB", 0) else "dense", "MatMul": "dense"}[n.op_type]
        if n.op_type == "Conv" and int(a.get("group", 1)) > 1:
            if wq.shape[1] != 1:
                log.skip("grouped convolutions (not depthwise)")
                continue
            kind = "depthwise"
        if n.op_type == "Gemm" and (a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0):
            log.skip("Gemm with transA / alpha / beta")
            continue
        shape = [1] * wq.ndim
        if w[1].size > 1:
            shape[w[3] % wq.ndim] = w[1].size
        b = dq_of(n.input[2]) if n.op_type != "MatMul" and len(n.input) > 2 and n.input[2] else None
        if b is not None and numpy_helper.to_array(inits[b[0]]).dtype != np.int32:
            b = None
        src = producer.get(n.input[0])
        read, quant = n.input[0], None
        if src is not None and src.op_type == "DequantizeLinear" and src.input[0] not in inits \
                and all(t in inits for t in src.input[1:3]):
            read = src.input[0]
            quant = tuple(numpy_helper.to_array(inits[t]).astype(np.float64) for t in src.input[1:3])
        out.append(QNode(n.name, kind, a, n.input[0], read, quant, w[0],
                         np.broadcast_to(w[1].reshape(shape), wq.shape), np.broadcast_to(w[2].reshape(shape), wq.shape),
                         b[0] if b else None, b[1] if b else None))
    return out


def read_tensors(data: bytes, calib: np.ndarray, tensors: list[str], *, optimise: bool,
                 batch: int = 8) -> dict[str, np.ndarray]:
    """Tensor name -> its values over `calib`, from the model `data` with those tensors added as outputs
    (`optimise`: onnxruntime's full graph optimisation, else none)."""
    onnx = require("onnx", extra="export")
    ort = require("onnxruntime", extra="export")
    model = onnx.load_from_string(data)
    have = {o.name for o in model.graph.output}
    for t in tensors:
        if t not in have:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimise
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    out: dict[str, list] = {t: [] for t in tensors}
    for i in range(0, len(calib), batch):
        x = np.asarray(calib[i:i + batch], np.float32)
        if inp.type == "tensor(uint8)":
            x = np.clip(np.round(x), 0, 255).astype(np.uint8)
        for t, v in zip(tensors, sess.run(tensors, {inp.name: x})):
            out[t].append(v)
    return {t: np.concatenate(v) for t, v in out.items()}


def correct(int8: bytes, fp32: bytes, calib: np.ndarray, *, images: int = IMAGES, method: str = "adaptive",
            damp: float = 0.01, bias_correction: bool = True,
            min_rows: float = MIN_ROWS) -> tuple[bytes, RoundingLog]:
    """The QDQ file `int8` with every pairable linear node's quantised weights and int32 bias re-chosen (see
    the module doc). `fp32`: the float graph the file was quantised from, pre-processed
    (tledge.export.onnx.preprocess), so its node names are the file's; `calib`: float32 images in the
    graphs' input layout. Everything but those initializers (metadata included) is kept."""
    onnx = require("onnx", extra="export")
    from onnx import numpy_helper

    t0 = time.perf_counter()
    q_model, f_model = onnx.load_from_string(bytes(int8)), onnx.load_from_string(bytes(fp32))
    log = RoundingLog()
    f_nodes = {n.name: n for n in f_model.graph.node}
    f_init = {i.name: i for i in f_model.graph.initializer}
    inits = {i.name: i for i in q_model.graph.initializer}
    calib = np.asarray(calib, np.float32)
    if len(calib) > images:  # an even spread (calibration folders come class by class)
        calib = calib[np.linspace(0, len(calib) - 1, images).round().astype(int)]
    nodes = []
    for node in linear_nodes(q_model, log):
        f = f_nodes.get(node.name)
        if f is None or len(f.input) < 2 or f.input[1] not in f_init:
            log.skip("without a float twin")
            continue
        old = numpy_helper.to_array(inits[node.weight])
        wf_t = numpy_helper.to_array(f_init[f.input[1]])
        why = unusable(node, old, wf_t, sum(t == node.weight for n in q_model.graph.node for t in n.input))
        if why:
            log.skip(why)
            continue
        nodes.append((node, f))
    float_inputs: dict[str, np.ndarray] = {}
    for i, (node, f) in enumerate(nodes):
        if f.input[0] not in float_inputs:
            float_inputs = _float_chunk(fp32, calib, [g.input[0] for _, g in nodes[i:]])
        current = q_model.SerializeToString()
        xq = read_tensors(current, calib, [node.read], optimise=True)[node.read]
        log.runs += 1
        if node.read_quant is not None:
            xq = (xq.astype(np.float64) - node.read_quant[1]) * node.read_quant[0]
        weights = [numpy_helper.to_array(f_init[t]) if t in f_init else None for t in f.input[1:3]]
        moved = _reround(q_model, node, weights, xq, float_inputs[f.input[0]], method, damp, bias_correction,
                         min_rows, log)
        if moved is not None:
            log.layers += 1
            log.changed += moved
    log.seconds = time.perf_counter() - t0
    return q_model.SerializeToString(), log


def _float_chunk(fp32: bytes, calib: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """The float graph's values of the first of `names` and of those after it that fit in BUDGET."""
    onnx = require("onnx", extra="export")
    model = onnx.load_from_string(fp32)
    shapes = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        for v in list(inferred.graph.value_info) + list(inferred.graph.input):
            dims = [d.dim_value for d in v.type.tensor_type.shape.dim]
            shapes[v.name] = int(np.prod([d or 1 for d in dims]))
    except Exception:  # sizes unknown: one tensor per pass
        pass
    take, size = [], 0
    for n in dict.fromkeys(names):
        need = 4 * len(calib) * shapes.get(n, BUDGET)
        if take and size + need > BUDGET:
            break
        take.append(n)
        size += need
    return read_tensors(fp32, calib, take, optimise=False)


def unusable(node: QNode, old: np.ndarray, wf_t: np.ndarray | None, uses: int = 1) -> str | None:
    """Why a node's quantised weights `old` cannot be re-rounded (None: they can): the float twin's weights
    `wf_t` must round to them on the file's own per-output-channel symmetric int8 grid (zero point 0 for
    int8, 128 for uint8; every live channel's extreme at +-127), used by this node only."""
    zp = np.unique(node.w_zp)
    if wf_t is None or wf_t.shape != old.shape or zp.size != 1 or \
            int(zp[0]) != {np.dtype(np.int8): 0, np.dtype(np.uint8): 128}.get(old.dtype):
        return "without symmetric int8-grid weights"
    if uses > 1:
        return "sharing their weights"
    centred = old.astype(np.int64) - node.w_zp
    if np.abs(wf_t / np.where(node.w_scale > 0, node.w_scale, 1.0) - centred).max() > 0.5 + 1e-3:
        return "whose weights are not the float node's rounding"
    axis = 1 if node.kind == "dense" else 0  # the output channels'
    rest = tuple(a for a in range(old.ndim) if a != axis)
    top = np.abs(centred).max(axis=rest)
    if np.any((top != 127) & (top != 0)) or np.ptp(node.w_scale, axis=rest).max() > 0:
        return "not on the full per-channel int8 grid"  # 7-bit (reduce_range), per-tensor, or +-127.5 weights
    return None


def _reround(q_model, node: QNode, weights, xq, xf, method, damp, bias_correction, min_rows, log) -> int | None:
    """Re-choose one node's quantised weights and int32 bias in `q_model` in place; the values moved."""
    from onnx import numpy_helper

    inits = {i.name: i for i in q_model.graph.initializer}
    old = numpy_helper.to_array(inits[node.weight])
    wf_t, bf = weights[0], weights[1] if len(weights) > 1 else None
    cin = int(xq.shape[1]) if node.kind in ("conv", "depthwise") else int(np.prod(xq.shape[1:]))
    kind = KERAS_KIND[node.kind]
    kernel = to_keras(node.kind, wf_t.astype(np.float64), cin)
    scale_g = repair.to_groups(kind, to_keras(node.kind, np.asarray(node.w_scale, np.float64), cin))
    if node.kind in ("conv", "depthwise"):
        geo, pads = geometry(node, kernel, xq.shape[2:4])
        xq, xf = to_nhwc(xq, pads), to_nhwc(xf, pads)
    else:
        geo, _ = geometry(node, kernel, (1, 1))
        xq, xf = xq.reshape(len(xq), -1), xf.reshape(len(xf), -1)
    g = repair.to_groups(kind, kernel)
    bias = np.zeros(g.shape[0] * g.shape[2]) if bf is None else bf.astype(np.float64).reshape(-1)
    wf = np.concatenate([g, bias.reshape(g.shape[0], 1, -1)], 1)
    mom = moments.collect(geo, xq, xf, cross_images=0)
    if mom.hqq[0, -1, -1] < min_rows * (mom.hqq.shape[1] - 1):
        log.skip("with too few input rows for their kernel")
        return None
    own_bias = node.bias is not None
    w = repair.rounded(wf, mom, scale_g[:, :1, :], method=method, bias_correction=own_bias and bias_correction,
                       damp=damp)
    sg = scale_g[:, :1, :]
    q = np.clip(np.round(w[:, :-1] / np.where(sg > 0, sg, 1.0)), -127, 127)
    new = (from_keras(node.kind, repair.from_groups(kind, q, kernel.shape)) + node.w_zp).astype(old.dtype)
    inits[node.weight].CopyFrom(numpy_helper.from_array(new, node.weight))
    if own_bias:
        bscale = np.broadcast_to(node.b_scale.reshape(-1), (w.shape[0] * w.shape[2],))
        b = np.round(w[:, -1].reshape(-1) / np.where(bscale > 0, bscale, np.inf))
        inits[node.bias].CopyFrom(numpy_helper.from_array(np.clip(b, -2**31, 2**31 - 1).astype(np.int32), node.bias))
    else:
        log.skip("without their own int32 bias (weights only)")
    return int(np.count_nonzero(new != old))
