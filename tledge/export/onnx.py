"""ONNX conversion: tf2onnx from the traced function (fp32), onnxruntime static QDQ (int8), and the
file conventions other tools read (input layout and dtype, producer / graph name / doc_string, opset
domains actually used).

The export's ONNX conventions live in the export contract's `extra["onnx"]` ({"layout": "nchw",
"input_dtype": "uint8"}), so `tledge.json` tells runtimes that cannot read `metadata_props`
(onnxruntime-web) what the ONNX files take; TFLite files always stay NHWC float/uint8 as converted.
"""
from __future__ import annotations

import contextlib
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from tledge._deps import require
from tledge.errors import ExportError, warnings_not_errors
from tledge.export import (onnx_describe, onnx_fakequant, onnx_names, onnx_pads, onnx_prep, onnx_reshapes,
                           onnx_scalars, onnx_tfops)
from tledge.export.names import INPUT_NAME, OUTPUT_NAME
from tledge.io import raise_if_disk, shape_inference_scratch

OPSET = 17


LAYOUTS, INPUT_DTYPES = ("nhwc", "nchw"), ("float32", "uint8")
_ONNX_UINT8, _ONNX_FLOAT = 2, 1  # onnx.TensorProto.UINT8 / FLOAT


@dataclass(frozen=True)
class Conventions:
    """How the export's ONNX files take their input (the TFLite files are not affected)."""

    layout: str = "nhwc"
    input_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ExportError(f"ONNX layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.input_dtype not in INPUT_DTYPES:
            raise ExportError(f"ONNX input dtype must be one of {', '.join(INPUT_DTYPES)}, got {self.input_dtype!r}")

    @classmethod
    def of(cls, contract) -> "Conventions":
        """The conventions recorded in an export contract (NHWC float32 when none are)."""
        d = (contract.extra or {}).get("onnx") or {}
        return cls(str(d.get("layout", "nhwc")), str(d.get("input_dtype", "float32")))

    def to_dict(self) -> dict:
        return {"layout": self.layout, "input_dtype": self.input_dtype}

    def file_contract(self, contract, **extra):
        """The contract embedded in one ONNX file of the export: its own layout and input dtype."""
        from tledge.contract import Layout

        per_file = contract.for_file(input_dtype=self.input_dtype, layout=Layout(self.layout))
        return per_file.replace(extra={**per_file.extra, **extra})

    def calib(self, calib: np.ndarray | None) -> np.ndarray | None:
        """NHWC prepared images (the export's) -> what the float graph of this layout takes."""
        if calib is None or self.layout == "nhwc":
            return calib
        return np.ascontiguousarray(np.asarray(calib).transpose(0, 3, 1, 2))


def convert_fp32(serve, contract):
    """An onnx.ModelProto of the traced tf.function, input `pixels` float32, output `scores`. The
    input is NCHW when the contract's ONNX conventions say so: tf2onnx then converts the graph
    itself to NCHW (no transpose left at the input), as cv2.dnn and most NCHW pipelines want. Scalar
    adds are shaped for tf2onnx's transpose optimiser first and identity Reshapes dropped after, so no
    Transpose pair is left around the convolutions (docs/onnx-files.md)."""
    tf = require("tensorflow", extra="export")
    convert = require("tf2onnx.convert", extra="export")  # (its import set TF_CPP_MIN_LOG_LEVEL)
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    spec = (tf.TensorSpec([None, contract.height, contract.width, contract.channels], tf.float32, name=INPUT_NAME),)
    try:
        # Freeze first: variables AND captured constants (e.g. a Normalization layer's mean) become
        # Const nodes; from_function would turn captured constants into extra graph inputs.
        frozen = convert_variables_to_constants_v2(serve.get_concrete_function(*spec))
        # scalar adds (hard-swish's `x + 3.0`) shaped [1], else tf2onnx's transpose optimiser fails on them
        # and keeps a Transpose pair around every Conv (tledge.export.onnx_scalars)
        # grouped convolutions' XLA-marked calls inlined, exact GELU's Erfc as 1 - Erf (tledge.export.onnx_tfops)
        graph_def, _ = onnx_tfops.rewrite(tf, frozen.graph.as_graph_def())
        graph_def, _ = onnx_scalars.as_vectors(tf, graph_def)
        inputs = [t.name for t in frozen.inputs if t.dtype != tf.resource]
        outputs = [t.name for t in frozen.outputs]
        nchw = inputs if Conventions.of(contract).layout == "nchw" else None
        fresh_names()
        with warnings_not_errors():  # tf2onnx's and TensorFlow's warnings under -W error: not the model's failure
            model, _ = convert.from_graph_def(graph_def, input_names=inputs, output_names=outputs, opset=OPSET,
                                              inputs_as_nchw=nchw)
    except Exception as exc:
        raise_if_disk(exc)  # a full $TMPDIR is the disk's, not the model's (exit 2, the folder as it was)
        raise ExportError(f"ONNX conversion failed: {str(exc).strip().splitlines()[-1][:400]}") from None
    unconverted = unconverted_ops(model)
    if unconverted:
        raise ExportError(
            f"ONNX conversion failed: tf2onnx cannot convert the TensorFlow op(s) {', '.join(unconverted)} of this "
            "model and left them in the graph, which no ONNX runtime loads; export the TFLite files alone with "
            "--formats tflite")
    onnx_reshapes.drop_identity(model)  # what tf2onnx writes for transposes of 1x1 maps, once they cancel
    onnx_prep.tile_constants(model)  # a per-channel normalisation on NHWC pixels: constants tiled to [W, C]
    onnx_fakequant.as_float(model)  # a QAT model's fake-quant pairs: onnxruntime would quantise its float weights
    onnx_names.in_graph_order(model, suffix_only=True)  # tf2onnx's run-dependent names: the same model, the same
    onnx_names.shared_constants(model)  # bytes
    return _rename_io(model)


FIRST_NAME = 2  # tf2onnx's name counter once tf2onnx.convert is imported (it makes one name; tests/test_onnx_names.py)


def fresh_names() -> None:
    """tf2onnx numbers the names it makes (`mul_1__6`, `const_fold_opt__21`) from a counter of its module, never reset:
    a second export in one process wrote the same model with other names (`mul_1__29`), so not the same bytes. Called
    before each conversion, it starts every one where a fresh process starts its first. (The name tf2onnx's constant
    folding gives a shared constant changes from run to run too: convert_fp32 renames it, onnx_names.shared_constants.)"""
    require("tf2onnx.utils", extra="export").INTERNAL_NAME = FIRST_NAME


def unconverted_ops(model) -> list[str]:
    """Op types of the default ONNX domain that ONNX does not define: TensorFlow ops tf2onnx could not
    convert (it logs them and keeps them as they are)."""
    onnx = require("onnx", extra="export")
    return sorted({n.op_type for n in model.graph.node
                   if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type)})


