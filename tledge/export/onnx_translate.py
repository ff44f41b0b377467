"""An int8 ONNX file translated from an int8 TFLite file: tf2onnx's TFLite reader turns the file's own integer
grids, weights and float ops into QDQ, so the ONNX file computes what the TFLite file computes (issue 11: where the
repair's simulation is the TFLite file's, onnxruntime's own quantisation of the same model loses more, e.g.
EfficientNetB0's swish / squeeze-excite).

The translation is then given the export's ONNX conventions: float32 input in the export's layout (`finish` adds
the uint8 Cast when asked), the last op's float output (a Softmax is not rounded to 1/256), a free batch
dimension (checked: a batch of two gives the two single outputs), float constants for a Gemm bias and elementwise
ops (what OpenCV can run), and uint8 activations (zero points + 128:
the same values), with the weights uint8 on the symmetric int8 grid (zero point 128) when the u8 x s8 pair sums
would saturate onnxruntime's AVX2 kernels (tledge.quant.saturation), as `onnx.quantize_int8` chooses.
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np

from tledge._deps import require
from tledge.errors import ExportError
from tledge.export.names import INPUT_NAME, OUTPUT_NAME
from tledge.export import onnx_names
from tledge.export.onnx import OPSET, SCHEMES

_QDQ = ("QuantizeLinear", "DequantizeLinear")


def from_tflite(data: bytes, layout: str, calib: np.ndarray):
    """(onnx.ModelProto taking float32 pixels in `layout`, Scheme) of an int8 TFLite file; `calib`: prepared
    NHWC images for the batch and saturation checks."""
    from tledge.quant import saturation

    onnx = require("onnx", extra="export")
    convert = require("tf2onnx.convert", extra="export")  # (its import set TF_CPP_MIN_LOG_LEVEL)
    with tempfile.TemporaryDirectory(prefix="tledge-onnx-translate-") as tmp:
        src = Path(tmp) / "int8.tflite"
        src.write_bytes(data)
        try:
            with warnings.catch_warnings():  # tf2onnx reads shapes through tf.lite.Interpreter (deprecated)
                warnings.simplefilter("ignore")
                model, _ = convert.from_tflite(str(src), opset=OPSET)
        except Exception as exc:  # an op tf2onnx's TFLite reader does not know
            raise ExportError(f"tf2onnx could not translate the TFLite file: {str(exc).strip()[:300]}") from None
    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ExportError("translation needs one input and one output")
    _float_output(graph)
    _float_input(graph, layout)
    _free_batch(graph)
    _float_constants(graph)
    unsigned_activations(graph)
    _prune(graph)
    del graph.value_info[:]
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # a graph the rewrites above do not cover
        raise ExportError(f"the translated graph is not valid ONNX: {str(exc).strip()[:300]}") from None
    _check_batch(model, _layout(calib[:2], layout))
    scheme = SCHEMES["u8s8"]
    if any(layer.saturated for layer in saturation.check(model.SerializeToString(), _layout(calib, layout))):
        unsigned_weights(graph)
        _prune(graph)  # the int8 weights
        scheme = SCHEMES["u8u8-all-grid"]
    onnx_names.in_graph_order(model)  # tf2onnx's made names numbered in graph order, not in its run-dependent order
    return model, scheme


def _layout(x: np.ndarray, layout: str) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if layout == "nchw" else x


def _rename(graph, old: str, new: str) -> None:
    for n in graph.node:
        n.input[:] = [new if i == old else i for i in n.input]
        n.output[:] = [new if o == old else o for o in n.output]


def _float_output(graph) -> None:
    """The graph output becomes the float output of its last op (the Q / DQ chain after it left to `_prune`), or of
    the DequantizeLinear after it where that op works on integers, named OUTPUT_NAME."""
    producer = {o: n for n in graph.node for o in n.output}
    name, last = graph.output[0].name, None
    while name in producer and producer[name].op_type in _QDQ:
        last = producer[name]
        name = last.input[0]
    if name not in producer:
        raise ExportError("the TFLite file's output is not computed by an op")
    if last is not None and last.op_type == "DequantizeLinear":  # an op on integers (a Concat of two int8
        name = last.output[0]  # tensors): its dequantised output
    _rename(graph, OUTPUT_NAME, f"{OUTPUT_NAME}_tflite_grid")
    _rename(graph, name, OUTPUT_NAME)
    out = graph.output[0]
    out.name = OUTPUT_NAME
    out.type.tensor_type.elem_type = 1  # FLOAT


def _float_input(graph, layout: str) -> None:
    """Input INPUT_NAME float32 (NHWC, or NCHW through a Transpose), put on the TFLite file's own input grid
    (uint8 raw pixels: scale 1, zero point 0, so integer pixels pass unchanged)."""
    onnx = require("onnx", extra="export")
    inp = graph.input[0]
    old, nhwc = inp.name, "tledge_pixels_nhwc"
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise ExportError(f"the TFLite file's input has rank {len(dims)}, not 4")
    if inp.type.tensor_type.elem_type != 1:
        dq = _input_grid(graph, old)
        _rename(graph, old, "tledge_pixels_grid")
        graph.node.insert(0, onnx.helper.make_node("QuantizeLinear", [nhwc, *dq.input[1:]],
                                                   ["tledge_pixels_grid"], name="tledge_input_grid"))
    else:
        _rename(graph, old, nhwc)
    if layout == "nchw":
        front = onnx.helper.make_node("Transpose", [INPUT_NAME], [nhwc], perm=[0, 2, 3, 1], name="tledge_to_nhwc")
        dims = [dims[0], dims[3], dims[1], dims[2]]
    else:
        front = onnx.helper.make_node("Identity", [INPUT_NAME], [nhwc], name="tledge_pixels")
    graph.node.insert(0, front)
    graph.input.remove(inp)
    graph.input.insert(0, onnx.helper.make_tensor_value_info(INPUT_NAME, 1, ["batch", *dims[1:]]))


def _input_grid(graph, name: str):
    """The DequantizeLinear that reads the integer input, through layout-only ops (tf2onnx may move a Transpose in
    front of it); its per-tensor scale and zero point are the input's grid."""
    from onnx import numpy_helper

    inits = {i.name: i for i in graph.initializer}
    while True:
        users = [n for n in graph.node if name in n.input]
        if len(users) != 1 or users[0].op_type not in ("Transpose", "Identity", "DequantizeLinear"):
            raise ExportError("the TFLite file's integer input is not dequantised on one path")
        if users[0].op_type == "DequantizeLinear":
            scale = users[0].input[1]
            if scale not in inits or numpy_helper.to_array(inits[scale]).size != 1:
                raise ExportError("the TFLite file's input grid is not one scale")
            return users[0]
        name = users[0].output[0]


