"""Activation ranges for the 8-bit grids: the converters' calibration min/max, or each tensor's upper bound cut to
the fraction of its max with the least squared error (rounding plus clipping) on its calibration values ("mse").

The converters put every activation on a per-tensor grid spanning the calibration min/max. A tensor with a long
tail (a batch-norm output before a swish, whose largest values are rare) then spends most of its 256 levels on
values that hardly occur, and the typical value is rounded coarsely. Cutting the upper bound where the squared
error is least (the range estimators of AIMET and NNCF do the same) trades a few clipped outliers for a finer grid.
Measured (twenty-second session, docs/int8-fidelity.md "Activation ranges by least squared error"): on two
EfficientNetB0 heads 39 -> 24 and 119 -> 63 flips of 1300 photos in the stem-6 TFLite file; on MobileNet 0.25
(ReLU6, bounded) 0-5 photos either way; on MobileNetV3 Small (hard-swish) 20 -> 65. So the fidelity loop has it as
a rung of its own (`repaired-stem6+mse`), applied in three places that must agree: the weight repair's simulation of
each rounded activation (`mse_range`), the calibrated TFLite model's recorded ranges (`tflite_ranges`) and
onnxruntime's TensorQuantOverrides (`onnx_overrides`)."""
from __future__ import annotations

import numpy as np

from tledge._deps import require
from tledge.quant import unfused
from tledge.quant.fakequant import fake_quant

FRACTIONS = np.linspace(0.25, 1.0, 31)  # candidate upper bounds, as fractions of the calibration max
SAMPLE = 400_000  # values a bound is chosen on (drawn with a fixed seed from larger tensors)
IMAGES = 96  # calibration images the file's tensors are read on


def best_hi(values, lo: float, hi: float) -> float:
    """The upper bound (a fraction of `hi`, see FRACTIONS) with the least squared quantisation error on `values`,
    the lower bound `lo` kept."""
    v = np.asarray(values, np.float32).ravel()
    if hi <= 0 or v.size == 0:
        return float(hi)
    if v.size > SAMPLE:
        v = v[np.random.default_rng(0).integers(0, v.size, SAMPLE)]
    errs = [float(np.mean((fake_quant(v.copy(), lo, hi * f) - v) ** 2)) for f in FRACTIONS]
    return float(hi * FRACTIONS[int(np.argmin(errs))])


def minmax_range(view) -> tuple[float, float]:
    """The converters' own range: the calibration min / max."""
    v = np.asarray(view)
    return float(v.min()), float(v.max())


def mse_range(view) -> tuple[float, float]:
    """The calibration min, and the upper bound `best_hi` chooses."""
    lo, hi = minmax_range(view)
    return lo, best_hi(view, min(lo, 0.0), hi)


RANGE_OF = {"minmax": minmax_range, "mse": mse_range}


def tflite_ranges(calibrated: bytes, calib, images: int = IMAGES) -> tuple[bytes, int]:
    """The calibrated float TFLite model (selective.calibrate_tflite) with every activation's recorded max cut
    by `best_hi` on its own values over `images` calibration images: (model, tensors cut). The model input and
    outputs, and the outputs of ops whose int8 grid is fixed (LOGISTIC, SOFTMAX, TANH), keep theirs."""
    from tledge.quant import tflite_bias as tb

    model = tb.load(calibrated)
    sg = model.subgraphs[0]
    ends = {int(i) for i in sg.inputs} | {int(o) for o in sg.outputs}
    fixed = {"LOGISTIC", "SOFTMAX", "TANH", "LOG_SOFTMAX"}
    chosen = []
    for op, kind in zip(sg.operators, tb.op_kinds(model)):
        for i in map(int, op.outputs):
            q = sg.tensors[i].quantization
            if i not in ends and kind not in fixed and q is not None and q.max is not None and len(q.max) == 1:
                chosen.append(i)
    it = tb.interpreter(calibrated)  # every intermediate tensor readable
    inp = it.get_input_details()[0]
    rng = np.random.default_rng(0)
    per_image = max(1, SAMPLE // max(1, min(images, len(calib))))
    values: dict[int, list] = {i: [] for i in chosen}
    for x in np.asarray(calib)[:images]:
        it.set_tensor(inp["index"], np.asarray(x[None], inp["dtype"]))
        it.invoke()
        for i in chosen:
            v = it.get_tensor(i).ravel()
            values[i].append(v[rng.integers(0, v.size, per_image)] if v.size > per_image else v.copy())
    cut = 0
    for i in chosen:
        q = sg.tensors[i].quantization
        lo, hi = float(q.min[0]), float(q.max[0])
        new = best_hi(np.concatenate(values[i]), min(lo, 0.0), hi)
        if new < hi:
            q.max = np.asarray([new], np.float32)
            cut += 1
    return tb.pack(model), cut


def onnx_overrides(pre_path, calib, skip=(), batch: int = 8) -> dict:
    """TensorQuantOverrides ({tensor: [{"rmin", "rmax"}]}) of a pre-processed float ONNX graph: every float
    node output but the graph's outputs and the tensors in `skip` (those with overrides of their own), its
    calibration min and its `best_hi` upper bound, in one pass over `calib` with them as extra outputs."""
    onnx = require("onnx", extra="export")
    model = onnx.load(str(pre_path))
    outputs = {o.name for o in model.graph.output}
    consts = {i.name for i in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant"
                                                            for o in n.output}
    skip = outputs | consts | set(skip)
    names = [o for n in model.graph.node if n.op_type not in ("Shape", "Softmax") for o in n.output
             if o and o not in skip]
    sess = unfused.session(model, names)
    feed = sess.get_inputs()[0].name
    got = [o.name for o in sess.get_outputs()]
    values: dict[str, list] = {t: [] for t in names}
    extremes: dict[str, list] = {t: [] for t in names}
    x = np.asarray(calib)
    rng = np.random.default_rng(0)
    per_batch = max(1, SAMPLE * batch // max(1, len(x)))
    for start in range(0, len(x), batch):
        for name, v in zip(got, sess.run(None, {feed: np.asarray(x[start:start + batch], np.float32)})):
            v = np.asarray(v)
            if name in values and np.issubdtype(v.dtype, np.floating) and v.size:
                v = v.ravel()
                extremes[name].append(minmax_range(v))
                values[name].append(v[rng.integers(0, v.size, per_batch)] if v.size > per_batch else v.copy())
    overrides = {}
    for t, parts in values.items():
        if not parts:
            continue
        lo, hi = min(e[0] for e in extremes[t]), max(e[1] for e in extremes[t])
        new = best_hi(np.concatenate(parts), min(lo, 0.0), hi)
        if new < hi:
            overrides[t] = [{"rmin": np.float32(min(lo, 0.0)), "rmax": np.float32(new)}]
    return overrides
