"""Classifier-head refit (issue 11, a lab experiment: measured, no gain, not in the export loop; see
docs/int8-fidelity.md "Classifier-head refit"): re-solve the last Dense / Gemm layer of an int8 model so that,
fed what the int8 backbone actually produces, it gives the float model's logits.

The backbone's int8 error reaches the head as a feature shift the head was never trained on. Here:
- `fq`: the int8 file's penultimate features on calibration images, dequantised (the input of its
  last FULLY_CONNECTED / Gemm / MatMul, read from the file itself);
- `z`: the float model's logits (the output of that layer in the float file, before the softmax);
- ridge least squares towards the original weights, `min |[fq,1] W - z|^2 + lam |W - W0|^2`,
  then the weights on the per-output-channel symmetric int8 grid (max|w|/127, the converters'
  grid, so the file keeps them exactly) and the bias re-solved for the rounded weights.
The ridge is chosen, and the refit judged, on a held-out part of the calibration images (every
`holdout`-th image, never the parity set): `HeadFit.accepted` only when the held-out logit error
drops by `min_gain` and held-out top-1 agreement does not fall. The fit itself then uses every image.

Formats: `onnx_head` / `onnx_features` / `onnx_set_head` work on the ONNX graphs (float graph edited
before quantisation); `tflite_head` / `tflite_tensor` read the TFLite files and `keras_head` /
`keras_set_head` write the Keras model the TFLite file is converted from.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tledge._deps import require

RIDGES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # relative to the mean feature second moment


@dataclass
class HeadFit:
    weights: np.ndarray  # (d, k) on the int8 grid
    bias: np.ndarray  # (k,)
    ridge: float
    err_before: float  # held-out mean squared logit error, original head (int8-grid weights)
    err_after: float  # held-out, refitted head (fitted without the held-out images)
    agree_before: float  # held-out top-1 agreement with the float logits
    agree_after: float
    images_fit: int
    images_held: int
    accepted: bool

    def summary(self) -> str:
        return (f"head refit (ridge {self.ridge:g}): held-out logit MSE {self.err_before:.4g} -> {self.err_after:.4g}, "
                f"top-1 {self.agree_before:.3f} -> {self.agree_after:.3f} on {self.images_held} calibration images "
                f"held out of {self.images_fit + self.images_held}: {'kept' if self.accepted else 'not kept'}")


def int8_grid(w: np.ndarray) -> np.ndarray:
    """(d, k) weights rounded to the per-output-channel symmetric int8 grid, dequantised."""
    w = np.asarray(w, np.float64)
    scale = np.abs(w).max(axis=0, keepdims=True) / 127.0
    safe = np.where(scale > 0, scale, 1.0)
    return np.clip(np.round(w / safe), -127, 127) * scale


def _ridge(fq, z, w0, b0, lam):
    x = np.concatenate([fq, np.ones((len(fq), 1))], 1)
    prior = np.concatenate([w0, b0[None]], 0)
    h = x.T @ x
    reg = lam * np.mean(np.diag(h)) * np.eye(len(h))
    sol = np.linalg.solve(h + reg, x.T @ z + reg @ prior)
    w = int8_grid(sol[:-1])
    return w, (z - fq @ w).mean(0)  # the bias for the rounded weights


def _score(fq, z, w, b):
    out = fq @ w + b
    return float(np.mean((out - z) ** 2)), float(np.mean(out.argmax(1) == z.argmax(1)))


def solve(fq, z, w0, b0, *, holdout: int = 4, ridges=RIDGES, min_gain: float = 0.1) -> HeadFit:
    """Refit a head: features `fq` (N, d), float logits `z` (N, k), original weights `w0` (d, k), `b0` (k,)."""
    fq, z = np.asarray(fq, np.float64), np.asarray(z, np.float64)
    w0, b0 = np.asarray(w0, np.float64), np.asarray(b0, np.float64).reshape(-1)
    held = np.arange(len(fq)) % holdout == holdout - 1
    if held.sum() < 2 or (~held).sum() < 2:
        raise ValueError(f"a head refit needs calibration images to fit and to hold out, got {len(fq)}")
    before = _score(fq[held], z[held], int8_grid(w0), b0)
    trials = []
    for lam in ridges:
        w, b = _ridge(fq[~held], z[~held], w0, b0, lam)
        trials.append((_score(fq[held], z[held], w, b), lam))
    (err, agree), lam = min(trials, key=lambda t: t[0][0])
    accepted = err < (1.0 - min_gain) * before[0] and agree >= before[1]
    w, b = _ridge(fq, z, w0, b0, lam)
    return HeadFit(w.astype(np.float32), b.astype(np.float32), lam, before[0], err, before[1], agree,
                   int((~held).sum()), int(held.sum()), bool(accepted))


# ---- ONNX -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OnnxHead:
    node: str  # the Gemm / MatMul node (same name in the float graph and in its QDQ file)
    features: str  # its input tensor in the float graph
    logits: str  # its output, or the output of the bias Add after a MatMul
    weight: str  # weight initializer
    bias: str | None  # bias initializer (Gemm C, or the Add's constant)
    trans_b: bool


def onnx_head(model) -> OnnxHead | None:
    """The last Gemm / MatMul with an initializer weight of a float onnx.ModelProto."""
    inits = {i.name for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    for n in reversed(model.graph.node):
        if n.op_type not in ("Gemm", "MatMul") or len(n.input) < 2 or n.input[1] not in inits:
            continue
        attrs = {a.name: a.i for a in n.attribute}
        if n.op_type == "Gemm":
            if attrs.get("transA", 0):
                return None
            bias = n.input[2] if len(n.input) > 2 and n.input[2] in inits else None
            return OnnxHead(n.name, n.input[0], n.output[0], n.input[1], bias, bool(attrs.get("transB", 0)))
        nxt = consumers.get(n.output[0], [])
        if len(nxt) == 1 and nxt[0].op_type == "Add":
            other = [t for t in nxt[0].input if t != n.output[0]]
            if other and other[0] in inits:
                return OnnxHead(n.name, n.input[0], nxt[0].output[0], n.input[1], other[0], False)
        return OnnxHead(n.name, n.input[0], n.output[0], n.input[1], None, False)
    return None


def onnx_weights(model, head: OnnxHead) -> tuple[np.ndarray, np.ndarray]:
    """(W (d, k), b (k,)) of the head in a float graph."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    w = numpy_helper.to_array(inits[head.weight]).astype(np.float64)
    w = w.T if head.trans_b else w
    b = numpy_helper.to_array(inits[head.bias]).astype(np.float64).reshape(-1) if head.bias else np.zeros(w.shape[1])
    return w, np.broadcast_to(b, (w.shape[1],)).copy()