def _rename_io(model):
    """tf2onnx names outputs after inner layers and the batch dim `unk__N`: set our own names."""
    graph = model.graph
    renames = {graph.input[0].name: INPUT_NAME, graph.output[0].name: OUTPUT_NAME}
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for vi in (graph.input[0], graph.output[0]):
        vi.name = renames[vi.name]
        vi.type.tensor_type.shape.dim[0].dim_param = "batch"
    return model


@dataclass(frozen=True)
class Scheme:
    """How activations and weights are quantised. x86 has two int8 kernel paths in onnxruntime: with
    VNNI (vpdpbusd, exact int32 sums) and without (AVX2 vpmaddubsw: u8 x s8 pairs summed in int16,
    which SATURATES when both are large). `reduce_range` keeps weights in 7 bits so that pair sum
    cannot overflow: the same file gives the same answer on both paths (docs/int8-fidelity.md)."""

    activations: str = "uint8"  # uint8 | int8
    weights: str = "int8"  # int8 | uint8
    reduce_range: bool = False
    per_channel: bool = True
    # uint8 conv weights on the symmetric int8 grid (scale max|w|/127, zero point 128): the grid the
    # Keras repair rounds to, so its kernels survive a U8U8 file exactly
    int8_grid: bool = False
    grid_ops: str = "conv"  # which weights int8_grid covers: conv (onnxruntime's files) | all (TFLite translations)

    def describe(self) -> str:
        code = "".join("U8" if t == "uint8" else "S8" for t in (self.activations, self.weights))
        return (f"QDQ {code} {'per-channel' if self.per_channel else 'per-tensor'}"
                + (", reduce_range (7-bit weights)" if self.reduce_range else "")
                + (f", {self.grid_ops} weights on the symmetric int8 grid" if self.int8_grid else ""))


