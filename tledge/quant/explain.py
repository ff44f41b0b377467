"""Per-layer diagnosis of an int8 export: which layers lose the most.

TFLite: `tf.lite.experimental.QuantizationDebugger` runs each quantised op beside its float
version *on the same quantised input* (NumericVerify), so a row is that layer's own error.
`rmse_scale` = rmse / output scale is the figure to rank by: ~0.3 is the rounding floor of one
int8 step; well above 1 means the layer's weights or range lose information.
ONNX: onnxruntime `qdq_loss_debug`; rows give the SQNR (dB) of each activation in the QDQ model
against the float model (accumulated error) and of the QDQ step itself.

`activation_sensitivity` ranks activations by how much their rounding alone moves the model's
output (Keras simulation): the guide for which early layers to keep float.

The names in the rows are what `selective.quantize_tflite(keep_float=...)` and
`selective.with_activations` (ONNX `nodes_to_exclude`) take (TFLite: output tensor names; ONNX: node names).
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from tledge._deps import require
from tledge.quant.calibdata import checked


@dataclass
class LayerError:
    name: str  # TFLite output tensor name / ONNX tensor name
    op: str  # TFLite op name / ONNX node name producing the tensor
    backend: str  # "tflite" or "onnx"
    scale: float | None = None
    zero_point: int | None = None
    rmse: float | None = None
    mean_error: float | None = None
    max_abs: float | None = None
    rmse_scale: float | None = None  # TFLite: rmse / scale (the layer's own error in int8 steps)
    sqnr_db: float | None = None  # ONNX: float model vs QDQ model activation (accumulated)
    qdq_sqnr_db: float | None = None  # ONNX: the tensor before vs after its own QDQ

    def to_dict(self) -> dict:
        return asdict(self)


def _converter(model_or_converter, calib, io):
    tf = require("tensorflow", purpose="the TFLite quantization debugger")
    if isinstance(model_or_converter, tf.lite.TFLiteConverter):
        return model_or_converter
    if hasattr(model_or_converter, "inputs") and hasattr(model_or_converter, "layers"):
        from tledge.quant.selective import tflite_converter

        return tflite_converter(model_or_converter, calib, io=io)
    conv = tf.lite.TFLiteConverter.from_concrete_functions([model_or_converter])  # a concrete function
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    from tledge.quant.selective import representative_data

    conv.representative_dataset = representative_data(calib)
    return conv


def tflite_debugger(model_or_converter, calib, *, debug_images: int = 32, keep_float: Sequence[str] = ()):
    """A run QuantizationDebugger for a Keras model, a concrete function or a set-up converter.

    Calibration uses all of `calib` (as the real export does); the per-layer statistics use the
    first `debug_images`."""
    tf = require("tensorflow", purpose="the TFLite quantization debugger")
    from tledge.quant.selective import representative_data

    calib = checked(calib)
    conv = _converter(model_or_converter, calib, io="float32")
    opts = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(keep_float) or None)
    dbg = tf.lite.experimental.QuantizationDebugger(
        converter=conv, debug_dataset=representative_data(calib, debug_images), debug_options=opts)
    dbg.run()
    return dbg


def tflite_layer_errors(model_or_converter, calib, *, debug_images: int = 32,
                        keep_float: Sequence[str] = ()) -> list[LayerError]:
    """Per-layer rows, worst rmse/scale first."""
    import csv
    import io

    dbg = tflite_debugger(model_or_converter, calib, debug_images=debug_images, keep_float=keep_float)
    buf = io.StringIO()
    dbg.layer_statistics_dump(buf)
    rows = []
    for r in csv.DictReader(io.StringIO(buf.getvalue())):
        scale, mse = float(r["scale"]), float(r["mean_squared_error"])
        rmse = math.sqrt(max(mse, 0.0))
        rows.append(LayerError(r["tensor_name"], r["op_name"], "tflite", scale, int(float(r["zero_point"])),
                               rmse, float(r["mean_error"]), float(r["max_abs_error"]),
                               rmse / scale if scale else None))
    return sorted(rows, key=lambda e: -(e.rmse_scale or 0.0))


def onnx_layer_errors(float_onnx: bytes, qdq_onnx: bytes, calib, *, debug_images: int = 32) -> list[LayerError]:
    """Per-activation SQNR of a QDQ model against its float model, worst (lowest) first."""
    dbg = require("onnxruntime.quantization.qdq_loss_debug", purpose="ONNX quantisation debugging")
    from tledge.quant.selective import CalibrationReader

    import onnx

    calib = checked(calib)
    with tempfile.TemporaryDirectory(prefix="tledge-layer-errors-") as tmp:
        acts = {}
        for tag, content in (("float", float_onnx), ("qdq", qdq_onnx)):
            src, aug = Path(tmp) / f"{tag}.onnx", Path(tmp) / f"{tag}_aug.onnx"
            src.write_bytes(content)
            dbg.modify_model_output_intermediate_tensors(str(src), str(aug))
            name = onnx.load(str(src)).graph.input[0].name
            acts[tag] = dbg.collect_activations(str(aug), CalibrationReader(name, np.asarray(calib)[:debug_images]))
        match = dbg.create_activation_matching(acts["qdq"], acts["float"])
        errors = dbg.compute_activation_error(match)
        producers = {o: n.name for n in onnx.load(str(Path(tmp) / "qdq.onnx")).graph.node for o in n.output}
    rows = [LayerError(name, producers.get(name, ""), "onnx", sqnr_db=e.get("xmodel_err"), qdq_sqnr_db=e.get("qdq_err"))
            for name, e in errors.items()]
    return sorted(rows, key=lambda e: e.sqnr_db if e.sqnr_db is not None else math.inf)


def forward_pass(model, x, quant=None):
    """Run a flat model node by node; returns (output, {layer: (min, max)}), rounding the outputs
    of the layers in `quant` ({name: (lo, hi)}) to their 8-bit grid."""
    from tledge.quant import repair

    acts, ranges, quant = {id(t): x for t in model.inputs}, {}, quant or {}
    for op, node in repair.nodes(model):
        args, kwargs = node.arguments.fill_in(acts)
        out = repair.apply_layer(op, args, kwargs)
        ranges[op.name] = (float(out.min()), float(out.max()))
        if op.name in quant:
            out = repair.fake_quant(out, *quant[op.name])
        for t in node.outputs:
            acts[id(t)] = out
    return out, ranges


def activation_sensitivity(model, images, *, limit: int = 32) -> list[LayerError]:
    """Which activation's int8 rounding moves the output most (a Keras simulation, float weights).

    Each tensor a converter quantises is rounded alone to its per-tensor 8-bit grid (range: min/max
    over `images`) and the RMS change of the model output is recorded (`rmse`; `scale` is the
    grid step). The per-layer debugger ranks layers by their own error, which after the weight
    repairs is the same rounding floor everywhere; this ranks them by what reaches the output.
    Thin early layers usually lead: keep those float (`selective.tflite_stem` / `onnx_stem`)."""
    from tledge.quant import repair

    x = np.asarray(checked(images, "images"), np.float32)[:limit]
    flat, _ = repair.fold_bn(model)
    base, ranges = forward_pass(flat, x)
    rows = []
    for op, _ in repair.nodes(flat):
        if not repair.requantised(op) or op.name in flat.output_names:
            continue
        lo, hi = min(ranges[op.name][0], 0.0), max(ranges[op.name][1], 0.0)
        out, _ = forward_pass(flat, x, {op.name: (lo, hi)})
        rows.append(LayerError(op.name, type(op).__name__, "keras-sim", scale=(hi - lo) / 255,
                               rmse=float(np.sqrt(np.mean((out - base) ** 2)))))
    return sorted(rows, key=lambda r: -r.rmse)


def worst(rows: Sequence[LayerError], n: int) -> list[str]:
    """Names of the `n` worst rows (the order the functions above return)."""
    return [r.name for r in list(rows)[:n]]


def markdown(rows: Sequence[LayerError], top: int | None = 15) -> str:
    """A markdown table of the first `top` rows."""
    rows = list(rows)[:top]
    if rows and rows[0].backend == "keras-sim":
        head = "| layer | kind | output RMS change | 8-bit step |\n|---|---|---|---|"
        body = [f"| {r.name} | {r.op} | {_f(r.rmse, 5)} | {_f(r.scale, 5)} |" for r in rows]
    elif rows and rows[0].backend == "onnx":
        head = "| tensor | node | SQNR vs float (dB) | QDQ SQNR (dB) |\n|---|---|---|---|"
        body = [f"| {short_name(r.name)} | {short_name(r.op)} | {_f(r.sqnr_db)} | {_f(r.qdq_sqnr_db)} |" for r in rows]
    else:
        head = ("| tensor | op | rmse/scale | rmse | mean error | max abs | scale |\n"
                "|---|---|---|---|---|---|---|")
        body = [f"| {short_name(r.name)} | {r.op} | {_f(r.rmse_scale)} | {_f(r.rmse, 4)} | {_f(r.mean_error, 4)} | "
                f"{_f(r.max_abs, 4)} | {_f(r.scale, 5)} |" for r in rows]
    return "\n".join([head] + body)


def short_name(name: str) -> str:
    """A readable tensor name for tables: TFLite fuses names with ';' and nests model scopes;
    keep the first fused name's last two scopes (`conv_pw_13_relu/Relu6`)."""
    first = name.split(";")[0]
    return "/".join(first.split("/")[-2:])


def _f(v, digits=2):
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"
