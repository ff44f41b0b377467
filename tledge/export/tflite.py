"""TFLite conversion from one traced function: fp32, fp16, dynamic range, full int8 (uint8 I/O)."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from tledge._deps import require
from tledge.artifacts import exportable
from tledge.errors import ExportError

PRECISIONS = tuple(a.precision for a in exportable() if a.kind == "tflite")


def convert(concrete, precision: str, calib: np.ndarray | None = None, *,
            denylisted_nodes: Sequence[str] = ()) -> bytes:
    """A TFLite flatbuffer of `concrete` (a tf ConcreteFunction taking float32 pixels)."""
    tf = require("tensorflow", extra="export")
    if precision not in PRECISIONS:
        raise ExportError(f"unknown TFLite precision {precision!r}: {', '.join(PRECISIONS)}")
    # the path without trackable_obj freezes variables into constants, which every model kind
    # (Keras 3, tf_keras, SavedModel) converts reliably; it warns about deprecation only.
    conv = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    if precision == "fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif precision == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif precision == "int8":
        if calib is None or len(calib) == 0:
            raise ExportError("int8 TFLite needs calibration images")
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: representative(calib)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.uint8
        conv.inference_output_type = tf.uint8
        if denylisted_nodes:
            return _convert_with_denylist(conv, calib, denylisted_nodes)
    try:
        return bytes(conv.convert())
    except Exception as exc:  # the converter raises ConverterError and others
        raise ExportError(f"TFLite {precision} conversion failed: {str(exc).strip().splitlines()[-1][:400]}") from None


def representative(calib: np.ndarray) -> Iterable[list[np.ndarray]]:
    """Calibration samples one by one. The first carries a 0 and a 255 pixel so the uint8 input
    quantisation is exactly scale 1, zero point 0 (raw pixels go in unchanged)."""
    for i, x in enumerate(calib):
        x = np.array(x, np.float32, copy=True)[None]
        if i == 0:
            x[0, 0, 0, :] = 0.0
            x[0, 0, 1, :] = 255.0
        yield [x]


def _convert_with_denylist(conv, calib, nodes: Sequence[str]) -> bytes:
    tf = require("tensorflow", extra="export")
    opts = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(nodes))
    dbg = tf.lite.experimental.QuantizationDebugger(
        converter=conv, debug_dataset=lambda: representative(calib[:1]), debug_options=opts)
    return bytes(dbg.get_nondebug_quantized_model())
