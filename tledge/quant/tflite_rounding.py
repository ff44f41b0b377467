"""Adaptive re-rounding of the converted full-int8 TFLite file's weights (any loader: Keras 3, tf_keras,
SavedModel).

The graph-level counterpart of the Keras weight repair (tledge.quant.repair: GPTQ rounding plus bias
correction), for files whose model cannot be rebuilt as Keras 3. Every CONV_2D, DEPTHWISE_CONV_2D and
FULLY_CONNECTED op of the int8 file, in execution order, gets

- int8 weights chosen on the file's own per-channel scales to minimise the op's output error on the
  inputs the int8 kernels actually give it (GPTQ / OBQ closed form on their second moments,
  tledge.quant.gptq), towards the float weights of the same op in the export's fp32 TFLite file;
- the int32 bias that makes its mean output on those inputs equal the float op's mean output on the
  float file's inputs (so activation rounding upstream is absorbed too).

The inputs are read with the interpreter's `experimental_preserve_all_tensors` (builtin kernels, no
delegate) on the calibration images: the int8 file's prefix up to the next op (`prefix`) is re-run after
every `chunk` ops, so later ops see the re-rounded earlier ones (sequential, as in the Keras pass, but on
the integer kernels' own activations instead of a simulation); the float inputs are read once. Ops are paired with their float twins by tledge.quant.tflite_bias
(tensor name, else position; only where the int8 weight is the float one's rounding). Scales, zero
points, every other tensor, the metadata and the labels zip are kept: the file stays all-int8 (Edge TPU).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from tledge.quant import calibdata, moments, repair
from tledge.quant.tflite_bias import (BiasLog, LinearOp, Skips, dequantised, interpreter, load, pack, pair, repack,
                                      tensor_array)
from tledge.quant.subset import spread

KERAS_KIND = {"CONV_2D": "Conv2D", "DEPTHWISE_CONV_2D": "DepthwiseConv2D", "FULLY_CONNECTED": "Dense"}
CHUNK = 1  # ops re-rounded between two runs of the int8 file (1: each op sees the re-rounded ones before it;
# more double-counts the bias correction: an op absorbs upstream mean shifts its predecessors absorb too)
IMAGES = 32  # calibration images the moments cover
BUDGET = 1 << 28  # bytes of stored op inputs per chunk (float32, both files)
MIN_ROWS = 4  # an op is re-chosen only with >= MIN_ROWS x (kernel rows) input rows (images x positions):
# fewer under-determine the rounding and make the mean noisy (EfficientNet's squeeze-excite convolutions
# see one position per image). The Keras repair's rule for the same condition is `repair.MIN_SAMPLES_PER_ROW`
# (0.5x, on every calibration image): a different action (nearest rounding, bias correction kept) on more images.


@dataclass
class RoundingLog(Skips):
    layers: int = 0  # ops re-rounded
    runs: int = 0  # passes of the int8 file over the calibration images
    changed: int = 0  # int8 weight values that moved
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"adaptive rounding + bias correction of {self.layers} int8 ops on their int8 inputs "
                f"({self.changed} weights moved, {self.runs} passes of the int8 file, {self.seconds:.1f}s); "
                f"{self.skipped_text()}")


def to_keras(kind: str, w: np.ndarray, cin: int) -> np.ndarray:
    """TFLite weight layout -> the Keras kernel layout repair.to_groups reads."""
    if kind == "CONV_2D":  # (O, kh, kw, I) -> (kh, kw, I, O)
        return w.transpose(1, 2, 3, 0)
    if kind == "DEPTHWISE_CONV_2D":  # (1, kh, kw, C * m) -> (kh, kw, C, m)
        return w.reshape(w.shape[1], w.shape[2], cin, w.shape[3] // cin)
    return w.T  # FULLY_CONNECTED (O, I) -> (I, O)


def from_keras(kind: str, k: np.ndarray) -> np.ndarray:
    if kind == "CONV_2D":
        return k.transpose(3, 0, 1, 2)
    if kind == "DEPTHWISE_CONV_2D":
        return k.reshape(1, k.shape[0], k.shape[1], -1)
    return k.T


def geometry(op: LinearOp, kernel: np.ndarray) -> moments.Geometry:
    """The op's moments.Geometry from its options and its Keras-layout kernel."""
    kind = KERAS_KIND[op.kind]
    rows = int(np.prod(kernel.shape[:-1]))
    if op.kind == "FULLY_CONNECTED":
        return moments.Geometry(kind, rows=rows)
    o = op.options
    return moments.Geometry(kind, tuple(kernel.shape[:2]), (int(o.strideH), int(o.strideW)),
                            (int(o.dilationHFactor or 1), int(o.dilationWFactor or 1)),
                            "same" if int(o.padding) == 0 else "valid", rows)


