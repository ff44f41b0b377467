"""A Keras 3 model rebuilt from the export's float TFLite file (tledge.quant.from_tflite), so a SavedModel
gets the Keras-level int8 repairs (tledge.export.repair_model): the copy computes what the file computes on
real images, its layers are what the repairs look for, an op outside the whitelist gives None, and the
export of the tiny SavedModel runs the Keras rungs."""
import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

from tledge._deps import tflite_schema  # noqa: E402
from tledge.quant import from_tflite  # noqa: E402
from tledge.quant import tflite_bias as tb  # noqa: E402


def _run(data: bytes, x: np.ndarray) -> np.ndarray:
    it = tb.interpreter(data)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    ys = []
    for img in x:
        it.set_tensor(inp["index"], img[None].astype(np.float32))
        it.invoke()
        ys.append(np.array(it.get_tensor(out["index"])[0]))
    return np.stack(ys)


def _pack(model) -> bytes:
    import flatbuffers

    b = flatbuffers.Builder(0)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


@pytest.fixture(scope="module")
def sm_fp32(tiny_savedmodel_tflite):
    res, calib, _ = tiny_savedmodel_tflite
    return (res.out / "model_fp32.tflite").read_bytes(), calib


def test_rebuilt_model_equals_the_float_file_on_real_images(sm_fp32):
    from tledge.export.repair_model import tflite_difference
    from tledge.layers import baked_norm
    from tledge.quant import repair

    data, calib = sm_fp32
    model = from_tflite.from_tflite(data)
    assert model is not None
    ref = _run(data, calib[:24])
    got = np.asarray(model(calib[:24]))
    assert np.max(np.abs(got - ref)) < 1e-5 and len(set(np.argmax(ref, 1))) > 1  # confident, not flat
    assert tflite_difference(model, data, calib[:4])[0] < 1e-5
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Conv2D") == 2 and kinds.count("DepthwiseConv2D") == 1 and kinds.count("Dense") == 1, kinds
    assert "ReLU" in kinds and "GlobalAveragePooling2D" in kinds and kinds[-1] == "Softmax", kinds
    # the tiny model bakes tf preprocessing: the converter's MUL + ADD became one Rescaling exact_input can read
    norms = [baked_norm(layer) for layer in model.layers if type(layer).__name__ == "Rescaling"]
    assert norms == [("tf", None, None)], norms
    assert repair.exact_input(model)[1]  # x/127.5 - 1 shifted onto the exact int8 input grid


def test_conv_weights_are_the_files_in_keras_layout(sm_fp32):
    data, _ = sm_fp32
    model = from_tflite.from_tflite(data)
    f = tb.load(data)
    op = [o for o in tb.linear_ops(f) if o.kind == "CONV_2D"][0]
    ohwi = tb.tensor_array(f, op.weight)
    conv = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"][0]
    assert np.array_equal(conv.get_weights()[0], ohwi.transpose(1, 2, 3, 0))


def test_an_op_outside_the_whitelist_gives_none(sm_fp32):
    data, _ = sm_fp32
    f = tb.load(data)
    kinds = tb.op_kinds(f)
    softmax = f.operatorCodes[f.subgraphs[0].operators[kinds.index("SOFTMAX")].opcodeIndex]
    softmax.builtinCode = softmax.deprecatedBuiltinCode = tflite_schema().BuiltinOperator.LOG_SOFTMAX
    changed = _pack(f)
    assert "LOG_SOFTMAX" in tb.op_kinds(tb.load(changed))
    assert from_tflite.from_tflite(changed) is None
    with pytest.raises(from_tflite.Unsupported, match="LOG_SOFTMAX"):
        from_tflite.build(changed)


def test_a_fused_activation_outside_the_whitelist_gives_none(sm_fp32):
    data, _ = sm_fp32
    f = tb.load(data)
    conv = [o for o in tb.linear_ops(f) if o.kind == "CONV_2D"][0]
    conv.options.fusedActivationFunction = tflite_schema().ActivationFunctionType.TANH
    assert from_tflite.from_tflite(_pack(f)) is None


def test_savedmodel_export_runs_the_keras_rungs(tiny_model, shapes_dataset, tmp_path):
    """The tiny SavedModel's TFLite file, int8-only and an impossible budget: after the TFLite graph rungs
    (int8-only targets keep tflite-rounding) the Keras repair runs on the model rebuilt from the float TFLite
    file (4 linear layers: too small for a stem); parity.md says what was rebuilt."""
    from conftest import tiny_savedmodel_int8_only_export

    from tledge.metadata import read_contract

    res = tiny_savedmodel_int8_only_export(tiny_model, shapes_dataset, tmp_path)
    rows = res.report.fidelity
    assert [r["rung"] for r in rows] == ["plain", "tflite-bias", "tflite-rounding", "repaired"], rows
    assert "error" not in rows[3] and rows[3]["agreement"] >= 0.8, rows[3]
    assert any("rebuilt as Keras 3 from its float TFLite graph" in n for n in res.report.notes), res.report.notes
    assert "rebuilt as Keras 3 from its float TFLite graph" in (tmp_path / "e" / "parity.md").read_text()
    best = max(rows, key=lambda r: (r["agreement"], -r["median_image_max_abs"]))
    extra = read_contract(tmp_path / "e" / "model_int8.tflite").extra
    if best["rung"] != "plain":
        assert extra["int8_repair"] == best["rung"], (extra, best)


