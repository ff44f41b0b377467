"""A model built as Keras's mixed-precision guide says (float16 compute, a float32 last layer): the fp32 TFLite
conversion failed halfway ("'tf.Mul' op is neither a custom op nor a flex op") and the ONNX file shipped alone. It is
rebuilt in float32 with its weights, and every file is made from that."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from tledge.cli import main  # noqa: E402
from tledge.export import loader  # noqa: E402


@pytest.fixture(scope="module")
def mixed_model(tmp_path_factory):
    import keras

    L, d = keras.layers, tmp_path_factory.mktemp("mixed")
    i = keras.Input((24, 24, 3))
    x = L.Rescaling(1 / 255.0, dtype="mixed_float16")(i)
    x = L.Conv2D(4, 3, activation="relu", dtype="mixed_float16")(x)
    x = L.GlobalAveragePooling2D(dtype="mixed_float16")(x)
    m = keras.Model(i, L.Dense(2, activation="softmax", dtype="float32")(x))
    m.save(d / "mixed.keras")
    return d / "mixed.keras", m


def test_a_mixed_precision_model_is_rebuilt_in_float32(mixed_model):
    path, original = mixed_model
    lm = loader.load_model(path)
    assert {layer.dtype_policy.name for layer in lm.model.layers} == {"float32"}
    assert any("rebuilt in float32" in n for n in lm.notes)
    x = np.random.default_rng(0).uniform(0, 255, (3, 24, 24, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(lm.model(x)), np.asarray(original(x)), atol=5e-3)


def _noise_folders(val):
    import cv2

    rng = np.random.default_rng(1)
    for c in ("a", "b"):
        (val / c).mkdir(parents=True)
        for k in range(4):
            cv2.imwrite(str(val / c / f"{k}.png"), rng.integers(0, 256, (30, 30, 3), dtype=np.uint8))


def test_its_tflite_file_converts(mixed_model, tmp_path):
    path, _ = mixed_model
    _noise_folders(tmp_path / "val")
    rc = main(["export", str(path), "--formats", "tflite", "--val", str(tmp_path / "val"), "--out", str(tmp_path / "e")])
    assert rc == 0 and (tmp_path / "e" / "model_fp32.tflite").is_file()


def test_a_mixed_precision_savedmodel_is_rewritten_in_float32(mixed_model, tmp_path):
    """Session 37: the same model as a SavedModel (`model.export`) has no layers to rebuild; its float16 graph failed
    TFLite conversion the same way. The frozen graph is rewritten in float32 and checked to compute the same."""
    _, original = mixed_model
    folder = tmp_path / "mixed_sm"
    original.export(str(folder), verbose=False)
    lm = loader.load_model(folder)
    assert any("rewritten in float32" in n for n in lm.notes), lm.notes
    x = np.random.default_rng(0).uniform(0, 255, (3, 24, 24, 3)).astype(np.float32)
    got = np.asarray(lm.model(x))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, np.asarray(original(x)), atol=5e-3)
    _noise_folders(tmp_path / "val")
    rc = main(["export", str(folder), "--formats", "tflite", "--val", str(tmp_path / "val"), "--out", str(tmp_path / "e")])
    assert rc == 0 and (tmp_path / "e" / "model_fp32.tflite").is_file()


def test_a_mixed_bfloat16_model_is_rebuilt_too(tmp_path):
    """Session 37: JAX's usual policy. Its float32 rebuild differs by bfloat16's 8-bit mantissa (0.08 on a MobileNet
    0.25 softmax), past the float16 tolerance: it was kept as it was, the TFLite conversion failed and the ONNX
    file onnxruntime could not load ended the export in a traceback."""
    import keras

    from tledge.export import float32

    L = keras.layers
    i = keras.Input((24, 24, 3))
    x = L.Rescaling(1 / 255.0, dtype="mixed_bfloat16")(i)
    x = L.Conv2D(4, 3, activation="relu", dtype="mixed_bfloat16")(x)
    x = L.GlobalAveragePooling2D(dtype="mixed_bfloat16")(x)
    m = keras.Model(i, L.Dense(2, activation="softmax", dtype="float32")(x))
    copy, note = float32.rebuild(m)
    assert "bfloat16 compute) rebuilt in float32" in note, note
    assert {layer.dtype_policy.name for layer in copy.layers} == {"float32"}


def test_an_onnx_file_onnxruntime_cannot_load_still_says_its_contract(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from tledge.contract import METADATA_KEY, Contract
    from tledge.metadata import read_onnx_contract

    graph = helper.make_graph([helper.make_node("Mul", ["a", "b"], ["y"])], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT16, [1]),
                               helper.make_tensor_value_info("b", TensorProto.BFLOAT16, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {METADATA_KEY: Contract(8, 8, labels=("a", "b")).to_json()})
    onnx.save(model, str(tmp_path / "bad.onnx"))
    assert read_onnx_contract(tmp_path / "bad.onnx").labels == ("a", "b")


@pytest.mark.parametrize("where", ["every layer", "the last layer"])
def test_a_plain_float16_policy_is_rebuilt_too(tmp_path, where):
    """set_dtype_policy("float16"), or Dense(dtype="float16") as the last layer: not mixed_*, so the TFLite files failed
    ("'tf.MatMul' op is neither a custom op nor a flex op") and the fp32 ONNX file computed in float16."""
    import keras

    L = keras.layers
    half = "float16" if where == "every layer" else None
    i = keras.Input((24, 24, 3))
    x = L.Conv2D(4, 3, activation="relu", dtype=half)(L.Rescaling(1 / 255.0, dtype=half)(i))
    m = keras.Model(i, L.Dense(2, activation="softmax", dtype="float16")(L.GlobalAveragePooling2D(dtype=half)(x)))
    m.save(tmp_path / "half.keras")
    lm = loader.load_model(tmp_path / "half.keras")
    assert {layer.dtype_policy.name for layer in lm.model.layers} == {"float32"}
    assert any("rebuilt in float32" in n for n in lm.notes)
    x = np.random.default_rng(0).uniform(0, 255, (3, 24, 24, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(lm.model(x)), np.asarray(m(x), np.float32), atol=5e-3)
