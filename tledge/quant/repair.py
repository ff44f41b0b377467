"""Weight-side int8 repairs applied to a Keras model before conversion (issue 7).

`apply(model, calib_pixels, steps=DEFAULT_STEPS, stem=0) -> (new_model, RepairLog)`; each step is
a pure function model -> new Keras 3 functional model (the input model is never changed):

- `fold` (always): flatten nested models, drop Dropout, fold BatchNormalization into the conv/depthwise/dense before
  it (`kerasgraph.fold_bn`; max abs vs the original is logged, ~2e-6).
- `exact_input`: a baked `x/127.5 - 1` becomes `(x - 128)/127.5`, first conv bias compensated: pixels on the grid.
- experiments the product does not run (cross-layer equalisation, quantisation-aware fine-tuning: measured, no gain;
  see docs/int8-fidelity.md) live in lab/quant/ and plug in as `extra` steps: `apply(model, calib, steps,
  extra={"cle": lab.quant.cle.step()})` (callables model, calib, log -> model, run before rounding; `extra_after`
  after it).
- `nearest` / `adaptive`, `bias_correction`: one sequential pass over the calibration set (`quantize_weights`)
  that puts every conv/depthwise/dense kernel on the exact per-channel symmetric int8 grid the converters use (scale =
  max|w|/127, one element per channel at +-127, so TFLite and onnxruntime re-derive the same scale and keep every
  value). `adaptive` picks each rounding to minimise the layer's output error on calibration inputs (GPTQ/OBQ closed
  form on the input second moments, tledge.quant.gptq: an AdaRound-style objective without training);
  `bias_correction` sets the bias that removes the expected output shift (empirical, on calibration data).
- `stem=k`: the first k conv layers and all before them keep float weights (`selective.tflite_stem` / `onnx_stem`).

The repaired model's float weights *are* the int8 weights: check parity of the exported files
against the ORIGINAL model, not against the repaired one.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from tledge.errors import ExportError, RepairTimeout
from tledge.quant import calibdata, floatweights, gptq, moments
from tledge.quant.kerasgraph import (  # noqa: F401  (re-exported: repair.fold_bn, repair.predict, ...)
    HOMOGENEOUS, apply_layer, call_layer, clip_of, clone_layer, flat_model, keras_lib, linear_kind,
    rebuild_model, single_use, flatten, fold_bn, kernel_out, nodes, operations, predict, use_counts)
from tledge.quant.fakequant import (  # noqa: F401  (re-exported: repair.fake_quant, repair.logistic_int8)
    fake_quant, fake_quant_tensor, logistic_activation, logistic_int8, logistic_output)
from tledge.quant.ranges import RANGE_OF

DEFAULT_STEPS = ("fold", "exact_input", "adaptive", "bias_correction")
FOLD_TOLERANCE = 1e-3  # max abs change the rebuild + BN folding may make (measured ~2e-6), x max(1, |output|)
KNOWN_STEPS = ("fold", "exact_input", "nearest", "adaptive", "bias_correction")
# `adaptive` (GPTQ) compensates each rounding along the calibration inputs' second moments. A kernel with far fewer
# calibration rows than kernel rows (a squeeze-excite or head layer on 1x1 inputs: one row per image) has strongly
# rank-deficient moments: the compensation then fits the calibration set's own activation noise and moves weights along
# directions no calibration input spans, so it rounds to nearest there (bias correction still runs). Measured on the
# int8 simulation, stem 6, flips of the 1300 other photos (GPTQ everywhere / under 0.5x / under 1x): EfficientNetB0
# 44 / 37 / 34, MobileNetV3 Small 22 / 22 / 20, MobileNet 0.25 (head, 0.96x) 16+16+13 / same / 18+15+13. Under 4x:
# EfficientNetB0 49, worse. 0.5x rather than 1x since the twentieth session: the nearly full-rank MobileNet 0.25 head
# (245 rows for 256) on nearest cost the issue 7 acceptance file 2 of 153 val photos of accuracy on ONNX
# (docs/int8-fidelity.md, "Rank-deficient layers"). The graph-level re-rounding has its own threshold on its 32
# images: tflite_rounding.MIN_ROWS (4x; it skips such ops altogether).
MIN_SAMPLES_PER_ROW = 0.5


@dataclass
class LayerRepair:
    name: str
    kind: str
    rows: int  # input dimension of the layer's reconstruction (patch size)
    err_nearest: float  # relative output MSE with round-to-nearest weights (first 32 calibration images)
    err_repaired: float  # the same with the chosen weights and bias (both NaN with apply(errors=False))
    rounding: str = "adaptive"  # "nearest" where asked, or where the layer is `undersampled`


@dataclass
class RepairLog:
    steps: tuple[str, ...]
    folded_bn: int = 0
    fold_max_abs: float | None = None  # float model after fold vs original, on calibration images
    input_max_abs: float | None = None  # after exact_input vs original (None: not applicable)
    layers: list[LayerRepair] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"repair steps {','.join(self.steps)}: {self.folded_bn} BN folded (max abs {self.fold_max_abs}), "
                 f"exact input {self.input_max_abs}, {len(self.layers)} kernels on the int8 grid, {self.seconds:.1f}s"]
        few = [r.name for r in self.layers if r.rounding == "nearest"]
        if few and "adaptive" in self.steps:
            lines.append(f"{len(few)} kernels with calibration rows under {MIN_SAMPLES_PER_ROW:g}x their kernel rows "
                         f"rounded to nearest: {', '.join(few[:4])}{' ...' if len(few) > 4 else ''}")
        return "\n".join(lines + self.notes)


# ---- an input grid that holds every pixel exactly ---------------------------------------------
def exact_input(model):
    """Shift a baked `x/127.5 - 1` (any equal-channel baked preprocessing whose offset is a half-integer
    number of pixel steps) to `(x - 128)/127.5`, whose per-tensor int8 grid holds all 256 pixel
    values exactly, and compensate in the first conv's bias. With the half-integer offset the
    zero point lands between two integers: every converter rounds half the pixels by half a
    step, and onnxruntime's QLinearAdd rounds them all one way (a systematic input shift that
    the first layers amplify). Exact except where that conv zero-pads (the pad differs by
    1/255 in normalised units). Returns (new_model, shifted?)."""
    from tledge.layers import affine, baked_norm, preprocess_layer

    flat = flatten(model)
    found = [(layer, baked_norm(layer)) for layer in flat.layers]
    found = [(layer, norm) for layer, norm in found if norm is not None]
    if len(found) != 1 or found[0][1][0] == "caffe" or not single_use(found[0][0]):
        return flat, False
    pre, (mode, pre_mean, pre_std) = found[0]
    channels = int(pre.output.shape[-1])
    scale, offset, _ = affine(mode, pre_mean, pre_std, channels)
    scale, offset = np.asarray(scale, np.float64), np.asarray(offset, np.float64)
    steps = -offset / scale  # the offset in pixel units
    if np.ptp(scale) > 0 or np.ptp(steps) > 0 or abs(steps[0] - np.floor(steps[0]) - 0.5) > 1e-3:
        return flat, False
    op = pre._outbound_nodes[0].operation
    while type(op).__name__ == "ZeroPadding2D" and single_use(op):
        op = op._outbound_nodes[0].operation
    if linear_kind(op) not in ("Conv2D", "DepthwiseConv2D") or len(op._inbound_nodes) != 1:
        return flat, False
    delta = 0.5 * scale  # new input = old input - delta
    mean, std = np.round(steps + 0.5), 1.0 / scale
    first = op.name

    def make(layer):
        if layer is pre:
            return preprocess_layer("custom", mean.tolist(), std.tolist(), channels), []  # tledge_preprocess
        if layer.name != first:
            return clone_layer(layer)
        w = layer.get_weights()
        bias = w[1] if len(w) > 1 else np.zeros(kernel_out(layer, w[0]), np.float32)
        if type(layer).__name__ == "DepthwiseConv2D":
            shift = (w[0].sum(axis=(0, 1)) * delta[:, None]).reshape(-1)
        else:
            shift = np.einsum("hwio,i->o", w[0], delta)
        return clone_layer(layer, [w[0], (bias + shift).astype(np.float32)], use_bias=True)

    return rebuild_model(flat, make), True


# ---- the int8 grid and the sequential reconstruction -------------------------------------------
def to_groups(kind, kernel):
    """Kernel -> (G, d, k): G independent groups of d inputs and k output channels."""
    if kind == "DepthwiseConv2D":
        kh, kw, c, mult = kernel.shape
        return kernel.reshape(kh * kw, c, mult).transpose(1, 0, 2)
    return kernel.reshape(1, -1, kernel.shape[-1])


def from_groups(kind, mats, shape):
    if kind == "DepthwiseConv2D":
        kh, kw, c, mult = shape
        return mats.transpose(1, 0, 2).reshape(shape)
    return mats.reshape(shape)


def grid_scale(mats):
    """Per output channel symmetric int8 scale, as TFLite and onnxruntime derive it."""
    return np.abs(mats).max(axis=1, keepdims=True) / float(gptq.QMAX)


def round_nearest(mats, scale):
    safe = np.where(scale > 0, scale, 1.0)
    return np.clip(np.round(mats / safe), -gptq.QMAX, gptq.QMAX) * scale


def quantize_kernel(layer, kernel):
    """Round-to-nearest per-channel symmetric int8, returned dequantised (float32)."""
    kind = type(layer).__name__
    g = to_groups(kind, kernel.astype(np.float64))
    return from_groups(kind, round_nearest(g, grid_scale(g)), kernel.shape).astype(np.float32)


def simulate_int8_weights(model):
    """Copy of a *folded* model with every conv/depthwise/dense kernel rounded to nearest int8."""
    def make(op):
        new, w = clone_layer(op)
        if linear_kind(op):
            w = [quantize_kernel(op, w[0])] + w[1:]
        return new, w
    return rebuild_model(model, make)


def _quad(a, h, b) -> float:
    """sum over g, d, e, k of a[g,d,k] h[g,d,e] b[g,e,k], through BLAS: a three-operand np.einsum runs a
    naive O(G d^2 k) loop (minutes per layer for ResNet50's 3x3x512 convolutions)."""
    return float(np.sum(a * np.matmul(h, b)))


def relative_output_error(w, wf, hqq, hqf, hff):
    """Relative output MSE of [W;b] on quantised inputs against [Wf;bf] on float inputs."""
    return output_errors((w,), wf, hqq, hqf, hff)[0]


def output_errors(ws, wf, hqq, hqf, hff) -> tuple[float, ...]:
    """relative_output_error of each of `ws`, the products with wf formed once."""
    hff_wf, hqf_wf = np.matmul(hff, wf), np.matmul(hqf, wf)
    ref = float(np.sum(wf * hff_wf))
    out = []
    for w in ws:
        e = _quad(w, hqq, w) - 2 * float(np.sum(w * hqf_wf)) + ref
        out.append(float(max(e, 0.0) / max(ref, 1e-30)))
    return tuple(out)


def rounded(wf, mom: moments.Moments, scale, *, method="adaptive", bias_correction=True, damp=0.01):
    """Groups [W; b] (G, d, k) of float weights `wf` with W on the int8 grid `scale` (G, 1, k): `adaptive`
    (GPTQ on the quantised inputs' second moments; nearest where they are `undersampled`) or `nearest` rounding of
    wf, and the bias that makes the mean output on the quantised inputs match the float layer's
    on the float inputs (`bias_correction`; else wf's bias). Shared by the Keras repair and
    tledge.quant.tflite_rounding."""
    hqq = mom.hqq
    if method == "adaptive" and undersampled(hqq):
        method = "nearest"
    if method == "adaptive":
        w = gptq.solve(wf, hqq, scale, damp)
    else:
        w = wf.copy()
        w[:, :-1] = round_nearest(wf[:, :-1], scale)
    if bias_correction:  # the bias that makes the mean output match the float layer's
        n = hqq[:, -1, -1][:, None]
        mean_f = np.einsum("gd,gdk->gk", mom.fsum, wf) / n
        w[:, -1] = mean_f - np.einsum("gd,gdk->gk", hqq[:, -1, :-1], w[:, :-1]) / n
    else:
        w[:, -1] = wf[:, -1]
    return w


def undersampled(hqq) -> bool:
    """Fewer calibration rows (hqq's bias corner counts them) than MIN_SAMPLES_PER_ROW x kernel rows."""
    return float(hqq[0, -1, -1]) < MIN_SAMPLES_PER_ROW * (hqq.shape[1] - 1)


def _solve_layer(layer, mom: moments.Moments, method, bias_correction, damp):
    kind = type(layer).__name__
    weights = layer.get_weights()
    kernel = weights[0]
    bias = weights[1] if len(weights) > 1 else np.zeros(kernel_out(layer, kernel), np.float32)
    g = to_groups(kind, kernel.astype(np.float64))
    wf = np.concatenate([g, bias.reshape(g.shape[0], 1, -1).astype(np.float64)], 1)
    w = rounded(wf, mom, grid_scale(g), method=method, bias_correction=bias_correction, damp=damp)
    errs = (float("nan"), float("nan"))
    if mom.hqf is not None:
        near = wf.copy()
        near[:, :-1] = round_nearest(g, grid_scale(g))
        errs = output_errors((near, w), wf, mom.sub_qq, mom.hqf, mom.hff)
    new = [from_groups(kind, w[:, :-1], kernel.shape).astype(np.float32),
           w[:, -1].reshape(-1).astype(np.float32)]
    return new, errs


def _with_bias(op):
    new, w = clone_layer(op, use_bias=True) if linear_kind(op) else clone_layer(op)
    if linear_kind(op) and len(w) == 1:
        w = w + [np.zeros(kernel_out(op, w[0]), np.float32)]
    return new, w


_NO_REQUANT = ("ZeroPadding2D", "Reshape", "Flatten", "Dropout", "MaxPooling2D", "InputLayer")


def requantised(op) -> bool:
    """Whether a converter gives this op's output its own int8 tensor (activations fuse into the
    conv/dense before them; padding and reshapes keep their input's quantisation)."""
    if type(op).__name__ in _NO_REQUANT:
        return False
    if linear_kind(op) and single_use(op):
        return clip_of(op._outbound_nodes[0].operation) is False
    return True


def stem_layers(model, k: int) -> list[str]:
    """Names of the layers of a flat model up to its k-th conv/dense and that layer's activation:
    the part `selective.tflite_stem` / `onnx_stem` keep float in the converted files."""
    names, seen = [], 0
    for op, _ in nodes(model):
        if seen == k:
            if clip_of(op) is False or type(op).__name__ in HOMOGENEOUS:
                break
        names.append(op.name)
        seen += bool(linear_kind(op))
    return names if k > 0 else []


LOGISTIC_GRID = True  # act_quant: sigmoid and swish as an int8 TFLite file computes them (fakequant.logistic_int8)


def quantised_output(op, keep) -> bool:
    if op.name not in keep:
        return requantised(op)
    return any(n.operation.name not in keep for n in op._outbound_nodes)  # leaves the float stem


def quantize_weights(model, calib, *, method="adaptive", bias_correction=True, act_quant=True,
                     keep_float=(), damp=0.01, log: RepairLog | None = None, errors=True, stop=None,
                     ranges="minmax"):
    """Sequentially put every kernel of a folded flat model on the int8 grid (see module doc).

    Layers are visited in graph order; each one sees the float model's input (its target) and the input produced by
    the already-quantised layers before it, over the whole calibration set. `act_quant` also rounds those inputs to
    the per-tensor 8-bit activation grid the converter will use (`ranges`: tledge.quant.ranges.RANGE_OF), so
    rounding and bias absorb the activation error too.
    Layers named in `keep_float` (see `stem_layers`) keep float weights and float outputs. `errors=False`
    skips the logged per-layer errors (NaN in the log; their cross moments were ~1/4 of the pass). `stop`: called
    before each kernel, a reason (str) ends the pass with RepairTimeout (the export's --repair-time), None goes on."""
    keep = set(keep_float)
    act_range = RANGE_OF[ranges]
    kernels, done = sum(bool(linear_kind(op)) and op.name not in keep for op, _ in nodes(model)), 0
    qmodel = rebuild_model(model, _with_bias)
    qlayers = operations(qmodel)
    uses = use_counts(nodes(model))
    outputs = {id(t) for t in model.outputs}
    acts_f = {id(t): np.asarray(calib, np.float32) for t in model.inputs}
    acts_q = dict(acts_f)
    for op, node in nodes(model):
        (args_f, kw_f), (args_q, kw_q) = node.arguments.fill_in(acts_f), node.arguments.fill_in(acts_q)
        flat_f, flat_q = list(flat_model(args_f)), list(flat_model(args_q))
        qop = qlayers[op.name]
        if linear_kind(op) and len(flat_f) == 1 and op.name not in keep:
            why = stop() if stop is not None else None
            if why:
                raise RepairTimeout(f"the weight repair stopped after {done} of {kernels} kernels: {why}")
            done += 1
            mom = moments.collect(op, np.asarray(flat_q[0]), np.asarray(flat_f[0]),
                                  cross_images=32 if errors else 0)
            new, errs = _solve_layer(qop, mom, method, bias_correction, damp)
            qop.set_weights(new)
            if log is not None:
                rounding = "nearest" if method == "nearest" or undersampled(mom.hqq) else method
                log.layers.append(LayerRepair(op.name, type(op).__name__, mom.hqq.shape[1] - 1, *errs, rounding))
        out_f = call_layer(op, args_f, kw_f)  # tensors where they fit: no copies between layers
        same = all(a is b for a, b in zip(flat_f, flat_q)) and not linear_kind(op)
        kind = act_quant and LOGISTIC_GRID and op.name not in keep and logistic_activation(op)
        if kind:  # instead of the float activation on the quantised input, not after it
            out_q = logistic_output(op, qop, kind, (args_f, kw_f), (args_q, kw_q), flat_q[0], act_range)
        else:
            out_q = out_f if same else call_layer(qop, args_q, kw_q)
        # (a sigmoid's output is on LOGISTIC's grid already: the file does not round it again)
        if act_quant and quantised_output(op, keep) and op.name not in model.output_names and kind != "sigmoid":
            out_q = fake_quant_tensor(out_q, *act_range(np.asarray(out_f)))
        for t in node.outputs:
            acts_f[id(t)], acts_q[id(t)] = out_f, out_q
        for t in node.input_tensors:
            uses[id(t)] -= 1
            if uses[id(t)] == 0 and id(t) not in outputs:
                acts_f.pop(id(t), None)
                acts_q.pop(id(t), None)
    return qmodel


# ---- the pipeline ------------------------------------------------------------------------------
def apply(model, calib, steps=DEFAULT_STEPS, *, stem: int = 0, keep=(), act_quant=True, damp=0.01,
          extra: dict | None = None, extra_after: dict | None = None, check=16, errors=True, stop=None,
          ranges="minmax"):
    """Run the repair `steps` (see KNOWN_STEPS; a str is one step) on a Keras model that takes float32 pixels NHWC.

    Returns (new_model, RepairLog). `calib` are calibration inputs exactly as the model takes them (float32 pixels
    for a model with baked preprocessing). `extra` / `extra_after`: named callables (model, calib, log) -> model run
    before / after the rounding (lab experiments). `errors=False`: no per-layer error figures in the log (NaN), the
    same model, faster. `stop`: see quantize_weights (RepairTimeout). `keep`: activations (as the converters name
    them) a TFLite file keeps float beyond the stem: the layers around them keep float weights
    (floatweights.float_set). `ranges`: the activation grids' ranges (ranges.RANGE_OF; the file must get the same)."""
    if ranges not in RANGE_OF:
        raise ExportError(f"unknown activation ranges {ranges!r}; known: {', '.join(RANGE_OF)}")
    steps = ((steps,) if isinstance(steps, str) else tuple(steps)) + tuple(extra or ()) + tuple(extra_after or ())
    unknown = [s for s in steps if s not in KNOWN_STEPS + tuple(extra or ()) + tuple(extra_after or ())]
    if unknown:
        raise ExportError(f"unknown repair steps {unknown}; known: {', '.join(KNOWN_STEPS)}")
    if "nearest" in steps and "adaptive" in steps:
        raise ExportError("choose one rounding: 'nearest' or 'adaptive'")
    t0 = time.perf_counter()
    calib = np.asarray(calibdata.checked(calib), np.float32)
    log = RepairLog(steps)
    sample = calib[:check]
    ref = predict(model, sample)
    m, log.folded_bn = fold_bn(model)
    log.fold_max_abs = float(np.abs(predict(m, sample) - ref).max())
    if not log.fold_max_abs <= FOLD_TOLERANCE * max(1.0, float(np.abs(ref).max())):  # NaN fails too
        raise ExportError(f"int8 repair: the rebuilt, BN-folded model differs from the original by "
                          f"{log.fold_max_abs:.3g} (max abs): a layer does not survive the rebuild; no repair")
    if "fold" not in steps:
        log.notes.append("BN folding always runs: the converters fold BN themselves, after any rounding.")
    if "exact_input" in steps:
        m, shifted = exact_input(m)
        log.input_max_abs = float(np.abs(predict(m, sample) - ref).max()) if shifted else None
    for step in (extra or {}).values():
        m = step(m, calib, log)
    rounding = "adaptive" if "adaptive" in steps else "nearest"
    if rounding in steps or "bias_correction" in steps:
        m = quantize_weights(m, calib, method=rounding, bias_correction="bias_correction" in steps,
                             act_quant=act_quant, keep_float=stem_layers(m, stem) + floatweights.float_set(m, keep),
                             damp=damp, log=log, errors=errors, stop=stop, ranges=ranges)
    for step in (extra_after or {}).values():
        m = step(m, calib, log)
    log.seconds = time.perf_counter() - t0
    return m, log
