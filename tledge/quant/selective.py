"""int8 conversion with chosen layers kept in float, and the latency that costs.

TFLite: one calibration (`calibrate_tflite`), then any number of quantisations of it with
`denylisted_nodes` (output tensor names, as `explain.tflite_layer_errors` reports them) - the same
mechanism as `tf.lite.experimental.QuantizationDebugger.get_nondebug_quantized_model`.
ONNX: onnxruntime `quantize_static` (QDQ, per-channel, QUInt8 activations / QInt8 weights, the
fast combination on x86) with `nodes_to_exclude`.

The export pipeline's converters (tledge.export.tflite / onnx) use these; whole-model conversions and runners
for experiments live in lab/quant/quick.py.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from tledge._deps import require
from tledge.quant.calibdata import checked


def concrete_function(model, batch: int | None = 1):
    """A traced inference function of a Keras model with one NHWC float32 input."""
    tf = require("tensorflow", purpose="TFLite conversion")
    shape = [batch] + list(model.inputs[0].shape[1:])
    fn = tf.function(lambda x: model(x, training=False))
    return fn.get_concrete_function(tf.TensorSpec(shape, tf.float32, name=model.inputs[0].name))


def _with_extremes(calib, limit=None) -> np.ndarray:
    """Calibration images, the first carrying a 0 and a 255 pixel so a uint8 pixel input gets
    scale 1 / zero point 0 (raw pixels go in unchanged)."""
    data = np.array(np.asarray(calib, np.float32)[:limit], copy=True)
    if data.ndim == 4 and len(data):
        data[0, 0, 0, :], data[0, 0, 1, :] = 0.0, 255.0
    return data


def representative_data(calib, limit=None):
    data = _with_extremes(calib, limit)

    def gen():
        for i in range(len(data)):
            yield [data[i:i + 1]]
    return gen


def tflite_converter(model, calib, *, io: str = "uint8"):
    """A TFLiteConverter set up for full-integer int8 with `io` ("uint8", "int8" or "float32") I/O.
    `model`: a Keras 3 model, or a traced ConcreteFunction with a fixed batch (any loader: a SavedModel's
    `loader.trace`, whose variables the converter freezes itself)."""
    tf = require("tensorflow", purpose="TFLite conversion")
    if hasattr(model, "layers"):
        holder = tf.Module()  # the converter freezes the variables it finds on this object
        holder.variables_ = [getattr(v, "value", v) for v in model.variables]
        conv = tf.lite.TFLiteConverter.from_concrete_functions([concrete_function(model)], holder)
    else:
        conv = tf.lite.TFLiteConverter.from_concrete_functions([model])
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative_data(calib)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if io != "float32":
        conv.inference_input_type = conv.inference_output_type = getattr(tf, io)
    return conv


def tflite_fp32(model, *, optimize: bool = False) -> bytes:
    """Plain float32 TFLite (for latency references); optimize=True: dynamic-range (int8 weights)."""
    tf = require("tensorflow", purpose="TFLite conversion")
    holder = tf.Module()
    holder.variables_ = [getattr(v, "value", v) for v in model.variables]
    conv = tf.lite.TFLiteConverter.from_concrete_functions([concrete_function(model)], holder)
    if optimize:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    return conv.convert()


def calibrate_tflite(model, calib) -> bytes:
    """The calibrated float TFLite model (min/max recorded) of a Keras 3 model or a traced concrete
    function (as `tflite_converter` takes): quantise it with `quantize_tflite`."""
    conv = tflite_converter(model, checked(calib))
    conv._experimental_calibrate_only = True  # the debugger's own path
    conv.experimental_mlir_quantizer = True
    return conv.convert()


def quantize_tflite(calibrated: bytes, *, keep_float: Sequence[str] = (), io: str = "uint8",
                    float_ops: Sequence[str] = ()) -> bytes:
    """int8 TFLite from a calibrated model, ops whose output tensor is in `keep_float` and ops of the builtin types
    `float_ops` (e.g. "HARD_SWISH") left float."""
    tf = require("tensorflow", purpose="TFLite conversion")
    from tensorflow.lite.python import convert

    dtype = getattr(tf, io)
    return convert.mlir_quantize(calibrated, input_data_type=dtype, output_data_type=dtype,
                                 denylisted_ops=list(float_ops) or None, denylisted_nodes=list(keep_float) or None)


class CalibrationReader:
    def __init__(self, name, calib):
        self.name, self.data, self.i = name, _with_extremes(calib), 0

    def get_next(self):
        if self.i >= len(self.data):
            return None
        self.i += 1
        return {self.name: self.data[self.i - 1:self.i]}

    def rewind(self):
        self.i = 0

    def __iter__(self):  # qdq_loss_debug.collect_activations iterates
        return iter([{self.name: self.data[i:i + 1]} for i in range(len(self.data))])


def with_activations(model_bytes: bytes, exclude: Sequence[str]) -> list[str]:
    """`exclude` plus the Relu/Clip nodes that directly follow an excluded node: quantising those
    alone would put their *input* (the conv's unclipped output) on a coarse 8-bit grid."""
    import onnx

    names = set(exclude)
    graph = onnx.load_from_string(model_bytes).graph
    producer = {o: n.name for n in graph.node for o in n.output}
    for n in graph.node:
        if n.op_type in ("Relu", "Clip", "LeakyRelu") and producer.get(n.input[0]) in names:
            names.add(n.name)
    return sorted(names)


# ---- float stems: the first k convolutions (and everything before them) kept float -------------
_CONV_TFLITE = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def tflite_ops(content: bytes) -> list[tuple[str, str]]:
    """(op name, output tensor name) of a TFLite model in execution order."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=content)
    names = {d["index"]: d["name"] for d in it.get_tensor_details()}
    return [(op["op_name"], names[op["outputs"][0]]) for op in it._get_ops_details() if op["outputs"]]


def tflite_graph(content: bytes) -> list[tuple[str, str, list[str]]]:
    """(op name, output tensor name, input tensor names) of a TFLite model in execution order."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=content)
    names = {d["index"]: d["name"] for d in it.get_tensor_details()}
    return [(op["op_name"], names[op["outputs"][0]], [names[i] for i in op["inputs"] if i >= 0])
            for op in it._get_ops_details() if op["outputs"]]


def tflite_stem(calibrated: bytes, k: int) -> list[str]:
    """Output tensor names of every op up to the k-th convolution: pass as `keep_float`."""
    ops, seen = tflite_ops(calibrated), 0
    for i, (op, _) in enumerate(ops):
        seen += op in _CONV_TFLITE
        if seen == k:
            return [name for _, name in ops[:i + 1]]
    return [name for _, name in ops] if k > 0 else []


def onnx_stem(float_onnx: bytes, k: int) -> list[str]:
    """Node names from the graph input up to the k-th Conv (tf2onnx graphs are topologically
    sorted): pass as `exclude`. A float island must start at the input in onnxruntime: an excluded
    Conv between QuantizeLinear/DequantizeLinear pairs is re-quantised per-tensor at session load
    by onnxruntime's WeightBiasQuantization transform, which is far worse than int8 per-channel."""
    import onnx

    nodes, seen = list(onnx.load_from_string(float_onnx).graph.node), 0
    for i, n in enumerate(nodes):
        seen += n.op_type in ("Conv", "Gemm", "MatMul")
        if seen == k:
            return [m.name for m in nodes[:i + 1]]
    return [m.name for m in nodes] if k > 0 else []
