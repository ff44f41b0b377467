"""tledge.quant.constadds: which ONNX Adds have a constant operand (kept float in int8 files), constants reached
through Cast / Identity / Reshape chains included."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from tledge.quant.constadds import constant_adds, constants  # noqa: E402


def _graph(nodes, inits=()):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], initializer=list(inits)))


def test_constants_follow_cast_identity_and_reshape_chains():
    three = numpy_helper.from_array(np.full((4,), 3, np.float16), "three")
    shape = numpy_helper.from_array(np.array([1, 4], np.int64), "shape")
    m = _graph([
        helper.make_node("Cast", ["three"], ["three32"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Identity", ["three32"], ["three_id"], name="ident"),
        helper.make_node("Reshape", ["three_id", "shape"], ["three_r"], name="reshape"),
        helper.make_node("Add", ["x", "three_r"], ["a"], name="add_const_chain"),
        helper.make_node("Constant", [], ["one"], name="const", value=numpy_helper.from_array(np.ones((1, 4), np.float32))),
        helper.make_node("Identity", ["one"], ["one_id"], name="ident2"),
        helper.make_node("Add", ["one_id", "a"], ["b"], name="add_constant_node"),
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Cast", ["r"], ["r32"], name="cast_act", to=TensorProto.FLOAT),
        helper.make_node("Add", ["b", "r32"], ["y"], name="add_activations"),
    ], [three, shape])
    onnx.checker.check_model(m)
    consts = constants(m)
    assert {"three", "three32", "three_id", "three_r", "one", "one_id"} <= consts
    assert not {"x", "a", "b", "r", "r32", "y"} & consts
    assert constant_adds(m) == ["add_const_chain", "add_constant_node"]
