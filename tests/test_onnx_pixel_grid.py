"""The first quantised tensor of an int8 ONNX file keeps the pixel levels apart (tledge.quant.pixelgrid).

`x / 127.5 - 1` calibrated on photos holding 0 and 255 gets onnxruntime's scale 2/255 with zero point 128:
every pixel level then lies half-way between two codes and QuantizeLinear's half-to-even rounding gives
levels 1 and 2, 3 and 4, ... one code (7-bit pixels). tledge keeps the preprocessing float and gives the
convolution's input a grid on which the levels stay apart."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime.quantization")

from onnx import TensorProto, helper  # noqa: E402

from tledge.export import onnx as ox  # noqa: E402
from tledge.quant import pixelgrid  # noqa: E402


def _identity_conv_net(path):
    """pixels NHWC float 0..255 -> x / 127.5 - 1 -> NCHW -> 1x1 Conv = identity -> output."""
    w = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)
    nodes = [helper.make_node("Mul", ["pixels", "k"], ["a"], name="scale"),
             helper.make_node("Add", ["a", "b"], ["c"], name="offset"),
             helper.make_node("Transpose", ["c"], ["t"], perm=[0, 3, 1, 2], name="nchw"),
             helper.make_node("Conv", ["t", "w"], ["y"], name="conv")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", 4, 4, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 4, 4])],
        [helper.make_tensor("k", TensorProto.FLOAT, [], [1 / 127.5]),
         helper.make_tensor("b", TensorProto.FLOAT, [], [-1.0]),
         helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, path)


def _levels_through(path):
    """The file's output for constant images of every pixel level: [256, 3] at one position."""
    x = np.broadcast_to(np.arange(256, dtype=np.float32).reshape(256, 1, 1, 1), (256, 4, 4, 3)).copy()
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {"pixels": x})[0][:, :, 2, 2]


def test_best_grid_keeps_the_levels_apart_and_the_range_in(tmp_path):
    src = tmp_path / "f.onnx"
    _identity_conv_net(src)
    levels = pixelgrid._levels(src, ["t"])["t"]  # x / 127.5 - 1 as onnxruntime computes it, [256, 3]
    assert levels.shape == (256, 3) and levels[0, 0] == -1 and levels[255, 0] == 1
    scale, zp, apart = pixelgrid.best_grid(levels)
    assert apart >= 3 * 255 and len(np.unique(pixelgrid._codes(levels[:, :1], scale, zp))) >= 255
    assert scale * (255 - zp) >= 1 - 1e-6 and scale * zp >= 1 - 1e-6  # [-1, 1] is inside the grid


def test_int8_file_keeps_the_pixel_levels_apart(tmp_path):
    src = tmp_path / "f.onnx"
    _identity_conv_net(src)
    rng = np.random.default_rng(0)
    calib = rng.integers(0, 256, (16, 4, 4, 3)).astype(np.float32)
    calib[0, 0, 0], calib[1, 0, 0] = 0, 255  # the photos' darkest and brightest pixels
    ox.quantize_int8(src, tmp_path / "q.onnx", calib, scheme=ox.SCHEMES["u8s8"])
    q = onnx.load(str(tmp_path / "q.onnx"))
    assert {n.op_type for n in q.graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    assert not [n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "pixels"]  # float chain
    got = _levels_through(tmp_path / "q.onnx")
    want = np.arange(256, dtype=np.float32)[:, None] / 127.5 - 1
    for c in range(3):
        assert len(np.unique(got[:, c])) >= 255  # 128 on onnxruntime's own grid
    assert np.abs(got - want).max() <= 1 / 127 + 1e-6  # within one step of the exact normalised pixel

    from onnxruntime import quantization as oq  # the control: onnxruntime quantising the chain itself

    from tledge.quant.selective import CalibrationReader

    oq.quantize_static(str(src), str(tmp_path / "all.onnx"), CalibrationReader("pixels", calib),
                       quant_format=oq.QuantFormat.QDQ, per_channel=True,
                       activation_type=oq.QuantType.QUInt8, weight_type=oq.QuantType.QInt8)
    got = _levels_through(tmp_path / "all.onnx")
    assert max(len(np.unique(got[:, c])) for c in range(3)) <= 130  # pairs of levels share a code


def test_no_chain_no_plan(tmp_path):
    """A graph whose input meets a non-elementwise op first (here a Relu) gets no plan."""
    nodes = [helper.make_node("Relu", ["pixels"], ["r"]), helper.make_node("Conv", ["r", "w"], ["y"], name="conv")]
    w = np.ones((2, 3, 1, 1), np.float32)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, 4, 4])],
                              [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())])
    path = tmp_path / "r.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    assert pixelgrid.plan(path, set()) == pixelgrid.Plan()
