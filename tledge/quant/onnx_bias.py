"""Bias correction on the float ONNX graph (works for any loader: Keras 3, tf_keras, SavedModel).

int8 weight rounding shifts the mean of every convolution's output; the shifts add up through the
network (issue 7: a systematic +0.40 logit-gap shift, 15 of 16 flips one way). Here the float graph is
quantised once, each layer's weight error (dequantised QDQ weight minus float weight) is applied to
the mean of that layer's float input on calibration images, and the float bias takes the expected
shift away. Weights are
untouched, so the quantiser rounds them exactly as before; only biases (int32 in the file) move.
Analytic per layer (Nagel et al. 2019, with measured input means at every kernel tap, padding
included), so corrections do not double count through the network; one quantisation, one float run.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tledge._deps import require
from tledge.errors import TledgeError
from tledge.quant import calibdata, unfused
from tledge.quant.constadds import tensor_consumers
from tledge.quant.subset import spread


@dataclass
class BiasLog:
    layers: int = 0
    relative_shift: float = 0.0  # mean over layers of mean |shift| / mean |bias|
    skipped: int = 0  # linear layers without a QDQ twin whose weights are the rounding of theirs

    def summary(self) -> str:
        skipped = f"; {self.skipped} skipped (no int8 twin rounding their weights)" if self.skipped else ""
        return f"bias correction on {self.layers} layers (mean |shift| / |bias| {self.relative_shift:.4f}){skipped}"


def linear_nodes(model) -> list[tuple[str, str, str | None]]:
    """(node name, output tensor, bias initializer or None) for each Conv, and MatMul + Add(const)."""
    inits = {i.name for i in model.graph.initializer}
    consumers = tensor_consumers(model.graph)
    out = []
    for n in model.graph.node:
        if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in inits:
            out.append((n.name, n.output[0], n.input[2] if len(n.input) > 2 and n.input[2] else None))
        elif n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits:
            if n.op_type == "Gemm" and len(n.input) > 2 and n.input[2] in inits:
                out.append((n.name, n.output[0], n.input[2]))
                continue
            nxt = consumers.get(n.output[0], [])
            if len(nxt) == 1 and nxt[0].op_type == "Add":
                other = [t for t in nxt[0].input if t != n.output[0]]
                if other and other[0] in inits:
                    out.append((n.name, n.output[0], other[0]))
    return out


def weight_errors(fp32_model, qdq_model, nodes, *, steps: float = 0.501) -> dict[str, np.ndarray]:
    """Node name -> dequantised QDQ weight minus the float weight (same layout as the float weight), for the
    nodes whose QDQ weight is the rounding of the float one: within `steps` grid steps everywhere. (Shapes
    alone were checked before: a float graph not pre-processed like the QDQ one, its BN unfolded, paired
    with weights of another scale and got shifts 10^6 times its biases.)"""
    from onnx import numpy_helper

    f_init = {i.name: i for i in fp32_model.graph.initializer}
    q_init = {i.name: numpy_helper.to_array(i) for i in qdq_model.graph.initializer}
    producer = {o: n for n in qdq_model.graph.node for o in n.output}
    q_nodes = {n.name: n for n in qdq_model.graph.node}
    f_nodes = {n.name: n for n in fp32_model.graph.node}
    out = {}
    for name, _, _ in nodes:
        qn = q_nodes.get(name)
        dq = producer.get(qn.input[1]) if qn is not None and len(qn.input) > 1 else None
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in q_init:
            continue
        q = q_init[dq.input[0]].astype(np.float64)
        scale = q_init[dq.input[1]].astype(np.float64)
        zp = q_init[dq.input[2]].astype(np.float64) if len(dq.input) > 2 and dq.input[2] else np.zeros_like(scale)
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        if scale.size > 1:
            shape[axis] = scale.size
        w_q = (q - zp.reshape(shape)) * scale.reshape(shape)
        w_f = numpy_helper.to_array(f_init[f_nodes[name].input[1]]).astype(np.float64)
        if w_q.shape == w_f.shape and np.all(np.abs(w_q - w_f) <= steps * np.abs(scale.reshape(shape)) + 1e-7):
            out[name] = w_q - w_f
    return out


def tap_means(model_bytes: bytes, convs: list, pixels: np.ndarray, batch: int = 16) -> dict:
    """Node name -> mean of its input at every kernel tap over all output positions (zero padding
    included): (Cin, kh, kw) for a Conv, (Cin,) for MatMul / Gemm. Float graph, no optimisation."""
    onnx = require("onnx", extra="export")
    model = onnx.load_from_string(model_bytes)
    inputs = {i.name for i in model.graph.input}
    sess = unfused.session(model, [n.input[0] for n in convs if n.input[0] not in inputs])
    inp = sess.get_inputs()[0].name
    names = sorted({n.input[0] for n in convs})
    sums: dict[str, np.ndarray] = {}
    count = 0
    for i in range(0, len(pixels), batch):
        x = np.asarray(pixels[i:i + batch], np.float32)
        acts = dict(zip(names, sess.run(names, {inp: x}) if names != [inp] else [x]))
        for n in convs:
            m = _taps(n, acts[n.input[0]]) * len(x)
            sums[n.name] = sums.get(n.name, 0) + m
        count += len(x)
    return {k: v / count for k, v in sums.items()}


def _taps(node, x: np.ndarray) -> np.ndarray:
    if node.op_type != "Conv":  # a MatMul's rows are all its leading axes (tokens of an attention block too)
        return x.reshape(-1, x.shape[-1]).astype(np.float64).mean(0)
    attrs = {a.name: list(a.ints) for a in node.attribute if a.ints}
    n, c, h, w = x.shape
    kh, kw = attrs.get("kernel_shape", [1, 1])
    sh, sw = attrs.get("strides", [1, 1])
    dh, dw = attrs.get("dilations", [1, 1])
    p = attrs.get("pads", [0, 0, 0, 0])
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])))
    oh, ow = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1, (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    out = np.empty((c, kh, kw))
    for i in range(kh):
        for j in range(kw):
            out[:, i, j] = xp[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw].mean((0, 2, 3))
    return out


def _shift(node, dw: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Expected output shift per channel of weight error dw on inputs with these tap means."""
    if node.op_type == "Conv":
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        o, cg = dw.shape[:2]
        t = taps.reshape(group, cg, *taps.shape[1:])
        per = o // group
        return np.concatenate([np.einsum("oikl,ikl->o", dw[g * per:(g + 1) * per], t[g]) for g in range(group)])
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    return (dw @ taps) if (node.op_type == "Gemm" and trans_b) else (taps @ dw)


