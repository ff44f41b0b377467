"""The normalisation tledge adds in front of a model (`--preprocess`) in the ONNX files: written as a Mul and an Add
with [3] constants on the NHWC pixels, before the Transpose to NCHW, onnxruntime broadcast the constants three floats
at a time (about half of a MobileNet 0.25 fp32 file's time, benchmarks/onnx_prep_cost.py). One value for every
channel (tf, scale) is now a scalar (tledge.export.loader.trace); a value per channel (torch, custom) is tiled along
the rows, [W, C] (tledge.export.onnx_prep); caffe's 1x1 convolution sat behind the Transpose already. Each file still
computes what the Keras model does."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("keras")
pytest.importorskip("tf2onnx")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from tledge.artifacts import Thresholds  # noqa: E402
from tledge.contract import Contract  # noqa: E402

SIZE = 48
CUSTOM = dict(mean=(120.0, 110.0, 100.0), std=(60.0, 55.0, 50.0))
MODES = ["tf", "scale", "torch", "custom", "caffe"]


def _nhwc_broadcasts(model) -> list[tuple[str, tuple]]:
    """(op, constant shape) of every op that meets the NHWC pixels before a Transpose with a constant whose values
    vary along the last axis alone ([3], [1, 1, 1, 3]): a per-channel constant broadcast against NHWC pixels, C floats
    at a time."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found, todo, seen = [], [model.graph.input[0].name], set()
    while todo:
        for node in consumers.get(todo.pop(), []):
            if node.op_type == "Transpose" or id(node) in seen:
                continue
            seen.add(id(node))
            found += [(node.op_type, inits[i].shape) for i in node.input if i in inits and _per_channel(inits[i])]
            todo.extend(node.output)
    return found


def _per_channel(c: np.ndarray) -> bool:
    return c.size > 1 and c.size == c.shape[-1]


def _input_transposed(model) -> bool:
    """Whether the pixels reach a Transpose to NCHW, through elementwise ops and casts only."""
    consumers = {i: n for n in model.graph.node for i in n.input}
    node = consumers.get(model.graph.input[0].name)
    while node is not None and node.op_type in ("Cast", "Mul", "Add", "Sub", "Div"):
        node = consumers.get(node.output[0])
    return node is not None and node.op_type == "Transpose" and list(node.attribute[0].ints) == [0, 3, 1, 2]


@pytest.fixture(scope="module")
def unbaked(tmp_path_factory):
    """The tiny conv net without normalisation, saved (random weights: a function of its input all the same)."""
    from conftest import build_tiny_classifier

    path = tmp_path_factory.mktemp("prep") / "m.keras"
    build_tiny_classifier(size=SIZE, baked=False).save(path)
    return path


@pytest.fixture(scope="module")
def photos(shapes_dataset):
    from tledge.images import labelled_images

    files, _, _ = labelled_images(shapes_dataset / "val")
    raw = Contract(SIZE, SIZE, norm="raw", baked=True, input_dtype="float32")
    return np.stack([raw.prepare(f) for f in files[:24]]).astype(np.float32)


def _traced(path, mode):
    from tledge.export import loader, resolve

    lm = loader.load_model(path)
    base = Contract(SIZE, SIZE, norm="custom", baked=False, **CUSTOM) if mode == "custom" else None
    contract, add = resolve.resolve_contract(lm, preprocess=None if base else mode, input_size=None, base=base,
                                             base_from="test")
    assert add == mode  # tledge adds the normalisation in front of the model
    return contract, loader.trace(lm, contract, add)


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"pixels": x})[0]


@pytest.mark.parametrize("mode", MODES)
def test_fp32_and_int8_files_broadcast_no_per_channel_constant_on_nhwc_pixels(mode, unbaked, photos, tmp_path):
    from tledge.export import onnx as ox

    contract, (serve, concrete) = _traced(unbaked, mode)
    fp32 = ox.convert_fp32(serve, contract)
    assert _input_transposed(fp32) and _nhwc_broadcasts(fp32) == []
    want = np.asarray(concrete(photos))
    assert np.ptp(want, axis=0).max() > 1e-3  # outputs differ per image: the comparison means something
    assert np.abs(_run(fp32, photos) - want).max() <= Thresholds.for_precision("fp32").max_abs
    ox.save(fp32, tmp_path / "fp32.onnx")
    ox.quantize_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", photos)
    int8 = onnx.load(str(tmp_path / "int8.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)
    assert _input_transposed(int8) and _nhwc_broadcasts(int8) == []
    got = _run(int8, photos)
    assert np.abs(got - want).max() < 0.1 * np.ptp(want, axis=0).max() + 0.02


def test_a_per_channel_chain_gets_its_constants_tiled_along_the_rows_with_the_same_outputs():
    """Hand-made: Sub with the constant first, Div, a scalar Mul and a constant another op shares; bit-identical."""
    from tledge.export import onnx_prep

    c = 3
    init = [numpy_helper.from_array(np.array([100.0, 110.0, 120.0], np.float32), "mean"),
            numpy_helper.from_array(np.array([[[[50.0, 55.0, 60.0]]]], np.float32), "std"),
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
            numpy_helper.from_array(np.ones((4, c, 1, 1), np.float32), "w")]
    nodes = [helper.make_node("Sub", ["mean", "x"], ["a"]), helper.make_node("Div", ["a", "std"], ["b"]),
             helper.make_node("Mul", ["b", "half"], ["d"]), helper.make_node("Transpose", ["d"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["conv"]), helper.make_node("Add", ["conv", "mean"], ["y0"]),
             helper.make_node("Relu", ["y0"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 3, c])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 3, 3])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = np.random.default_rng(0).uniform(0, 255, (2, 3, 3, c)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x})[0]
    assert _nhwc_broadcasts(model) != []
    ops = [n.op_type for n in model.graph.node]
    assert onnx_prep.tile_constants(model) == 2  # mean and std; the scalar stays
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ops
    shapes = {n.op_type: [numpy_helper.to_array(i).shape for i in model.graph.initializer if i.name in n.input]
              for n in model.graph.node}
    assert shapes["Sub"] == shapes["Div"] == [(3, c)] and shapes["Mul"] == [()]  # [W, C]
    assert _nhwc_broadcasts(model) == []
    assert "mean" in {i.name for i in model.graph.initializer}  # the Add after the Conv still uses it
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.array_equal(sess.run(None, {"x": x})[0], want)
    assert onnx_prep.tile_constants(model) == 0  # nothing per channel left