def _free_batch(graph) -> None:
    """Batch dimension `batch` on the output; Reshape targets whose leading 1 is the TFLite file's batch read it
    from their input instead (0). `_check_batch` verifies the result."""
    from onnx import numpy_helper

    out = graph.output[0].type.tensor_type.shape
    if out.dim:
        out.dim[0].ClearField("dim_value")
        out.dim[0].dim_param = "batch"
    inits = {i.name: i for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Reshape" and n.input[1] in inits:
            shape = numpy_helper.to_array(inits[n.input[1]]).copy()
            if shape.size and shape[0] == 1:
                shape[0] = 0
                inits[n.input[1]].CopyFrom(numpy_helper.from_array(shape.astype(np.int64), n.input[1]))


_ELEMENTWISE = ("Add", "Sub", "Mul", "Div")


def _float_constants(graph) -> int:
    """Constants dequantised for a Gemm bias or an elementwise op become float constants (the same values, computed
    as the DequantizeLinear would). OpenCV 5.1 refuses a Gemm whose bias is not a constant ("bufidx >= 0 in function
    'argTensor'") and runs a baked preprocessing's int8 Mul / Add with a wrong output (the tiny model: top-1 agreement
    with onnxruntime 0.67); onnxruntime's own QDQ files keep these float too. Returns the constants folded."""
    from tledge.quant.constadds import fold_dequantized

    return fold_dequantized(graph, lambda n, k: n.op_type in _ELEMENTWISE or (n.op_type == "Gemm" and k == 2))


def _check_batch(model, x: np.ndarray) -> None:
    """A batch of two must give the two single-image outputs (else a batch-1 constant is left in the graph)."""
    ort = require("onnxruntime", extra="export")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    try:
        both = sess.run(None, {INPUT_NAME: x})[0]
    except Exception as exc:
        raise ExportError(f"the translated file does not take a batch: {str(exc).strip()[:200]}") from None
    ones = np.concatenate([sess.run(None, {INPUT_NAME: x[i:i + 1]})[0] for i in range(len(x))])
    if both.shape != ones.shape or not np.allclose(both, ones, atol=1e-6):
        raise ExportError("the translated file's outputs depend on the batch size")


def _zero_points(graph):
    """(node, zero-point array, is_weight) of every Q / DQ node with an int8 zero point."""
    from onnx import numpy_helper

    inits = {i.name: i for i in graph.initializer}
    for n in graph.node:
        if n.op_type in _QDQ and len(n.input) > 2 and n.input[2] in inits:
            zp = numpy_helper.to_array(inits[n.input[2]])
            if zp.dtype == np.int8:
                yield n, zp, n.op_type == "DequantizeLinear" and n.input[0] in inits


def unsigned_activations(graph) -> int:
    """Every int8 activation grid re-encoded as uint8 (zero point + 128: the same values), in place; weights keep
    int8. Returns the grids changed."""
    from onnx import numpy_helper

    changed = 0
    for n, zp, is_weight in list(_zero_points(graph)):
        if is_weight:
            continue
        name = f"{n.name or n.output[0]}_zp_u8"
        graph.initializer.append(numpy_helper.from_array((zp.astype(np.int16) + 128).astype(np.uint8), name))
        n.input[2] = name
        changed += 1
    return changed


def unsigned_weights(graph) -> int:
    """Every int8 weight (symmetric: zero point 0) re-encoded as uint8 with zero point 128, in place: u8 x u8
    kernels sum in int32 on every x86 path. Returns the weights changed."""
    from onnx import numpy_helper

    inits = {i.name: i for i in graph.initializer}
    changed = 0
    for n, zp, is_weight in list(_zero_points(graph)):
        if not is_weight or zp.any():
            continue
        w = numpy_helper.to_array(inits[n.input[0]])
        name = f"{n.input[0]}_u8"
        graph.initializer.extend([numpy_helper.from_array((w.astype(np.int16) + 128).astype(np.uint8), name),
                                  numpy_helper.from_array(np.full(zp.shape, 128, np.uint8), f"{name}_zp")])
        n.input[0], n.input[2] = name, f"{name}_zp"
        changed += 1
    return changed


def _prune(graph) -> None:
    """Drop nodes and initializers the output no longer needs."""
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output}
    need, todo, keep = set(), [graph.output[0].name], set()
    while todo:
        t = todo.pop()
        if t in need:
            continue
        need.add(t)
        if t in producer and producer[t] not in keep:
            keep.add(producer[t])
            todo.extend(i for i in graph.node[producer[t]].input if i)
    nodes = [n for i, n in enumerate(graph.node) if i in keep]
    inits = [i for i in graph.initializer if i.name in need]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(inits)