SCHEMES = {
    "u8s8": Scheme(),
    "u8s8-rr": Scheme(reduce_range=True),
    "s8s8": Scheme(activations="int8"),
    "u8u8": Scheme(weights="uint8"),
    "u8u8-grid": Scheme(weights="uint8", int8_grid=True),
    "u8u8-all-grid": Scheme(weights="uint8", int8_grid=True, grid_ops="all"),  # a TFLite file's int8 weights + 128
}
DEFAULT_SCHEME = "u8s8"  # the first choice; ROBUST_SCHEME when its pair sums would saturate on AVX2
ROBUST_SCHEME = "u8u8-grid"  # exact on every kernel path, and on the grid the Keras repair rounds to


def quantize_int8(fp32_path: Path, dst: Path, calib: np.ndarray, *, method: str = "minmax",
                  nodes_to_exclude: Sequence[str] = (), scheme: Scheme | None = None,
                  calib_cache: Path | None = None, overrides: dict | None = None, act_ranges: str = "minmax") -> Scheme:
    """onnxruntime static QDQ, the final Softmax kept in float so probabilities are not rounded to
    1/256. Without `scheme`: U8S8 (fastest, exact on VNNI and ARM) unless the file's own pair sums
    saturate the AVX2 u8 x s8 kernels on the calibration images (tledge.quant.saturation); then U8U8
    with conv weights on the symmetric int8 grid, which every x86 path and ARM compute exactly. An int8-weight Gemm's
    bias is written float (tledge.quant.constadds.float_gemm_biases: OpenCV 5.1 refused it as an int32 DequantizeLinear),
    and so is an int16 activation (`overrides`) that an int8-weight Conv writes or reads (tledge.quant.int16convs).
    The graph is pre-processed once and calibrated once (the activation ranges do not depend on the
    scheme); `calib_cache`: a folder keeping those ranges across calls, keyed by the pre-processed
    graph and the method - the caller guarantees the same `calib` for one folder. `overrides`: extra
    TensorQuantOverrides (e.g. int16 activations, tledge.quant.sensitivity). `act_ranges="mse"`: every activation's
    upper bound cut by least squared error (tledge.quant.ranges; any other override of a tensor wins). Returns the
    scheme."""
    with tempfile.TemporaryDirectory(prefix="tledge-onnx-int8-") as tmp:
        pre = preprocess(fp32_path, Path(tmp) / "pre.onnx")
        ranges = _ranges_path(pre, method, Path(calib_cache) if calib_cache else Path(tmp))
        cut = None
        if act_ranges != "minmax":
            from tledge.quant import ranges as act

            cut = act.onnx_overrides(pre, calib, skip=overrides or {})
        if scheme is not None:
            _quantize(pre, dst, calib, method, nodes_to_exclude, scheme, ranges, overrides, cut)
            return scheme
        from tledge.quant import saturation

        _quantize(pre, dst, calib, method, nodes_to_exclude, SCHEMES["u8s8"], ranges, overrides, cut)
        if not any(layer.saturated for layer in saturation.check(dst.read_bytes(), calib)):
            return SCHEMES["u8s8"]
        _quantize(pre, dst, calib, method, nodes_to_exclude, SCHEMES[ROBUST_SCHEME], ranges, overrides, cut)
        return SCHEMES[ROBUST_SCHEME]


def _ranges_path(pre: Path, method: str, folder: Path) -> Path:
    """Where onnxruntime keeps the calibration ranges of this pre-processed graph and method."""
    import hashlib

    return folder / f"ranges-{method}-{hashlib.sha1(pre.read_bytes()).hexdigest()[:16]}.json"