def read_inputs(data: bytes, calib: np.ndarray, tensors: list[int]) -> dict[int, np.ndarray]:
    """Tensor index -> its values over `calib` (N, ...) as float32, int8 tensors dequantised, from the
    file `data` run with every intermediate tensor kept."""
    it = interpreter(data)
    inp = it.get_input_details()[0]
    quant = {d["index"]: d["quantization"] for d in it.get_tensor_details()}
    out: dict[int, list] = {t: [] for t in tensors}
    for x in calib:
        x = np.asarray(x, np.float32).reshape(inp["shape"])
        if inp["dtype"] != np.float32:
            s, zp = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / (s or 1.0) + zp), info.min, info.max).astype(inp["dtype"])
        it.set_tensor(inp["index"], x)
        it.invoke()
        for t in tensors:
            v = it.get_tensor(t)
            if v.dtype != np.float32:
                s, zp = quant[t]
                v = (v.astype(np.float32) - zp) * np.float32(s)
            out[t].append(v[0] if v.shape[0] == 1 else v)
    return {t: np.stack(v) for t, v in out.items()}


def chunks(model, pairs, images: int, chunk: int):
    """The pairs in groups of at most `chunk` whose stored inputs stay under BUDGET."""
    group, size = [], 0
    for p in pairs:
        shape = model.subgraphs[0].tensors[p[0].input].shape
        need = 8 * images * int(np.prod([int(d) for d in shape]))
        if group and (len(group) == chunk or size + need > BUDGET):
            yield group
            group, size = [], 0
        group.append(p)
        size += need
    if group:
        yield group


def correct(int8: bytes, fp32: bytes, calib: np.ndarray, *, images: int = IMAGES, chunk: int = CHUNK,
            method: str = "adaptive", damp: float = 0.01, bias_correction: bool = True,
            min_rows: float = MIN_ROWS) -> tuple[bytes, RoundingLog]:
    """The int8 TFLite file `int8` with every pairable linear op's int8 weights and int32 bias re-chosen
    (see the module doc); `fp32` is the float TFLite file of the same model. Metadata entries and files
    packed after the flatbuffer (labels.txt) are kept."""
    t0 = time.perf_counter()
    calib = calibdata.checked(calib)
    q_model, f_model = load(int8), load(fp32)
    log, blog = RoundingLog(), BiasLog()
    pairs = pair(q_model, f_model, blog)
    log.skipped.update(blog.skipped)
    calib = np.asarray(spread(calib, images), np.float32)
    position = {int(o.outputs[0]): i for i, o in enumerate(q_model.subgraphs[0].operators)}
    for stored in chunks(q_model, pairs, len(calib), len(pairs)):  # float inputs: read once per memory budget
        xf = read_inputs(fp32, calib, sorted({f.input for _, f, _ in stored}))
        for group in chunks(q_model, stored, len(calib), chunk):
            wanted = sorted({op.input for op, _, _ in group})
            xq = read_inputs(prefix(q_model, max(position[op.output] for op, _, _ in group), wanted), calib, wanted)
            log.runs += 1
            for op, f, _ in group:
                moved = _reround(q_model, f_model, op, f, xq[op.input], xf[f.input], method, damp, bias_correction,
                                 min_rows, log)
                if moved is not None:
                    log.layers += 1
                    log.changed += moved
    log.seconds = time.perf_counter() - t0
    return repack(bytes(int8), pack(q_model)), log


