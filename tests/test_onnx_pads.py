"""A zero Pad in front of a pooling op keeps its meaning in onnxruntime (tledge.export.onnx_pads).

onnxruntime's default `Pad_Fusion` folds Pad(0) -> MaxPool into the pool's own (-inf) padding; a window of
negative values at the border then gives its maximum instead of 0. Measured first on ResNet50V2's fp32 ONNX
file (max abs 0.113 against Keras); here on a graph made so that the border windows are negative.
"""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _pad_then_pool(op: str):
    from onnx import TensorProto, helper

    pads = helper.make_tensor("pads", TensorProto.INT64, [8], [0, 0, 1, 1, 0, 0, 1, 1])
    nodes = [helper.make_node("Pad", ["x", "pads"], ["padded"], mode="constant"),
             helper.make_node(op, ["padded"], ["y"], kernel_shape=[3, 3], strides=[2, 2])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3])], [pads])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)  # what tf2onnx writes


def _expected(x: np.ndarray, op: str) -> np.ndarray:
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))  # zeros, as Pad writes them
    out = np.empty((1, 2, 3, 3), np.float32)
    for i in range(3):
        for j in range(3):
            w = p[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
            out[:, :, i, j] = w.max((2, 3)) if op == "MaxPool" else w.mean((2, 3))
    return out


def _run(model, x, **opts):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"], **opts)
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_pad_before_a_pool_keeps_its_zeros_in_onnxruntime(op, tmp_path):
    from tledge.export.onnx_pads import keep_zero_pads

    x = -1.0 - np.random.default_rng(0).random((1, 2, 6, 6)).astype(np.float32)  # all negative: zeros win borders
    model, want = _pad_then_pool(op), _expected(x, op)
    np.testing.assert_allclose(_run(model, x, disabled_optimizers=["Pad_Fusion"]), want, atol=1e-6)  # the meaning
    if op == "MaxPool":  # what a file without the fix gives in onnxruntime's default session
        assert np.abs(_run(model, x) - want).max() > 0.5
    assert keep_zero_pads(model) == 1
    onnx.checker.check_model(model)
    np.testing.assert_allclose(_run(model, x), want, atol=1e-6)
    import cv2

    onnx.save(model, str(tmp_path / "m.onnx"))
    net = cv2.dnn.readNetFromONNX(str(tmp_path / "m.onnx"))
    net.setInput(x)
    np.testing.assert_allclose(net.forward(), want, atol=1e-5)  # OpenCV reads auto_pad VALID the same way


def test_pools_with_their_own_padding_or_other_inputs_are_left_alone():
    from onnx import helper

    from tledge.export.onnx_pads import keep_zero_pads

    model = _pad_then_pool("MaxPool")
    model.graph.node[1].attribute.append(helper.make_attribute("pads", [1, 1, 1, 1]))
    assert keep_zero_pads(model) == 0
    plain = _pad_then_pool("MaxPool")
    plain.graph.node[1].input[0] = "x"  # a pool not fed by the Pad
    assert keep_zero_pads(plain) == 0
