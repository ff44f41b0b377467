"""Contracts for files made elsewhere (no tledge metadata): inferred from the input tensor and the file's
standard TFLite metadata when it has some (labels, normalisation, colour space: what MediaPipe Tasks and the
Task Library read), completed by options (labels, preprocess mode or backbone, mean/std, layout, resize,
crop, color, size, logits), which win over the metadata.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from tledge.contract import ColorOrder, Contract, Fit, Layout, Norm, Output, Resize
from tledge.errors import ArgumentError, ContractError, ModelLoadError, TledgeWarning

if TYPE_CHECKING:  # read only for files made elsewhere: not imported on a tledge file's path (cold start)
    from tledge.std_metadata import StandardMetadata

STANDARD_ORIGIN = "standard TFLite metadata"

RAW_PIXELS = "a float-input model made elsewhere and no preprocessing given: feeding raw 0..255 pixels."


class RawPixelsAssumed(TledgeWarning):
    """RAW_PIXELS and what to pass instead (tledge run's options, which bench and parity take too)."""


# options that describe preprocessing; `labels` is separate (it may also rename an embedded contract's)
PREPROCESS_OPTIONS = ("preprocess", "mean", "std", "layout", "resize", "crop", "fit", "color", "input_size",
                      "logits")
KNOWN_OPTIONS = PREPROCESS_OPTIONS + ("labels",)


def check_options(options: dict) -> dict:
    unknown = set(options) - set(KNOWN_OPTIONS)
    if unknown:
        raise TypeError(f"unknown contract option(s): {sorted(unknown)}; known: {', '.join(KNOWN_OPTIONS)}")
    size = options.get("input_size")
    if size is not None and not (isinstance(size, (tuple, list)) and len(size) == 2 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in size)):
        # 48 or "48x48" failed unpacking; (-1, -1) said "pass --input-size", which was passed
        raise ArgumentError(f"input_size takes (height, width), two integers > 0, got {size!r}")
    return {k: v for k, v in options.items() if v is not None and v is not False and v != ()}


def read_standard(path) -> StandardMetadata | None:
    """The standard TFLite metadata of a file made elsewhere, or None (none, not TFLite, or unreadable)."""
    from tledge.metadata import read_standard_metadata

    try:
        return read_standard_metadata(path)
    except ModelLoadError as exc:
        warnings.warn(f"ignoring the unreadable standard TFLite metadata of {path}: {exc}", TledgeWarning,
                      stacklevel=3)
        return None


def infer_for_file(path: Path, backend, standard: StandardMetadata | None, options: dict) -> Contract:
    """infer_contract for a file a backend opened: an ONNX file's producer and the op that makes its output too;
    a TFLite file resizes as MediaPipe Tasks does (warp-linear) unless `resize` is given."""
    producer, last = "", None
    if Path(path).suffix.lower() == ".tflite" and "resize" not in options:
        # a TFLite file was most likely trained on tf.image.resize's bilinear pixels, and MediaPipe Tasks (bit for
        # bit) and the Task Library feed it bilinear ones: on 1300 ImageNet photos the Coral MobileNet v1 0.25
        # 128 px file is right on 31 photos only with area and on 62 only with this (docs/tflite-metadata.md)
        options = {**options, "resize": Resize.WARP_LINEAR}
    if Path(path).suffix.lower() == ".onnx":
        from tledge.runtime.onnxgraph import output_op

        producer, last = backend.describe().get("producer") or "", output_op(path)
        if producer == "tledge":  # (its producer name and its contract are written together: tledge.export.onnx)
            warnings.warn(f"{Path(path).name} was exported by tledge, but the contract embedded in it is gone (an ONNX "
                          "tool that drops metadata_props?): it runs as a file made elsewhere, its labels, resize and "
                          "normalisation guessed; run the exported file, or copy this one with the export's tledge.json "
                          "into a folder of their own (tledge.json is then its contract)", TledgeWarning, stacklevel=3)
    elif Path(path).suffix.lower() == ".tflite":
        from tledge.runtime.onnxgraph import tflite_output_op

        last = tflite_output_op(path)
    return infer_contract(backend.inp, backend.out, standard=standard, producer=producer, output_op=last, **options)


