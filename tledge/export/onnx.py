"""ONNX conversion: tf2onnx from the traced function (fp32), onnxruntime static QDQ (int8)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from tledge._deps import require
from tledge.errors import ExportError

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "pixels", "scores"


def convert_fp32(serve, contract):
    """An onnx.ModelProto of the traced tf.function, input `pixels` NHWC float32, output `scores`."""
    tf = require("tensorflow", extra="export")
    tf2onnx = require("tf2onnx", extra="export")
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    spec = (tf.TensorSpec([None, contract.height, contract.width, contract.channels], tf.float32, name=INPUT_NAME),)
    try:
        # Freeze first: variables AND captured constants (e.g. a Normalization layer's mean) become
        # Const nodes; from_function would turn captured constants into extra graph inputs.
        frozen = convert_variables_to_constants_v2(serve.get_concrete_function(*spec))
        graph_def = frozen.graph.as_graph_def()
        inputs = [t.name for t in frozen.inputs if t.dtype != tf.resource]
        outputs = [t.name for t in frozen.outputs]
        model, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=inputs, output_names=outputs, opset=OPSET)
    except Exception as exc:
        raise ExportError(f"ONNX conversion failed: {str(exc).strip().splitlines()[-1][:400]}") from None
    return _rename_io(model)


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


def quantize_int8(fp32_path: Path, dst: Path, calib: np.ndarray, *, method: str = "minmax",
                  nodes_to_exclude: Sequence[str] = (), per_channel: bool = True) -> None:
    """onnxruntime static QDQ: uint8 activations x int8 per-channel weights (U8S8, fast on x86 and
    ARM), the final Softmax kept in float so probabilities are not rounded to 1/256."""
    onnx = require("onnx", extra="export")
    q = require("onnxruntime.quantization", extra="export")
    model = onnx.load(str(fp32_path))
    exclude = list(nodes_to_exclude) + [n.name for n in model.graph.node if n.op_type == "Softmax"]
    methods = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
               "percentile": q.CalibrationMethod.Percentile}
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
        except Exception:  # pre-processing is an optimisation; quantise the plain graph instead
            pre = fp32_path
        try:
            q.quantize_static(str(pre), str(dst), _Reader(calib), quant_format=q.QuantFormat.QDQ,
                              per_channel=per_channel, activation_type=q.QuantType.QUInt8,
                              weight_type=q.QuantType.QInt8, calibrate_method=methods[method],
                              nodes_to_exclude=exclude)
        except Exception as exc:
            raise ExportError(f"ONNX int8 quantisation failed: {str(exc).strip().splitlines()[-1][:400]}") from None


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