def test_without_a_float_tflite_file_the_graph_is_converted_for_the_loop(tiny_savedmodel_tflite, tmp_path):
    """An export that writes no model_fp32.tflite (`--formats onnx`): the loop converts the export's traced function
    itself, writes it nowhere, and rebuilds the SavedModel from it (it returned None, so the ONNX-only export of a
    SavedModel got no weight repair). The copy computes what the fixture export's own model_fp32.tflite computes."""
    from tledge.export import loader, repair_model
    from tledge.export.fidelity import FidelityContext
    from tledge.export.repair_model import tflite_difference

    res, calib, folder = tiny_savedmodel_tflite
    lm = loader.load_model(folder / "sm")
    ctx = FidelityContext(lm, res.contract, None, calib, None, None, None, tmp_path, {})
    model, note = repair_model.pixel_model_and_note(ctx)
    assert model is not None, note
    assert "rebuilt as Keras 3 from its float TFLite graph" in note
    assert tflite_difference(model, (res.out / "model_fp32.tflite").read_bytes(), calib[:8])[0] < 1e-4
    assert list(tmp_path.iterdir()) == []  # converted in memory: nothing written to the export's folder
    assert ctx.float_tflite() is ctx.float_tflite()  # once: the TFLite graph rungs reuse it


def test_onnx_only_savedmodel_export_gets_the_weight_repair(tiny_model, shapes_dataset, tmp_path):
    """`--formats onnx --int8` of a SavedModel, an impossible budget: the ONNX ladder runs the Keras repair on the
    model rebuilt from the float TFLite graph, as the both-format export's does (it had only onnx-bias, percentile
    and sensitive, then fell back to fp32), and the folder holds no TFLite file."""
    from tledge.export.parity import Thresholds
    from tledge.export.pipeline import ExportConfig, export

    tiny_model["model"].export(str(tmp_path / "sm"), verbose=False)
    cfg = ExportConfig(out=tmp_path / "e", formats=("onnx",), int8=True, calib=str(shapes_dataset / "train"),
                       preprocess="raw", val=str(shapes_dataset / "val"),
                       thresholds={"int8": Thresholds(max_abs=1e-9, min_agreement=1.0)})
    with pytest.warns(Warning, match="FALLBACK"):
        res = export(tmp_path / "sm", cfg)
    rows = [r for r in res.report.fidelity if r["file"] == "model_int8.onnx"]
    repaired = [r for r in rows if r["rung"] == "repaired"]
    assert repaired and "error" not in repaired[0] and repaired[0]["agreement"] >= 0.8, rows
    assert any("rebuilt as Keras 3 from its float TFLite graph" in n for n in res.report.notes), res.report.notes
    assert not list((tmp_path / "e").rglob("*.tflite"))


def test_every_whitelisted_op_is_rebuilt_equal(tmp_path):
    """A small Keras graph touching each whitelisted op (per-channel normalisation, strided / dilated / padded
    convolutions, depth multiplier, both pools, tensor add / sub / mul, mean, reshape, sigmoid), converted to
    fp32 TFLite: the rebuilt model gives the file's outputs (pre-activation logits, not flat: seeded weights)."""
    import keras

    from tledge.quant import selective

    keras.utils.set_random_seed(3)
    inp = keras.Input((20, 20, 3), name="pixels")
    x = keras.layers.Rescaling([0.5, 1.0, 2.0], [-1.0, 0.0, 1.0])(inp)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu6")(x)
    x = keras.layers.ZeroPadding2D(((1, 0), (2, 1)))(x)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, activation="relu")(x)
    a = keras.layers.MaxPooling2D(2, padding="same")(x)
    b = keras.layers.AveragePooling2D(2, strides=1, padding="same")(x)
    b = keras.layers.AveragePooling2D(2, padding="same")(b)
    y = keras.layers.Subtract()([keras.layers.Add()([a, b]), keras.layers.Multiply()([a, b])])
    y = keras.layers.Conv2D(8, 3, dilation_rate=2, padding="same")(y)
    y = keras.layers.GlobalAveragePooling2D(keepdims=True)(y)
    y = keras.layers.Reshape((8,))(y)
    out = keras.layers.Reshape((2, 2))(keras.layers.Dense(4, activation="sigmoid")(y))
    data = selective.tflite_fp32(keras.Model(inp, out))
    kinds = set(tb.op_kinds(tb.load(data)))
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "PAD", "MAX_POOL_2D", "AVERAGE_POOL_2D", "ADD", "SUB", "MUL", "MEAN",
            "FULLY_CONNECTED", "LOGISTIC", "RESHAPE"} <= kinds, kinds
    model = from_tflite.build(data)
    x = np.random.default_rng(0).uniform(0, 255, (6, 20, 20, 3)).astype(np.float32)
    ref = _run(data, x)
    assert np.ptp(ref) > 0.05 and np.max(np.abs(np.asarray(model(x)) - ref)) < 1e-5
    assert [type(layer).__name__ for layer in model.layers].count("Rescaling") == 1  # MUL + ADD merged


