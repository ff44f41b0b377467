"""ConvNeXt's ops that tf2onnx did not convert: the grouped convolution, which Keras 3 runs as an XLA-compiled
function (StatefulPartitionedCall), and exact GELU's Erfc. tledge.export.onnx_tfops now rewrites both before
tf2onnx (the call inlined, Erfc as 1 - Erf), so the model exports to ONNX and passes fp32 parity. Any op that
tf2onnx still leaves in the graph fails the file's conversion with one clear line (the report's failed row),
before an .onnx onnxruntime refuses is written; the TFLite files of the same model export."""
from __future__ import annotations

import os

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tf2onnx")

from tledge.cli import main  # noqa: E402
from tledge.layers import preprocess_layer  # noqa: E402


@pytest.fixture(scope="module")
def convnext_like(tmp_path_factory):
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3), name="pixels")
    x = keras.layers.Conv2D(8, 2, strides=2)(preprocess_layer("tf")(inp))
    x = keras.layers.Conv2D(8, 3, padding="same", groups=8)(x)  # ConvNeXt's depthwise convolution
    x = keras.layers.Activation("gelu")(keras.layers.Dense(16)(keras.layers.LayerNormalization(epsilon=1e-6)(x)))
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    path = tmp_path_factory.mktemp("convnext_like") / "model.keras"
    keras.Model(inp, out).save(path)
    return path


def test_grouped_convolutions_and_exact_gelu_export_to_onnx(convnext_like, shapes_dataset, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "export"
    rc = main(["export", str(convnext_like), "--formats", "onnx", "--val", str(shapes_dataset / "val"),
               "--out", str(out)])
    assert rc == 0  # fp32 parity against the Keras model passed
    model = onnx.load(str(out / "model_fp32.onnx"))
    groups = [a.i for n in model.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
    assert 8 in groups and any(n.op_type == "Erf" for n in model.graph.node)
    sess = ort.InferenceSession(str(out / "model_fp32.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype(np.float32)
    feed = x.transpose(0, 3, 1, 2) if sess.get_inputs()[0].shape[1] == 3 else x
    want = keras.models.load_model(convnext_like)(x, training=False)
    np.testing.assert_allclose(sess.run(None, {sess.get_inputs()[0].name: feed})[0], np.asarray(want), atol=1e-5)


def test_ops_tf2onnx_leaves_in_the_graph_fail_the_onnx_export_with_one_line(convnext_like, shapes_dataset,
                                                                             tmp_path, capsys, monkeypatch):
    """Without the rewrite tf2onnx keeps the XLA call and Erfc: that is the unconverted-op path."""
    from tledge.export import onnx_tfops

    monkeypatch.setattr(onnx_tfops, "rewrite", lambda tf, graph_def: (graph_def, {}))
    out = tmp_path / "export"
    rc = main(["export", str(convnext_like), "--formats", "onnx", "--val", str(shapes_dataset / "val"),
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1, err  # a conversion that fails is a failed file of the parity report, as for any converter
    assert "Traceback" not in err
    line = next(x for x in err.splitlines() if "ONNX conversion failed" in x)
    assert "StatefulPartitionedCall" in line and "--formats tflite" in line
    assert not out.exists() or not any(p.suffix == ".onnx" for p in out.iterdir())


def test_the_tflite_files_of_the_same_model_export(convnext_like, shapes_dataset, tmp_path):
    rc = main(["export", str(convnext_like), "--formats", "tflite", "--val", str(shapes_dataset / "val"),
               "--out", str(tmp_path / "e")])
    assert rc == 0
    assert (tmp_path / "e" / "model_fp32.tflite").is_file()
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(str(tmp_path / "e" / "model_fp32.tflite"))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], np.zeros((1, 16, 16, 3), np.float32))
    it.invoke()


def test_shape_inference_that_gives_up_leaves_nothing_in_the_working_directory(tmp_path, monkeypatch):
    """onnxruntime's symbolic shape inference saves sym_shape_infer_temp.onnx + a .data file of every weight
    into the working directory when it cannot finish (it did for the ConvNeXt export: 111 MB in the repo)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from tledge.export import onnx as onnx_export

    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.ones(16, np.float32))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("NotAnOnnxOp", ["h"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    src, dst = tmp_path / "src.onnx", tmp_path / "dst.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    seen, infer = [], SymbolicShapeInference.infer_shapes
    monkeypatch.setattr(SymbolicShapeInference, "infer_shapes",
                        staticmethod(lambda *a, **k: (seen.append(os.getcwd()), infer(*a, **k))[1]))
    assert onnx_export.preprocess(src, dst) == dst and dst.is_file()  # the plain graph when it fails
    assert list(cwd.iterdir()) == []
    # without changing the process's working directory (another thread's relative paths were lost in a library call)
    assert seen == [str(cwd)]


def test_a_tflite_converter_failure_says_the_converter_s_diagnosis():
    """The message was the last line of the MLIR dump ("}) {tf.entry_function = ...} : () -> ()")."""
    from tledge.export.tflite import converter_error

    dump = ("ConverterError: Could not translate MLIR to FlatBuffer\n<unknown>:0: error: loc(\"WriteFile\"): "
            "'tf.WriteFile' op is neither a custom op nor a flex op\n<unknown>:0: note: see current operation\n"
            "}) {tf.entry_function = {control_outputs = \"\", inputs = \"pixels\"}} : () -> ()")
    assert converter_error(Exception(dump)) == ("loc(\"WriteFile\"): 'tf.WriteFile' op is neither a custom op "
                                                "nor a flex op")
    assert converter_error(ValueError("one line")) == "one line" and converter_error(ValueError()) == "ValueError"


def test_a_model_that_takes_one_image_at_a_time_is_run_one_at_a_time():
    """A SavedModel whose graph fixes the batch at 1 gave a 35-line TensorFlow traceback (exit 1)."""
    from tledge.errors import ModelLoadError
    from tledge.export.loader import run_reference

    def one_at_a_time(x):
        if len(x) != 1:
            raise ValueError("Incompatible shapes at component 0: expected [6,3] but got [1,3]\n  (details)")
        return x.reshape(1, -1)[:, :2] * 2

    x = np.arange(5 * 4, dtype=np.float32).reshape(5, 2, 2, 1)
    np.testing.assert_array_equal(run_reference(one_at_a_time, x), x.reshape(5, -1)[:, :2] * 2)

    def broken(x):
        raise ValueError("Incompatible shapes\nmore")
    with pytest.raises(ModelLoadError, match=r"fails on the prepared images: Incompatible shapes$"):
        run_reference(broken, x)