def correct(fp32: Path, dst: Path, calib: np.ndarray, quantize, *, images: int = 64,
            qdq: Path | None = None) -> BiasLog:
    """Write to `dst` the float graph `fp32` with every linear layer's bias absorbing the expected
    output shift of its int8 weights (those of `qdq`, else of `quantize(src, dst, calib)`); `fp32`
    should be quant_pre_process'ed already so its node names are the quantised file's. Layers whose int8
    weights are not the rounding of their float ones are skipped and counted; TledgeError when none pair."""
    onnx = require("onnx", extra="export")
    from onnx import numpy_helper

    calib = calibdata.checked(calib)
    model = onnx.load(str(fp32))
    nodes = linear_nodes(model)
    with tempfile.TemporaryDirectory(prefix="tledge-bias-") as tmp:
        q = qdq  # an int8 file quantised from this graph already (its weights are what count)
        if q is None:
            q = Path(tmp) / "q.onnx"
            quantize(fp32, q, calib)
        errors = weight_errors(model, onnx.load(str(q)), nodes)
    if nodes and not errors:
        raise TledgeError(f"onnx bias correction: none of the {len(nodes)} linear layers has an int8 twin whose "
                          "weights are the rounding of its own (a float graph not pre-processed like the quantised "
                          "one, or another model's)")
    by_name = {n.name: n for n in model.graph.node}
    convs = [by_name[name] for name, _, _ in nodes if name in errors]
    taps = tap_means(model.SerializeToString(), convs, np.asarray(spread(calib, images), np.float32))
    log = BiasLog(layers=len(convs), skipped=len(nodes) - len(convs))
    inits = {i.name: i for i in model.graph.initializer}
    rel = []
    for name, _, bias in nodes:
        if name not in errors:
            continue
        shift = _shift(by_name[name], errors[name], taps[name])
        b = numpy_helper.to_array(inits[bias]) if bias else np.zeros_like(shift)
        rel.append(float(np.mean(np.abs(shift)) / (np.mean(np.abs(b)) + 1e-6)))
        _add_to_bias(model, by_name[name], bias, inits, -shift, numpy_helper)
        inits = {i.name: i for i in model.graph.initializer}
    log.relative_shift = float(np.mean(rel)) if rel else 0.0
    onnx.save(model, str(dst))
    return log


def _add_to_bias(model, node, bias: str | None, inits: dict, delta: np.ndarray, numpy_helper) -> None:
    if bias is None:  # a Conv without bias gets one
        name = node.name + "_tledge_bias"
        model.graph.initializer.append(numpy_helper.from_array(delta.astype(np.float32), name))
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = name
        return
    old = numpy_helper.to_array(inits[bias])
    new = (old.astype(np.float64) + delta.reshape(old.shape) if old.size == delta.size
           else old + delta).astype(old.dtype)
    inits[bias].CopyFrom(numpy_helper.from_array(new, bias))