@pytest.mark.slow
@pytest.mark.real
def test_real_mobilenet_savedmodel_gets_the_keras_repair_on_both_formats(shared_assets, tmp_path):
    """The issue's MobileNet 0.25 (hymenoptera head) as a SavedModel: rebuilt as Keras 3 from its float TFLite
    graph, both int8 files get the Keras repair and ship (measured: plain 0.941, repaired-stem4 0.980 on the 153
    val photos, 0.983 / 0.982 on 1300 other photos; the ONNX file fell back to fp32 before)."""
    import sys
    from pathlib import Path

    from tledge.export.pipeline import ExportConfig, export

    sys.path.insert(0, str(Path(__file__).parent))
    from realdata import hymenoptera_mobilenet, savedmodel_of, skip_without

    skip_without(shared_assets, "hymenoptera_data", "keras_imagenet_weights")
    savedmodel_of(hymenoptera_mobilenet(shared_assets, tmp_path), tmp_path / "sm")
    data = shared_assets / "hymenoptera_data"
    cfg = ExportConfig(out=tmp_path / "e", formats=("tflite", "onnx"), int8=True, calib=str(data / "train"),
                       val=str(data / "val"), preprocess="tf")
    res = export(tmp_path / "sm", cfg)
    assert any("rebuilt as Keras 3 from its float TFLite graph" in n for n in res.report.notes), res.report.notes
    for kind in ("tflite", "onnx"):
        rows = {r["rung"]: r for r in res.report.fidelity if r["file"] == f"model_int8.{kind}"}
        if not rows:  # plain int8 passed: nothing to repair
            continue
        kept = [name for name, r in rows.items() if r.get("kept")]
        assert kept and kept[0].startswith("repaired"), rows  # the held bias pass gave way to the repair
        assert rows[kept[0]]["mean_abs"] < rows["plain"]["mean_abs"] / 2, rows
        assert set(rows[kept[0]]["latency_in_turns_ms"]) == {"kept", "plain", "fp32"}, rows  # timed in turns
        assert (tmp_path / "e" / f"model_int8.{kind}").is_file() and not (tmp_path / "e" / "rejected").exists()
    assert res.passed, [(r.file, r.failures) for r in res.report.results if not r.passed]


def test_mobilenetv3_and_densenet_ops_are_rebuilt_equal():
    """HARD_SWISH (MobileNetV3), CONCATENATION (DenseNet) and stand-alone RELU / RELU6 ops (after a
    concatenation nothing fuses them), behind a Normalization: the rebuilt model gives the file's outputs."""
    import keras

    from tledge.quant import selective

    keras.utils.set_random_seed(3)
    inp = keras.Input((16, 16, 3), name="pixels")
    x = keras.layers.Normalization(mean=[120.0, 110.0, 100.0], variance=[3000.0, 2500.0, 2000.0])(inp)
    x = keras.layers.Activation("hard_swish")(keras.layers.Conv2D(6, 3, strides=2, padding="same")(x))
    c = keras.layers.ReLU()(keras.layers.Concatenate()([x, keras.layers.Conv2D(4, 1)(x)]))
    m = keras.layers.MaxPooling2D(2)(c)
    m = keras.layers.ReLU(6.0)(keras.layers.Concatenate(axis=-1)([m, keras.layers.Conv2D(3, 1)(m)]))
    out = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(m))
    data = selective.tflite_fp32(keras.Model(inp, out))
    model = _rebuilt_equal(data, {"HARD_SWISH", "CONCATENATION", "RELU", "RELU6"},
                           np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype(np.float32))
    names = [type(layer).__name__ for layer in model.layers]
    assert names.count("Concatenate") == 2 and names.count("ReLU") == 2, names