def onnx_set_head(model, head: OnnxHead, w: np.ndarray, b: np.ndarray) -> None:
    """Write the head's weight and bias initializers of a float graph, in place (a bias-less head
    keeps no bias: `b` must then be ~0, which `solve` does not guarantee, so it is added as one)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    old = numpy_helper.to_array(inits[head.weight])
    new = (w.T if head.trans_b else w).astype(old.dtype).reshape(old.shape)
    inits[head.weight].CopyFrom(numpy_helper.from_array(new, head.weight))
    if head.bias is None:
        raise ValueError("the ONNX head has no bias initializer to refit")
    old_b = numpy_helper.to_array(inits[head.bias])
    inits[head.bias].CopyFrom(numpy_helper.from_array(np.asarray(b, old_b.dtype).reshape(old_b.shape), head.bias))


def onnx_tensor(model_bytes: bytes, x: np.ndarray, name: str, *, batch: int = 32) -> np.ndarray:
    """Values of tensor `name` (made a graph output) for inputs `x`, flattened per image. Default
    session options, so an int8 file runs its real int8 kernels up to that tensor."""
    onnx = require("onnx", extra="export")
    ort = require("onnxruntime", extra="export")
    model = onnx.load_from_string(model_bytes)
    if name not in {o.name for o in model.graph.output}:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0].name
    out = [sess.run([name], {inp: np.asarray(x[i:i + batch], np.float32)})[0] for i in range(0, len(x), batch)]
    return np.concatenate(out).reshape(len(x), -1).astype(np.float64)


def onnx_features(qdq_bytes: bytes, head: OnnxHead, x: np.ndarray) -> np.ndarray:
    """The dequantised input of the head node in a QDQ file (the DequantizeLinear output it reads)."""
    onnx = require("onnx", extra="export")
    model = onnx.load_from_string(qdq_bytes)
    node = next((n for n in model.graph.node if n.name == head.node), None)
    if node is None:
        raise ValueError(f"head node {head.node!r} is not in the int8 file")
    return onnx_tensor(qdq_bytes, x, node.input[0])


def onnx_refit(pre_model, fp32_bytes: bytes, qdq_bytes: bytes, x: np.ndarray, **kw) -> HeadFit:
    """Refit the head of `pre_model` (the float graph `qdq_bytes` was quantised from, pre-processed; edited
    in place when the refit is accepted) towards the logits of the float file `fp32_bytes`, fed the QDQ
    file's features on `x`."""
    onnx = require("onnx", extra="export")
    head, ref = onnx_head(pre_model), onnx_head(onnx.load_from_string(fp32_bytes))
    if head is None or ref is None or head.bias is None:
        raise ValueError("no Gemm / MatMul head with a bias to refit")
    w0, b0 = onnx_weights(pre_model, head)
    fq, z = onnx_features(qdq_bytes, head, x), onnx_tensor(fp32_bytes, x, ref.logits)
    if fq.shape[1] != w0.shape[0] or z.shape[1] != w0.shape[1]:
        raise ValueError(f"head shapes differ: features {fq.shape[1]}, logits {z.shape[1]}, weights {w0.shape}")
    fit = solve(fq, z, w0, b0, **kw)
    if fit.accepted:
        onnx_set_head(pre_model, head, fit.weights, fit.bias)
    return fit