def _quantize(pre: Path, dst: Path, calib: np.ndarray, method: str, nodes_to_exclude: Sequence[str],
              scheme: Scheme, ranges: Path | None = None, overrides: dict | None = None,
              ranges_of: dict | None = None) -> None:
    """quantize_static of a pre-processed graph; `ranges`: onnxruntime's calibration cache file
    (read when it exists, written otherwise); `ranges_of`: activation range overrides (tledge.quant.ranges), which
    every other override of a tensor replaces."""
    from tledge.quant import pixelgrid
    from tledge.quant.constadds import constant_adds, float_gemm_biases
    from tledge.quant.int16convs import float_int16_at_int8_convs

    onnx = require("onnx", extra="export")
    q = require("onnxruntime.quantization", extra="export")
    model = onnx.load(str(pre))
    exclude = list(nodes_to_exclude) + [n.name for n in model.graph.node if n.op_type == "Softmax"]
    exclude += [name for name in constant_adds(model) if name not in exclude]  # kernel-robust: float
    grid = pixelgrid.plan(pre, set(exclude), scheme.activations)  # the pixels' chain float, levels apart
    exclude += [name for name in grid.float_nodes if name not in exclude]
    methods = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
               "percentile": q.CalibrationMethod.Percentile}
    qtype = {"uint8": q.QuantType.QUInt8, "int8": q.QuantType.QInt8}
    cache = {"calibration_cache_path": str(ranges)} if ranges is not None else {}
    tensors = {**(ranges_of or {}), **(_grid_overrides(pre) if scheme.int8_grid else {}), **grid.overrides,
               **(overrides or {})}
    try:  # onnxruntime's histogram calibrators print() progress: to fd 2 (the log), not stdout (--json)
        with contextlib.redirect_stdout(sys.__stderr__ or sys.stderr), warnings_not_errors():
            q.quantize_static(str(pre), str(dst), _Reader(calib), quant_format=q.QuantFormat.QDQ,
                              per_channel=scheme.per_channel, reduce_range=scheme.reduce_range,
                              activation_type=qtype[scheme.activations], weight_type=qtype[scheme.weights],
                              calibrate_method=methods[method], nodes_to_exclude=exclude,
                              extra_options={"TensorQuantOverrides": tensors} if tensors else None, **cache)
    except Exception as exc:
        raise_if_disk(exc)
        raise ExportError(f"ONNX int8 quantisation failed: {str(exc).strip().splitlines()[-1][:400]}") from None
    quantized = onnx.load(str(dst))
    folded = float_gemm_biases(quantized)  # an int8-weight Gemm's int32 bias as float: else OpenCV 5.1 refuses the file
    # an int16 activation an int8-weight Conv writes or reads: float (a Clip to its range), else OpenCV 5.1 refuses
    # the file or runs it wrong
    if float_int16_at_int8_convs(quantized) or folded:
        onnx.save(quantized, str(dst))


def _grid_overrides(model_path: Path) -> dict:
    """TensorQuantOverrides putting every Conv weight (per output channel) on the symmetric int8 grid
    as uint8: scale max|w|/127, zero point 128."""
    onnx = require("onnx", extra="export")
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    inits = {i.name: i for i in model.graph.initializer}
    overrides = {}
    for n in model.graph.node:
        if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in inits:
            w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)
            amax = np.abs(w.reshape(len(w), -1)).max(axis=1)
            scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
            overrides[n.input[1]] = [{"axis": 0, "scale": np.float32(s), "zero_point": np.uint8(128)} for s in scale]
    return overrides