def infer_contract(inp, out=None, standard: StandardMetadata | None = None, producer: str = "",
                   output_op: str | None = None, **options: Any) -> Contract:
    """A contract for a file made elsewhere: from its input tensor (TensorInfo) and its standard TFLite
    metadata (`standard`), completed by `options`.

    Without preprocessing options: a quantised input gets exactly the normalisation its quantisation
    parameters describe, so raw pixels go in unchanged (the usual convention of such files, and what
    MediaPipe and the Task Library feed a uint8 input); a uint8 input takes raw pixels; a float input takes
    the metadata's NormalizationOptions, else raw 0..255 pixels, with a warning. Labels: the option, else
    the metadata's TENSOR_AXIS_LABELS file when it has one label per output. `producer`: the ONNX file's
    producer_name (a backbone name means Keras's preprocessing, which PyTorch's models do not take); `output_op`:
    the op that makes an ONNX file's output (tledge.runtime.onnxgraph: a one-score Gemm output is a logit).
    """
    options = check_options(options)
    layout, (c, h, w) = _geometry(inp, options)
    extra: dict[str, Any] = {"origin": "inferred"}
    labels = tuple(options.get("labels", ()))
    if standard is not None:
        extra = {"origin": STANDARD_ORIGIN, "metadata_name": standard.name or None}
        if not labels:
            labels = _standard_labels(standard, out, extra)
        _score_calibration(standard, out, extra)
        threshold = standard.outputs[0].score_threshold if standard.outputs else None
        if threshold is not None and np.isfinite(threshold):  # MediaPipe and the Task Library drop scores below
            extra["score_threshold"] = threshold
    base: dict[str, Any] = dict(height=h, width=w, channels=c, layout=layout,
                                color=ColorOrder.GRAY if c == 1 else ColorOrder(options.get("color", "rgb")),
                                input_quant=inp.quant, output_quant=getattr(out, "quant", None),
                                input_dtype=inp.dtype if inp.dtype in ("uint8", "int8", "float16") else "float32",
                                output=_output_kind(out, options, output_op),
                                labels=labels, extra=extra)
    if base["output"] is Output.LOGITS and not options.get("logits") and output_op in LINEAR_OPS:
        extra["logits_from"] = output_op  # read from the graph, not asked for: rows that are distributions are not
    base.update(_normalisation(inp, options, standard, producer))
    if "resize" in options:
        base["resize"] = options["resize"]
    if options.get("fit"):
        base["fit"] = options["fit"]
    if options.get("crop") is not None:
        base.update(fit=Fit.CROP, crop_fraction=float(options["crop"]))
    contract = Contract(**base)
    check_integer_input(contract, inp)
    return contract


def check_integer_input(contract: Contract, inp) -> None:
    """An integer input takes what its quantisation describes. Without quantisation its values are fed as they
    are: only a map of pixels onto the type's whole numbers can be right (normalised floats cast to uint8 gave
    every pixel as 0 or 1; raw pixels cast to int8 turned 204 into -52). With quantisation, a map beyond the
    range it holds is clipped (--preprocess raw on a -1..1 input fed every pixel as 255): said."""
    if contract.baked and contract.input_dtype == "int8" and inp.dtype != "int8":  # an edited contract
        raise ContractError(f"the contract gives raw pixels as int8 (128..255 wrap to negatives) to a {inp.dtype} "
                            f"input: its input_dtype is {inp.dtype}")
    if inp.dtype not in ("uint8", "int8"):
        return
    ends = np.array([[0.0] * contract.channels, [255.0] * contract.channels])
    if not contract.baked:  # baked: the model normalises, raw pixels go in
        ends = contract.normalize(ends)
    lo, hi = float(ends.min()), float(ends.max())
    info, q = np.iinfo(np.dtype(inp.dtype)), inp.quant
    if q is None:
        if lo < info.min - 0.5 or hi > info.max + 0.5 or hi - lo < 254:
            hint = ("pixel - 128 is --mean 128 --std 1" if inp.dtype == "int8" else
                    "it takes raw pixels: leave out --preprocess / --mean / --std")
            raise ContractError(f"the {inp.dtype} input has no quantisation, so its values go in as they are, and the "
                                f"preprocessing maps pixels to {lo:g}..{hi:g}: {hint}")
        return
    if (hi - lo) / q.scale < 16:  # --preprocess tf on a scale-1 input: every pixel in 2 steps, class 0 for all
        raise ContractError(f"the preprocessing maps pixels to {lo:.4g}..{hi:.4g}, {(hi - lo) / q.scale:.3g} steps "
                            f"of the {inp.dtype} input's quantisation (scale {q.scale:.4g}): the image is lost; "
                            "without --preprocess / --mean / --std tledge feeds what the quantisation describes")
    held = ((info.min - q.zero_point) * q.scale, (info.max - q.zero_point) * q.scale)
    if lo < held[0] - 2 * q.scale or hi > held[1] + 2 * q.scale:
        warnings.warn(f"the preprocessing given maps pixels to {lo:.4g}..{hi:.4g}, and the {inp.dtype} input's "
                      f"quantisation holds {held[0]:.4g}..{held[1]:.4g}: values beyond are clipped (without "
                      "--preprocess / --mean / --std tledge feeds what the quantisation describes)", TledgeWarning,
                      stacklevel=2)


