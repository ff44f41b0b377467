"""TFLite conversion from one traced function: fp32, fp16, dynamic range, full int8 (uint8 I/O).

Conventions of every .tflite tledge writes, whatever the precision or the converter path (the repair
loop's files go through `apply_conventions` too, in tledge.export.metadata.embed_tflite):
- a fixed batch of 1 (the convention of on-device runtimes: MediaPipe Tasks, the Task Library, the
  Edge TPU compiler, which refuses dynamic shapes); the tledge runtime runs larger batches image by image;
- one `serving_default` SignatureDef, input `pixels`, output `scores`, the names of the ONNX file's
  input and output, also given to the input and output tensors themselves.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from tledge._deps import require
from tledge.artifacts import exportable
from tledge.errors import ExportError, warnings_not_errors
from tledge.io import raise_if_disk
from tledge.export.names import INPUT_NAME, OUTPUT_NAME, SIGNATURE_KEY

BATCH = 1
# int8 ops LiteRT's CPU delegate (XNNPACK) has no int8 kernel for. In an int8 file each one cuts the delegated graph
# and runs on LiteRT's own kernels between partitions: MobileNetV3 Small's 18 int8 HARD_SWISH ops made 19 partitions
# and an int8 file 3.6-4.4x slower than its fp32 file; ConvNeXt Tiny's GELU ops 18 of its 66. Kept float on CPU
# targets (DEQUANTIZE, the float op, QUANTIZE, all delegated): MobileNetV3 Small one partition, 0.22-0.36x the
# all-int8 file's latency; ConvNeXt Tiny 0.78x. int8-only targets (Edge TPU) keep them int8. tests/test_cpu_float_ops.py
# checks each entry still cuts the graph as int8 (docs/int8-fidelity.md, "int8 ops XNNPACK cannot run").
CPU_FLOAT_OPS = ("HARD_SWISH", "GELU", "PRELU")


def float_ops_for(int8_only: bool) -> tuple[str, ...]:
    """The op types an int8 TFLite file keeps float: CPU_FLOAT_OPS, none for an int8-only target."""
    return () if int8_only else CPU_FLOAT_OPS


PRECISIONS = tuple(a.precision for a in exportable() if a.kind == "tflite")


def convert(concrete, precision: str, calib: np.ndarray | None = None, *, float_ops: Sequence[str] = ()) -> bytes:
    """A TFLite flatbuffer of `concrete` (a tf ConcreteFunction taking float32 pixels). `float_ops`: builtin op
    types an int8 file keeps float (CPU_FLOAT_OPS on CPU targets)."""
    tf = require("tensorflow", extra="export")
    if precision not in PRECISIONS:
        raise ExportError(f"unknown TFLite precision {precision!r}: {', '.join(PRECISIONS)}")
    if precision == "int8":
        if calib is None or len(calib) == 0:
            raise ExportError("int8 TFLite needs calibration images")
        return _int8(fixed_batch(concrete), calib, float_ops)
    # the path without trackable_obj freezes variables into constants, which every model kind
    # (Keras 3, tf_keras, SavedModel) converts reliably; it warns about deprecation only.
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fixed_batch(concrete)])
    if precision == "fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif precision == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    try:
        with warnings_not_errors():  # TensorFlow's own warnings under -W error are not the model's conversion failing
            return bytes(conv.convert())
    except Exception as exc:  # the converter raises ConverterError and others
        raise_if_disk(exc)  # a full $TMPDIR is the disk's, not the model's (exit 2, the folder as it was)
        raise ExportError(f"TFLite {precision} conversion failed: {converter_error(exc)}") from None


def _int8(fn, calib: np.ndarray, float_ops: Sequence[str]) -> bytes:
    """Full int8 with uint8 I/O (per-channel weights, the converter's defaults) of the fixed-batch function `fn`:
    calibrated, then quantised with `float_ops` left float, as the int8 loop's rungs are. The calibration's first image
    carries a 0 and a 255 pixel, so the uint8 input is exactly scale 1, zero point 0 (raw pixels go in unchanged)."""
    from tledge.quant import selective

    try:
        with warnings_not_errors():  # ("Statistics for quantized inputs were expected": a UserWarning, -W error)
            return bytes(selective.quantize_tflite(selective.calibrate_tflite(fn, calib), float_ops=float_ops))
    except Exception as exc:  # the converter raises ConverterError and others
        raise_if_disk(exc)  # a full $TMPDIR is the disk's, not the model's (exit 2, the folder as it was)
        raise ExportError(f"TFLite int8 conversion failed: {converter_error(exc)}") from None


def float_op_counts(data: bytes, ops: Sequence[str] | None = None) -> dict[str, int]:
    """How many ops of each type in `ops` (None: every type) run in float in the TFLite file `data` (their output is
    float32)."""
    from tledge._deps import tflite_schema
    from tledge.quant.tflite_bias import load, op_kinds

    model = load(data)
    sg = model.subgraphs[0]
    counts: dict[str, int] = {}
    for op, kind in zip(sg.operators, op_kinds(model)):
        if (ops is None or kind in ops) and sg.tensors[int(op.outputs[0])].type == tflite_schema().TensorType.FLOAT32:
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def not_all_int8(data: bytes) -> str | None:
    """What an int8 file for an int8-only target (Edge TPU) runs in float, or None: the converter leaves ops it has
    no int8 kernel for (ELU, LayerNormalization's NEG) float without a word, and such a file passed parity and
    shipped to a Coral, where everything from the first float op on runs on its CPU."""
    left = float_op_counts(data)
    kinds = sorted(k for k in left if k != "DEQUANTIZE") or sorted(left)
    return ", ".join(f"{k} x{left[k]}" for k in kinds) if left else None


def fixed_batch(concrete):
    """`concrete` (batch dimension None) traced again with a batch of BATCH and the input named `pixels`,
    so the converter folds every shape computation (no dynamic tensors at run time)."""
    tf = require("tensorflow", extra="export")
    shape = [BATCH] + list(concrete.inputs[0].shape)[1:]
    if any(d is None for d in shape):
        raise ExportError(f"the model input {tuple(concrete.inputs[0].shape)} has a dynamic size: pass --input-size")
    fn = tf.function(lambda pixels: concrete(pixels))
    return fn.get_concrete_function(tf.TensorSpec(shape, tf.float32, name=INPUT_NAME))


def apply_conventions(model, schema) -> None:
    """On a TFLite ModelT (object API of the TFLite schema `schema`), in place: the input and output tensors
    named `pixels` / `scores` and one `serving_default` signature mapping those names to them."""
    if len(model.subgraphs or []) != 1:
        raise ExportError(f"expected a TFLite model with one subgraph, got {len(model.subgraphs or [])}")
    sg = model.subgraphs[0]
    if len(sg.inputs) != 1 or len(sg.outputs) != 1:
        raise ExportError(f"expected one input and one output, got {len(sg.inputs)} and {len(sg.outputs)}")
    maps = []
    for name, index in ((INPUT_NAME, int(sg.inputs[0])), (OUTPUT_NAME, int(sg.outputs[0]))):
        sg.tensors[index].name = name
        tm = schema.TensorMapT()
        tm.name, tm.tensorIndex = name, index
        maps.append(tm)
    sig = schema.SignatureDefT()
    sig.signatureKey, sig.subgraphIndex = SIGNATURE_KEY, 0
    sig.inputs, sig.outputs = [maps[0]], [maps[1]]
    model.signatureDefs = [sig]


def converter_error(exc: Exception) -> str:
    """The converter's own diagnosis: its first `error:` line (MLIR's "loc(...): error: 'tf.X' op is neither a
    custom op nor a flex op"), not the last line of the dump that follows it."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()] or [type(exc).__name__]
    found = next((ln for ln in lines if "error:" in ln), lines[-1])
    return found[found.find("error:") + 6:].strip()[:400] if "error:" in found else found[:400]