# ---- TFLite and Keras ------------------------------------------------------------------------------
def tflite_head(content: bytes) -> tuple[int, int] | None:
    """(input tensor index, output tensor index) of the last FULLY_CONNECTED op of a TFLite model."""
    from ai_edge_litert.interpreter import Interpreter

    ops = [op for op in Interpreter(model_content=content)._get_ops_details() if op["op_name"] == "FULLY_CONNECTED"]
    return (int(ops[-1]["inputs"][0]), int(ops[-1]["outputs"][0])) if ops else None


def tflite_tensor(content: bytes, x: np.ndarray, index: int) -> np.ndarray:
    """Tensor `index` (dequantised, flattened per image) of a TFLite model run on float pixels `x`
    one image at a time (uint8 / int8 inputs are quantised as the runtime does)."""
    import warnings

    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():  # "for debugging purposes only": one image at a time, small tensors
        warnings.simplefilter("ignore")
        it = Interpreter(model_content=content, experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    detail = next(t for t in it.get_tensor_details() if t["index"] == index)
    scale, zp = detail["quantization"]
    rows = []
    for img in np.asarray(x, np.float32):
        feed = img[None]
        if d["dtype"] != np.float32:
            s, z = d["quantization"]
            info = np.iinfo(d["dtype"])
            feed = np.clip(np.round(feed / s + z), info.min, info.max).astype(d["dtype"])
        it.set_tensor(d["index"], feed)
        it.invoke()
        t = it.get_tensor(index).astype(np.float64).reshape(-1)
        rows.append((t - zp) * scale if scale else t)
    return np.stack(rows)


def keras_head(model):
    """The last Dense layer of a Keras model (nested models searched), if its activation is linear
    or softmax (so its pre-activation output is the logits); else None."""
    dense = None
    for layer in getattr(model, "layers", []):
        inner = keras_head(layer) if hasattr(layer, "layers") else None
        if inner is not None:
            dense = inner
        elif type(layer).__name__ == "Dense":
            dense = layer
    if dense is None:
        return None
    act = getattr(dense.activation, "__name__", str(dense.activation))
    return dense if act in ("linear", "softmax") and dense.use_bias else None


def tflite_refit(dense, fp32_bytes: bytes, int8_bytes: bytes, x: np.ndarray, **kw) -> HeadFit:
    """Refit Keras `dense` (the head the int8 TFLite file was converted from) towards the float TFLite
    file's logits, fed the int8 file's features on `x`. The layer itself is not changed."""
    hq, hf = tflite_head(int8_bytes), tflite_head(fp32_bytes)
    if dense is None or hq is None or hf is None:
        raise ValueError("no Dense head (linear or softmax, with a bias) to refit")
    w0, b0 = (np.asarray(w, np.float64) for w in dense.get_weights())
    fq, z = tflite_tensor(int8_bytes, x, hq[0]), tflite_tensor(fp32_bytes, x, hf[1])
    if fq.shape[1] != w0.shape[0] or z.shape[1] != w0.shape[1]:
        raise ValueError(f"head shapes differ: features {fq.shape[1]}, logits {z.shape[1]}, weights {w0.shape}")
    return solve(fq, z, w0, b0, **kw)