# ops whose output is a logit: a one-score output made by one of them is no probability (a Sigmoid, HardSigmoid,
# QLinearSigmoid or a model-local function may make one, and every other op is left to --logits)
LINEAR_OPS = frozenset({"Gemm", "MatMul", "Add", "Conv", "QGemm", "QLinearMatMul", "QLinearConv", "QLinearAdd",
                        "MatMulInteger", "ConvInteger",
                        "FULLY_CONNECTED", "CONV_2D", "ADD", "BATCH_MATMUL"})  # the last four: TFLite's
SOFTMAX_OPS = frozenset({"Softmax", "SOFTMAX"})


def _output_kind(out, options: dict, output_op: str | None = None) -> Output:
    """Logits with --logits; else probabilities, except an output quantised over a range beyond 0..1 (a sigmoid's
    or softmax's output is quantised over 0..1 exactly: scale 1/256), or made by one of LINEAR_OPS (`output_op`,
    read from an ONNX or TFLite file, through reshapes and (de)quantisation), which are logits."""
    if options.get("logits"):
        if output_op in SOFTMAX_OPS:
            raise ContractError("--logits on a model whose output is a Softmax's (probabilities): a second softmax "
                                "would flatten them; leave out --logits")
        return Output.LOGITS
    if output_op in LINEAR_OPS:
        return Output.LOGITS  # a Gemm's scores are logits, also when they fall in 0..1, quantised or not
    q = getattr(out, "quant", None)
    if q is not None and q.dtype in ("uint8", "int8"):  # a range beyond 0..1 holds no probabilities (any count)
        info = np.iinfo(np.dtype(q.dtype))
        low, high = (info.min - q.zero_point) * q.scale, (info.max - q.zero_point) * q.scale
        if low < -1e-6 or high > 1.0 + 1e-6:
            return Output.LOGITS
    return Output.PROBABILITIES


def _geometry(inp, options: dict) -> tuple[Layout, tuple[int, int, int]]:
    shape = list(inp.shape)
    if len(shape) != 4:
        raise ContractError(f"expected a 4-D image input, got shape {tuple(inp.shape)}")
    if options.get("layout"):
        layout = Layout(str(options["layout"]).lower())
    else:
        layout = Layout.NCHW if shape[1] in (1, 3) and shape[3] not in (1, 3) else Layout.NHWC
    c, h, w = (shape[1], shape[2], shape[3]) if layout is Layout.NCHW else (shape[3], shape[1], shape[2])
    if options.get("input_size"):
        h, w = options["input_size"]
    if min(h, w) <= 0:
        raise ContractError(f"the input size is dynamic {tuple(inp.shape)}: pass --input-size HxW")
    if c not in (1, 3):
        raise ContractError(f"input {tuple(inp.shape)} has {c} channels in {layout.value} layout; "
                            "expected 1 or 3 (try --layout nchw / nhwc)")
    return layout, (c, h, w)


def class_count(out) -> int | None:
    """The scores per image of an output tensor: its one dimension beyond the batch other than 1s (a 1x1-conv head
    with no flatten gives [N, C, 1, 1]: C, not 1), else the last."""
    shape = tuple(getattr(out, "shape", None) or ())
    if not shape:
        return None
    wide = [d for d in shape[1:] if d != 1]
    return int(wide[0]) if len(wide) == 1 else int(shape[-1])


