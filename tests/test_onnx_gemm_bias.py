"""A plain U8S8 int8 ONNX file (what quantize_int8 ships for a model whose pair sums never saturate) with a Dense
head: onnxruntime's quantiser gives the Gemm an int32 bias through a DequantizeLinear, which OpenCV 5.1's dnn refused
(`bufidx >= 0 in function 'argTensor'`) while parity passed. The export now writes that bias as a float constant
(tledge.quant.constadds.float_gemm_biases): OpenCV loads the file and agrees with onnxruntime, whose outputs do not
move."""
from __future__ import annotations

import numpy as np
import pytest
from tiny import TINY

pytest.importorskip("onnxruntime.quantization")
onnx = pytest.importorskip("onnx")


def _non_saturating(tmp_path):
    """The tiny model's fp32 ONNX with one large weight per output channel of its group-1 convolutions (a pair of
    u8 x s8 products then never leaves int16), and a Dense head whose large weights read an input channel made
    nearly silent (under saturation.DENSE_HEADROOM too); and its calibration pixels."""
    from onnx import numpy_helper

    m = onnx.load(str(TINY / "model_fp32.onnx"))
    inits = {i.name: i for i in m.graph.initializer}
    arr = {k: numpy_helper.to_array(v).copy() for k, v in inits.items()}
    convs = [n for n in m.graph.node if n.op_type == "Conv" and all(a.i == 1 for a in n.attribute if a.name == "group")]
    (dense,) = [n for n in m.graph.node if n.op_type == "MatMul"]
    for n in convs:
        w = arr[n.input[1]]
        flat = w.reshape(len(w), -1)
        big = np.abs(flat).argmax(axis=1)
        small = flat * 1e-3
        small[np.arange(len(w)), big] = flat[np.arange(len(w)), big]
        arr[n.input[1]] = small.reshape(w.shape)
    last = convs[-1]
    arr[last.input[1]][0] *= 1e-3  # channel 0 of the Dense input nearly silent
    arr[last.input[2]][0] = abs(arr[last.input[2]][0]) * 1e-3 + 1e-4
    d = arr[dense.input[1]]
    head = d * 1e-3
    head[0] = d[0] + np.sign(d[0])  # the Dense's large weights on that channel
    arr[dense.input[1]] = head
    for k, v in arr.items():
        inits[k].CopyFrom(numpy_helper.from_array(v, k))
    src = tmp_path / "fp32.onnx"
    onnx.save(m, str(src))
    calib = np.random.default_rng(0).uniform(0, 255, (16, 48, 48, 3)).astype(np.float32)
    return src, calib


def _ort(path, x):
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def test_opencv_loads_the_plain_u8s8_file_of_a_model_that_never_saturates(tmp_path):
    cv2 = pytest.importorskip("cv2")
    from tledge.export.onnx import SCHEMES, quantize_int8

    src, calib = _non_saturating(tmp_path)
    dst = tmp_path / "int8.onnx"
    assert quantize_int8(src, dst, calib) == SCHEMES["u8s8"]  # nothing saturates: the plain U8S8 file ships
    m = onnx.load(str(dst))
    gemm = [n for n in m.graph.node if n.op_type == "Gemm"]
    assert gemm, "the Dense head is a Gemm in the int8 file"
    inits = {i.name: i for i in m.graph.initializer}
    assert gemm[0].input[2] in inits and inits[gemm[0].input[2]].data_type == onnx.TensorProto.FLOAT
    ours = _ort(dst, calib)
    net = cv2.dnn.readNetFromONNX(str(dst))
    theirs = []
    for x in calib:
        net.setInput(np.ascontiguousarray(x[None]))
        theirs.append(np.asarray(net.forward(), np.float32).reshape(-1))
    theirs = np.stack(theirs)
    assert np.array_equal(theirs.argmax(1), ours.argmax(1))
    assert np.abs(theirs - ours).max() < 1e-4


def test_the_float_bias_leaves_onnxruntime_bit_identical(tmp_path):
    """The same quantiser output with and without the fold: onnxruntime (default optimisation, so its QGemm, and the
    QDQ graph as written) gives the same bits; the int32 bias, its scale and zero point are gone."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from tledge.export.onnx import preprocess
    from tledge.quant.constadds import float_gemm_biases

    src, calib = _non_saturating(tmp_path)
    pre = preprocess(src, tmp_path / "pre.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"pixels": x[None]}

    quantize_static(str(pre), str(tmp_path / "as_written.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True)
    m = onnx.load(str(tmp_path / "as_written.onnx"))
    before = {i.name for i in m.graph.initializer}
    assert float_gemm_biases(m) == 1
    gone = before - {i.name for i in m.graph.initializer}
    assert len(gone) == 3 and all("BiasAdd" in g for g in gone), gone
    onnx.save(m, str(tmp_path / "folded.onnx"))
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        outs = [ort.InferenceSession(str(tmp_path / f), so, providers=["CPUExecutionProvider"]).run(
            None, {"pixels": calib})[0] for f in ("as_written.onnx", "folded.onnx")]
        assert np.array_equal(*outs), level