def test_a_reshape_whose_batch_size_the_graph_computes_is_rebuilt_equal(tmp_path):
    """A SavedModel (dynamic batch) of a squeeze-excite block as tf_keras' EfficientNet writes it
    (Reshape((1, 1, C)) after a pooling): its TFLite file computes the target shape (SHAPE ->
    STRIDED_SLICE -> PACK -> RESHAPE). The rebuilt model gives the file's outputs."""
    tf = pytest.importorskip("tensorflow")
    tf_keras = pytest.importorskip("tf_keras")

    tf_keras.utils.set_random_seed(4)
    inp = tf_keras.Input((12, 12, 3))
    x = tf_keras.layers.Conv2D(6, 3, activation="swish")(inp)
    se = tf_keras.layers.Reshape((1, 1, 6))(tf_keras.layers.GlobalAveragePooling2D()(x))
    se = tf_keras.layers.Conv2D(6, 1, activation="sigmoid")(se)
    y = tf_keras.layers.GlobalAveragePooling2D()(tf_keras.layers.Multiply()([x, se]))
    tf_keras.Model(inp, tf_keras.layers.Dense(3)(y)).save(tmp_path / "sm")
    data = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "sm")).convert()
    _rebuilt_equal(data, {"SHAPE", "STRIDED_SLICE", "PACK", "RESHAPE"},
                   np.random.default_rng(0).uniform(0, 1, (4, 12, 12, 3)).astype(np.float32))


def _rebuilt_equal(data: bytes, ops: set, x: np.ndarray):
    """The file has `ops`; the model rebuilt from it gives the file's (non-flat) outputs on x."""
    kinds = tb.op_kinds(tb.load(data))
    assert ops <= set(kinds), kinds
    model = from_tflite.build(data)
    ref = _run(data, x)
    assert np.ptp(ref) > 0.05 and np.max(np.abs(np.asarray(model(x)) - ref)) < 1e-5
    return model


def test_a_computed_shape_is_never_used_as_a_tensor(tmp_path):
    """STRIDED_SLICE of an image tensor (not of a SHAPE) is outside the whitelist."""
    import keras

    from tledge.quant import selective

    inp = keras.Input((8, 8, 3), name="pixels")
    x = keras.layers.Conv2D(4, 3)(inp)
    x = keras.layers.Cropping2D(((1, 0), (0, 0)))(x)
    data = selective.tflite_fp32(keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(x))))
    assert "STRIDED_SLICE" in tb.op_kinds(tb.load(data))
    with pytest.raises(from_tflite.Unsupported, match="STRIDED_SLICE"):
        from_tflite.build(data)


def _channels_front(reorder):
    """fp32 TFLite of a tiny conv net behind `reorder`ed channels minus the caffe means: the ops the export's
    trace of a SavedModel with --preprocess caffe gives (one STRIDED_SLICE per channel, CONCATENATION, ADD;
    seen in the ResNet50 SavedModel's model_fp32.tflite of benchmarks/loader_sweep.py)."""
    import keras

    from tledge.quant import selective

    keras.utils.set_random_seed(5)
    inp = keras.Input((10, 10, 3), name="pixels")
    x = keras.layers.Lambda(lambda t: keras.ops.concatenate([t[..., c:c + 1] for c in reorder], -1))(inp)
    x = keras.layers.Rescaling(1.0, offset=[-103.939, -116.779, -123.68])(x)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    return selective.tflite_fp32(keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))))


def test_caffe_channel_flip_is_rebuilt_as_a_permutation_conv():
    """caffe's BGR flip is three one-channel STRIDED_SLICEs and a CONCATENATION in the file: one 1x1 Conv2D
    with a permutation kernel in the copy (exact), so a SavedModel exported with --preprocess caffe
    (ResNet50, VGG) gets the Keras-level repairs."""
    data = _channels_front((2, 1, 0))
    kinds = tb.op_kinds(tb.load(data))
    assert kinds.count("STRIDED_SLICE") == 3 and "CONCATENATION" in kinds, kinds
    model = from_tflite.build(data)
    flip = [layer for layer in model.layers if layer.name.endswith("_channels")]
    assert len(flip) == 1 and np.array_equal(flip[0].get_weights()[0][0, 0], np.eye(3, dtype=np.float32)[::-1])
    x = np.random.default_rng(0).uniform(0, 255, (4, 10, 10, 3)).astype(np.float32)
    ref = _run(data, x)
    assert np.ptp(ref) > 0.05 and np.max(np.abs(np.asarray(model(x)) - ref)) < 1e-6 * np.abs(ref).max()  # float sums


def test_channel_slices_that_are_not_a_permutation_give_none():
    data = _channels_front((2, 2, 0))
    assert "STRIDED_SLICE" in tb.op_kinds(tb.load(data))
    with pytest.raises(from_tflite.Unsupported, match="not a permutation"):
        from_tflite.build(data)