def _standard_labels(standard: StandardMetadata, out, extra: dict) -> tuple[str, ...]:
    labels = standard.labels()
    n_out = (class_count(out) if out is not None else None) or -1
    if labels and n_out > 0 and len(labels) != n_out:
        extra["labels_ignored"] = f"{len(labels)} labels in the metadata for {n_out} outputs"
        return ()
    return labels


def _score_calibration(standard: StandardMetadata, out, extra: dict) -> None:
    """extra["score_calibration"]: the output's TFLite Support score calibration, which the Task Library applies
    (`calibrated`); `tledge run` ranked the uncalibrated scores (another top-1, exit 0). One it cannot apply is
    said and left out."""
    try:
        cal = standard.score_calibration()
    except ValueError as exc:
        cal, why = None, str(exc)
    else:
        n_out = (class_count(out) if out is not None else None) or -1
        why = None if cal is None or len(cal["sigmoids"]) == n_out else \
            f"{len(cal['sigmoids'])} calibration lines for {n_out} outputs"
        why = why or (f"transformation {cal['transformation']}" if cal and "unknown" in cal["transformation"] else None)
    if why:
        warnings.warn(f"the file's score calibration is not applied: {why}", TledgeWarning, stacklevel=5)
        extra["score_calibration_ignored"] = why
    elif cal is not None:
        extra["score_calibration"] = cal


def calibrated(y: np.ndarray, cal: dict) -> np.ndarray:
    """Scores through TFLite Support's score calibration, as the Task Library computes them: per class
    scale / (1 + exp(-(slope * g(score) + offset))), g the identity, a log or an inverse logistic (logs clamped
    below 1e-16 as it does), and the default score for a class with no sigmoid or a score under its minimum."""
    y = np.asarray(y, np.float64)
    floor = 1e-16

    def log(x):  # the Task Library's ClampedLog: anti-symmetric about the floor, no log of 0
        return np.where(x < floor, 2 * np.log(floor) - np.log(np.maximum(2 * floor - x, floor)),
                        np.log(np.maximum(x, floor)))

    g = {"identity": lambda x: x, "log": log, "inverse_logistic": lambda x: log(x) - log(1 - x)}[cal["transformation"]]
    out = np.full(y.shape, float(cal["default_score"]), np.float64)
    for j, s in enumerate(cal["sigmoids"][:y.shape[1]]):
        if s is None:
            continue
        scale, slope, offset, least = s
        z = slope * g(y[:, j]) + offset
        v = scale / (1 + np.exp(-z))
        out[:, j] = v if least is None else np.where(y[:, j] < least, out[:, j], v)
    return out.astype(np.float32)


def _normalisation(inp, options: dict, standard: StandardMetadata | None = None, producer: str = "") -> dict:
    if options.get("preprocess"):
        from tledge.backbones import MODES, preprocess_mode_for

        name = str(options["preprocess"])
        mode = preprocess_mode_for(name)
        if "pytorch" in producer.lower() and name.lower() not in (*MODES, "custom") and mode != "torch":
            # torchvision's mobilenet_v3_small takes ImageNet mean/std; Keras's takes raw pixels (0.48 agreement)
            raise ContractError(f"--preprocess {name} is the preprocessing of Keras's {name} ({mode}); this file "
                                "was made by PyTorch: give the mode it was trained with, torch for torchvision's "
                                "models (x/255, then ImageNet mean/std), tf for timm's Inception / ViT (mean = std "
                                "= 0.5)")
        if mode == "custom" and not ("mean" in options or "std" in options):
            raise ContractError("--preprocess custom needs --mean and/or --std")
        if mode != "custom":
            if "mean" in options or "std" in options:
                raise ContractError("give either --preprocess MODE or --mean/--std, not both")
            return dict(norm=Norm(mode), baked=False)
    if "mean" in options or "std" in options:
        mean, std = pixel_units(options.get("mean"), options.get("std"))
        return dict(norm=Norm.CUSTOM, baked=False, mean=mean, std=std)
    q = inp.quant
    if q is not None and inp.dtype in ("uint8", "int8"):
        # real = (q - zp) * scale: the normalisation whose quantised values are the raw pixels
        zp = q.zero_point + (128 if inp.dtype == "int8" else 0)
        return dict(norm=Norm.CUSTOM, baked=False, mean=(float(zp),), std=(1.0 / q.scale,))
    md = standard.inputs[0] if standard is not None and standard.inputs else None
    described = md is not None and bool(md.mean) and bool(md.std)
    if inp.dtype == "uint8" or (inp.dtype == "int8" and not described):  # no quantisation: raw pixels (an int8
        return dict(norm=Norm.RAW, baked=True)  # input is refused then, unless its metadata says what it takes)
    if described:
        if all(m == 0 for m in md.mean) and all(s == 1 for s in md.std):
            return dict(norm=Norm.RAW, baked=False)
        return dict(norm=Norm.CUSTOM, baked=False, mean=tuple(md.mean), std=tuple(md.std))
    warnings.warn(RAW_PIXELS + " If that is wrong, pass --preprocess MODE|BACKBONE or --mean/--std.", RawPixelsAssumed,
                  stacklevel=4)
    return dict(norm=Norm.RAW, baked=False)