def prefix(model, upto: int, outputs: list[int]) -> bytes:
    """The file made of the model's operators before index `upto` (a prefix of a TFLite file's execution
    order computes everything those operators need), with `outputs` as its outputs: an op's inputs cost
    only the ops before it."""
    sg = model.subgraphs[0]
    kept = sg.operators, sg.outputs, model.signatureDefs
    sg.operators, sg.outputs, model.signatureDefs = sg.operators[:upto], list(outputs), []
    try:
        return pack(model)
    finally:
        sg.operators, sg.outputs, model.signatureDefs = kept


def _reround(q_model, f_model, op: LinearOp, f: LinearOp, xq, xf, method, damp, bias_correction, min_rows,
             log) -> int | None:
    """Re-choose one op's int8 weights and int32 bias in `q_model` in place; the int8 values moved."""
    sg = q_model.subgraphs[0]
    deq = dequantised(q_model, op)
    wf_t = tensor_array(f_model, f.weight)
    cin = int(xq.shape[-1])
    zp = sg.tensors[op.weight].quantization.zeroPoint
    shared = sum(1 for t in sg.tensors if t.buffer == sg.tensors[op.weight].buffer) > 1
    if deq is None or wf_t is None or shared or (zp is not None and np.any(np.asarray(zp) != 0)):
        log.skip("without symmetric int8 weights")
        return None
    if op.kind == "CONV_2D" and wf_t.shape[-1] != cin or op.kind == "DEPTHWISE_CONV_2D" and wf_t.shape[-1] % cin:
        log.skip("with an unsupported layout")  # grouped convolutions
        return None
    kind = KERAS_KIND[op.kind]
    kernel = to_keras(op.kind, wf_t.astype(np.float64), cin)
    g = repair.to_groups(kind, kernel)
    bias = tensor_array(f_model, f.bias) if f.bias >= 0 else None
    bias = np.zeros(g.shape[0] * g.shape[2]) if bias is None else bias.astype(np.float64)
    wf = np.concatenate([g, bias.reshape(g.shape[0], 1, -1)], 1)
    scale = repair.to_groups(kind, to_keras(op.kind, deq[1], cin))[:, :1, :]
    if op.kind == "FULLY_CONNECTED":
        xq, xf = xq.reshape(len(xq), -1), xf.reshape(len(xf), -1)
    mom = moments.collect(geometry(op, kernel), xq, xf, cross_images=0)
    if mom.hqq[0, -1, -1] < min_rows * (mom.hqq.shape[1] - 1):
        log.skip("with too few input rows for their kernel")
        return None
    own_bias = op.bias >= 0 and sum(1 for t in sg.tensors if t.buffer == sg.tensors[op.bias].buffer) == 1
    w = repair.rounded(wf, mom, scale, method=method, bias_correction=own_bias and bias_correction, damp=damp)
    safe = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.round(w[:, :-1] / safe), -127, 127)
    new = from_keras(op.kind, repair.from_groups(kind, q, kernel.shape)).astype(np.int8)
    old = tensor_array(q_model, op.weight)
    _write(q_model, op.weight, new.reshape(old.shape))
    if own_bias:
        bscale = np.broadcast_to(np.asarray(sg.tensors[op.bias].quantization.scale, np.float64), (w.shape[0] * w.shape[2],))
        b = np.round(w[:, -1].reshape(-1) / np.where(bscale > 0, bscale, np.inf))
        _write(q_model, op.bias, np.clip(b, -2**31, 2**31 - 1).astype("<i4"))
    else:
        log.skip("without their own bias tensor (weights only)")
    return int(np.count_nonzero(new.reshape(old.shape) != old))


def _write(model, index: int, values: np.ndarray) -> None:
    buf = model.subgraphs[0].tensors[index].buffer
    model.buffers[buf].data = np.frombuffer(values.tobytes(), np.uint8).copy()