def scheme_of(path: Path) -> Scheme:
    """The Scheme of a QDQ file, read from its activation and 4-D weight initializer types."""
    onnx = require("onnx", extra="export")
    model = onnx.load(str(path))
    types = {i.name: i.data_type for i in model.graph.initializer}
    dims = {i.name: len(i.dims) for i in model.graph.initializer}
    u8 = onnx.TensorProto.UINT8
    weights = [types[n.input[0]] for n in model.graph.node
               if n.op_type == "DequantizeLinear" and dims.get(n.input[0]) == 4]
    acts = [types.get(n.input[2]) for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    act = "uint8" if not acts or acts[0] == u8 else "int8"
    if weights and weights[0] == u8 and act == "uint8":
        return SCHEMES[ROBUST_SCHEME]  # quantize_int8 makes uint8 weights only as its robust choice
    return Scheme(activations=act, weights="uint8" if weights and weights[0] == u8 else "int8")


def preprocess(src: Path, dst: Path) -> Path:
    """onnxruntime's quant_pre_process (shape inference, BN/Mul/Add folding) into `dst`, then dead weight
    channels zeroed (tledge.quant.deadchannels: else their int32 biases are clipped). Without the
    pre-processing when it fails (an optimisation; the plain graph quantises too)."""
    onnx = require("onnx", extra="export")
    from tledge.quant.deadchannels import zero_dead

    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        with shape_inference_scratch():
            quant_pre_process(str(src.resolve()), str(dst.resolve()), skip_symbolic_shape=False)
    except Exception:
        from tledge.signals import stop_if_signalled

        stop_if_signalled()  # a Ctrl-C / SIGTERM in onnxruntime's import became its ImportError: a stop, no fallback
        dst.write_bytes(src.read_bytes())
    model = onnx.load(str(dst))
    if zero_dead(model):
        onnx.save(model, str(dst))
    return dst


class _Reader:
    def __init__(self, calib: np.ndarray):
        self._calib, self._i = calib, 0

    def get_next(self):
        if self._i >= len(self._calib):
            return None
        self._i += 1
        return {INPUT_NAME: np.asarray(self._calib[self._i - 1], np.float32)[None]}

    def rewind(self):
        self._i = 0


def save(model, path: Path) -> None:
    onnx = require("onnx", extra="export")
    onnx.save(model, str(path))


# ---- file conventions (after conversion / quantisation) ---------------------------------------------

def finish(model, contract, conventions: Conventions):
    """The last steps of every ONNX file: uint8 input (a Cast inside) when asked, producer / graph
    name / doc_string stating layout, dtype and pixel range, unused opset domains pruned, and the
    file's own contract embedded in metadata_props. `model` takes float32 in the conventions' layout;
    `contract` is the file's own contract (Conventions.file_contract)."""
    from tledge.export.metadata import embed_onnx

    if conventions.input_dtype == "uint8":
        uint8_input(model)
    onnx_pads.keep_zero_pads(model)  # a zero Pad before a pool stays a Pad in onnxruntime (tledge.export.onnx_pads)
    onnx_describe.describe(model, contract)
    onnx_describe.prune_opsets(model)
    return embed_onnx(model, contract)


def uint8_input(model):
    """Make input `pixels` uint8: a Cast to float32 in front of the float graph, in place. Raw pixels
    0..255 are exact in both, so the outputs are those of the float input."""
    onnx = require("onnx", extra="export")
    graph = model.graph
    inp = graph.input[0]
    if inp.type.tensor_type.elem_type == _ONNX_UINT8:
        return model
    inner = inp.name + "_float"
    for node in graph.node:
        node.input[:] = [inner if n == inp.name else n for n in node.input]
    cast = onnx.helper.make_node("Cast", [inp.name], [inner], to=_ONNX_FLOAT, name="tledge_uint8_to_float")
    graph.node.insert(0, cast)
    inp.type.tensor_type.elem_type = _ONNX_UINT8
    return model


def float_input(data: bytes) -> bytes:
    """The inverse of uint8_input on a serialised model (for tools that feed float32, such as the
    per-activation diagnosis): the Cast removed, input `pixels` float32 again."""
    onnx = require("onnx", extra="export")
    model = onnx.load_from_string(data)
    graph = model.graph
    cast = next((i for i, n in enumerate(graph.node) if n.name == "tledge_uint8_to_float"), None)
    if cast is None:
        return data
    inner, name = graph.node[cast].output[0], graph.input[0].name
    del graph.node[cast]
    for node in graph.node:
        node.input[:] = [name if n == inner else n for n in node.input]
    graph.input[0].type.tensor_type.elem_type = _ONNX_FLOAT
    return model.SerializeToString()