def pixel_units(mean=None, std=None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """--mean/--std as numbers (None: 0 and 1), refused (ContractError) when they look like values for 0..1 pixels:
    torchvision's Normalize(mean=[0.485, ...], std=[0.229, ...]) took pixels in at 0..1100 (0.49 agreement), silently.
    Asked before anything is loaded (the CLI's verbs, parity's library call)."""
    mean, std = _floats((0.0,) if mean is None else mean), _floats((1.0,) if std is None else std)
    if mean and std and max(map(abs, mean)) <= 1 and max(std) <= 1 and (any(mean) or any(s != 1 for s in std)):
        raise ContractError(f"--mean {','.join(map(str, mean))} --std {','.join(map(str, std))} look like values "
                            "for 0..1 pixels; tledge's are in 0..255 pixel units: multiply both by 255 (ImageNet's "
                            "are --preprocess torch)")
    return mean, std


def _floats(v) -> tuple[float, ...]:
    if isinstance(v, str):
        v = v.replace(",", " ").split()
    if isinstance(v, (int, float)):
        v = (v,)
    try:
        return tuple(float(x) for x in v)
    except ValueError:
        raise ContractError(f"expected numbers, got {v!r}") from None


def complete(contract: Contract, options: dict, *, embedded: bool) -> Contract:
    """Apply options to a contract read from a file. Only labels may change an embedded contract."""
    options = check_options(options)
    given = [k for k in PREPROCESS_OPTIONS if k in options]
    if embedded and given:
        flags = [f"--{g.replace('_', '-')}" for g in given]
        raise ContractError(f"this file carries its own tledge contract: {', '.join(flags)} "
                            f"{'applies' if len(flags) == 1 else 'apply'} only to files made elsewhere (the "
                            "embedded preprocessing is the one the model was exported and checked with)")
    if options.get("labels"):
        contract = contract.replace(labels=tuple(options["labels"]))
    return contract


def check_fits(contract: Contract, inp, n_outputs: int | None) -> None:
    """The contract's input shape must match the tensor's static dims, and the labels the outputs."""
    want = contract.input_shape
    have = tuple(inp.shape[1:])
    if len(have) != 3 or any(h > 0 and h != w for h, w in zip(have, want)):
        raise ContractError(f"the contract prepares {want} ({contract.layout.value}) but the model input is "
                            f"{tuple(inp.shape)}")
    if contract.labels and n_outputs == 1 and len(contract.labels) == 1:  # [1 - p, p]: the one name was 1 - p's
        raise ContractError(f"1 label ({contract.labels[0]!r}) for a model with one output: its score p is shown as "
                            "two, [1 - p, p]; give two labels, the second the one p is the probability of (e.g. "
                            f"not_{contract.labels[0]}, {contract.labels[0]})")
    if contract.labels and n_outputs and n_outputs > 0 and len(contract.labels) != n_outputs \
            and (n_outputs, len(contract.labels)) != (1, 2):  # one score: P(second label), read as [1 - p, p]
        hint = ""
        if len(contract.labels) == n_outputs + 1:
            hint = " (does the labels file have an extra 'background' line the model lacks?)"
        elif len(contract.labels) + 1 == n_outputs:
            hint = " (the model probably has a 'background' class 0: add it as the first line)"
        raise ContractError(f"{len(contract.labels)} labels but the model has {n_outputs} outputs{hint}")


def labels_option(labels: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """A labels file path or a sequence of names -> names."""
    if labels is None:
        return None
    if isinstance(labels, (str, os.PathLike)):
        from tledge.labels import read_labels

        return read_labels(labels)
    return tuple(str(x) for x in labels)
