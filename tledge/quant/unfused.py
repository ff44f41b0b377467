"""onnxruntime sessions that run an ONNX graph as it is written, its intermediate tensors readable.

The int8 tools simulate a QDQ file (sensitivity's scores), or read the activations of a float graph (the ONNX bias
correction's tap means, the activation ranges): both need the graph's nodes run one by one, unfused, with graph
optimisation off (fused kernels compute other values, tledge.quant.constadds), and some inner tensors as outputs.
"""
from __future__ import annotations

from typing import Iterable

from tledge._deps import require


def session(model, outputs: Iterable[str] = ()):
    """An onnxruntime CPU session of `model` (bytes or an onnx.ModelProto) with graph optimisation off and its
    warnings quiet. `outputs`: tensors added as graph outputs first, in order (one that is an output already is not
    added again); a ModelProto given is changed in place, bytes are loaded into a new one."""
    ort = require("onnxruntime", extra="export")
    outputs = list(outputs)
    if outputs:
        onnx = require("onnx", extra="export")
        if isinstance(model, (bytes, bytearray)):
            model = onnx.load_from_string(bytes(model))
        have = {o.name for o in model.graph.output}
        for t in outputs:
            if t not in have:
                model.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
                have.add(t)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    data = model if isinstance(model, (bytes, bytearray)) else model.SerializeToString()
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
