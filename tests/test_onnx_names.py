"""The same model exported twice in one process gives the same ONNX bytes. tf2onnx numbers the names it makes
(`batchnorm/mul_1__6`, `const_fold_opt__21`) from a counter of its module that is never reset, so a second export (a
notebook, a sweep, a test session) wrote the same graph under other names (`mul_1__29`): not byte-identical, and a
sha256 comparison of two exports of one model said they differ."""
import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")


def test_a_second_export_in_one_process_writes_the_same_onnx_files(shapes_dataset, tmp_path):
    from conftest import build_tiny_classifier

    from tledge.export.pipeline import ExportConfig, export

    build_tiny_classifier().save(tmp_path / "m.keras")
    outs = [tmp_path / "first", tmp_path / "second"]
    for out in outs:  # fp32 by tf2onnx from the traced model, int8 by a second conversion and onnxruntime's QDQ
        export(tmp_path / "m.keras", ExportConfig(out=out, formats=("onnx",), int8=True,
                                                  calib=str(shapes_dataset / "train"), val=str(shapes_dataset / "val")))
    names = sorted(p.name for p in outs[0].glob("*.onnx"))
    assert names == ["model_fp32.onnx", "model_int8.onnx"] == sorted(p.name for p in outs[1].glob("*.onnx"))
    for name in names:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def test_a_second_translation_of_a_tflite_file_is_the_same_graph():
    """tf2onnx's TFLite reader (tledge.export.onnx_translate: an int8 ONNX file translated from the int8 TFLite file)
    also visits nodes in an order that changes from run to run: two translations of one file numbered its names
    otherwise and ordered its initializers otherwise, in one process as in two."""
    from tiny import TINY

    from tledge.contract import Contract
    from tledge.export import onnx_translate
    from tledge.images import iter_image_files

    contract = Contract.load(TINY / "tledge.json")
    x = np.stack([contract.replace(input_dtype="float32").prepare(f)
                  for f in sorted(iter_image_files(TINY / "images"))[:4]]).astype(np.float32)
    data = (TINY / "model_int8.tflite").read_bytes()
    first, second = (onnx_translate.from_tflite(data, "nhwc", x)[0].SerializeToString() for _ in range(2))
    assert first == second


def test_the_first_name_is_what_a_fresh_tf2onnx_starts_at():
    """fresh_names resets tf2onnx's name counter to onnx.FIRST_NAME, the value a fresh import of tf2onnx.convert (as
    the export imports it) leaves: a tf2onnx release that starts elsewhere would make a first export's names differ
    from a second's again."""
    import os
    import subprocess
    import sys

    from tledge.export.onnx import FIRST_NAME

    got = subprocess.run([sys.executable, "-c", "import tf2onnx.convert, tf2onnx.utils as u; print(u.INTERNAL_NAME)"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert got.returncode == 0 and int(got.stdout.split()[-1]) == FIRST_NAME, got.stderr[-2000:]


def _relu6_twice(first: str, second: str):
    """Two Relu6 Clips sharing tf2onnx's folded min / max constants, named after `first` or `second` Clip (what its
    constant folding does, by whichever reader a set yields first), with a made-name node between them."""
    from onnx import TensorProto, helper, numpy_helper

    lo, hi = f"{first}/Relu6_min__{len(second)}", f"{second}/Relu6_max__{len(first) * 7}"
    nodes = [helper.make_node("Clip", ["x", lo, hi], ["a"], name="a/Relu6"),
             helper.make_node("Mul", ["a", "two"], [f"mul__{len(first)}:0"], name=f"mul__{len(first)}"),
             helper.make_node("Clip", [f"mul__{len(first)}:0", lo, hi], ["y"], name="b/Relu6")]
    inits = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in ((hi, 6.0), ("two", 2.0), (lo, 0.0))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_shared_folded_constant_gets_the_same_name_whoever_tf2onnx_named_it_after():
    """On a real MobileNet two exports were not byte-identical, in one process or two: tf2onnx's constant folding
    named the Relu6 Clips' shared min / max after whichever Clip a set yielded first. The same graph named both ways
    gives the same bytes, and computes what it did."""
    import onnxruntime as ort

    from tledge.export import onnx_names

    models = [_relu6_twice("a", "bbbb"), _relu6_twice("bbbb", "a")]
    x = np.array([-3, 1, 2.5, 9], np.float32)
    before = [ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0] for m in models]
    assert models[0].SerializeToString() != models[1].SerializeToString()
    for m in models:
        onnx_names.in_graph_order(m, suffix_only=True)
        assert len(onnx_names.shared_constants(m)) == 2
    assert models[0].SerializeToString() == models[1].SerializeToString()
    after = ort.InferenceSession(models[0].SerializeToString()).run(None, {"x": x})[0]
    assert np.array_equal(after, before[0]) and np.array_equal(after, before[1])
    names = sorted(i.name for i in models[0].graph.initializer)  # after the first reader in graph order and its slot
    assert names == ["a/Relu6_in1", "a/Relu6_in2", "two"], names


def test_a_real_mobilenet_converts_to_the_same_onnx_bytes_twice(shared_assets):
    """The real case: MobileNet v1 0.25 with the shared ImageNet weights (its Relu6 Clips share folded constants),
    converted twice in one process."""
    import keras
    from realdata import WEIGHTS

    from tledge.contract import Contract
    from tledge.export.onnx import convert_fp32
    from tledge.export.rungs import serve

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNet(input_shape=(96, 96, 3), alpha=0.25, include_top=False, pooling="avg",
                                         weights=str(shared_assets / WEIGHTS))
    contract = Contract(96, 96, norm="tf", baked=False)
    first, second = (convert_fp32(serve(model, contract), contract).SerializeToString() for _ in range(2))
    assert first == second


def test_constants_first_read_by_nodes_tf2onnx_named_alike_stay_apart_and_keras_dunder_names_stay():
    """Review of 2026-12-08: named after the first reader with its made number stripped, two shared constants first
    read by `Mul__5` and `Mul__9` both became `Mul_in1`: onnxruntime took one value for both (36 -> 81, exit 0). And
    renumbering every `__N` renamed a Keras layer `block__2` (its scope in the node names) to `block__4`, which the
    per-layer diagnosis and the repair's float layers look up by name."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from tledge.export import onnx_names

    c = [numpy_helper.from_array(np.array([v], np.float32), n) for n, v in (("c_two__11", 2.0), ("c_three__12", 3.0))]
    nodes = [helper.make_node("Mul", ["x", "c_two__11"], ["Mul__5:0"], name="Mul__5"),
             helper.make_node("Mul", ["Mul__5:0", "c_three__12"], ["Mul__9:0"], name="Mul__9"),
             helper.make_node("Mul", ["Mul__9:0", "c_two__11"], ["m:0"], name="model/block__2/mul"),
             helper.make_node("Mul", ["m:0", "c_three__12"], ["y"], name="model/block__2/mul_1")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], c)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = np.array([1.0], np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    onnx_names.in_graph_order(model, suffix_only=True)
    renamed = onnx_names.shared_constants(model)
    assert len(set(renamed.values())) == 2, renamed
    assert len({i.name for i in model.graph.initializer}) == 2
    after = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert np.array_equal(before, after) and before[0] == 36.0
    assert [n.name for n in model.graph.node][2:] == ["model/block__2/mul", "model/block__2/mul_1"]
