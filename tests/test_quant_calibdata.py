"""Calibration images checked at every int8 technique's entry (tledge.quant.calibdata). Before: NaN pixels gave a
repaired model with NaN weights ("27 BN folded (max abs nan)") and garbage biases silently; 0 images or None
failed deep inside (concatenate, IndexError, KeyError) or calibrated a TFLite model on nothing."""
import numpy as np
import pytest

from conftest import REPO

from tledge.errors import DataError, ExportError
from tledge.quant.calibdata import checked

TINY = REPO / "tests" / "assets" / "tiny"


def _nan(n=4, size=48, value=np.nan):
    x = np.random.default_rng(0).uniform(0, 255, (n, size, size, 3)).astype(np.float32)
    x[2, 5, 5, 0] = value
    return x


@pytest.mark.parametrize("calib,match", [
    (None, "no calibration images"),
    (np.zeros((0, 8, 8, 3), np.float32), "0 calibration images"),
    (np.zeros((8, 8, 3), np.float32), r"shape \(8, 8, 3\)"),
    (np.array(["a", "b"]), "dtype"),
    (_nan(), "1 of 4 images have NaN or infinite values \\(first: image 2\\)"),
    (_nan(value=np.inf), "NaN or infinite"),
])
def test_unusable_calibration_is_one_line(calib, match):
    with pytest.raises(DataError, match=match) as err:
        checked(calib)
    assert "\n" not in str(err.value)


def test_usable_calibration_is_returned_as_it_is():
    x = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    assert checked(x) is x and checked(list(x)).shape == x.shape


@pytest.mark.parametrize("technique", ["tflite_bias", "tflite_rounding"])
@pytest.mark.parametrize("calib", [_nan(), _nan()[:0], None])
def test_tflite_graph_techniques_refuse_it(technique, calib):
    pytest.importorskip("ai_edge_litert")
    import importlib

    module = importlib.import_module(f"tledge.quant.{technique}")
    with pytest.raises(DataError):
        module.correct((TINY / "model_int8.tflite").read_bytes(), (TINY / "model_fp32.tflite").read_bytes(), calib)


@pytest.mark.parametrize("calib", [_nan(), _nan()[:0]])
def test_onnx_bias_refuses_it_before_quantising(calib, tmp_path):
    pytest.importorskip("onnxruntime")
    from tledge.quant import onnx_bias

    def quantize(*_):
        raise AssertionError("quantised on unusable calibration images")

    with pytest.raises(DataError):
        onnx_bias.correct(TINY / "model_fp32.onnx", tmp_path / "bc.onnx", calib, quantize)
    assert not (tmp_path / "bc.onnx").exists()


@pytest.fixture(scope="module")
def small_model():
    keras = pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3)(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(keras.layers.Rescaling(1.0)(x))
    out = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inp, out)


@pytest.mark.parametrize("calib", [_nan(size=16), _nan(size=16)[:0], None])
def test_keras_techniques_refuse_it(small_model, calib):
    from tledge.quant import explain, repair, selective

    with pytest.raises(DataError):
        repair.apply(small_model, calib)
    with pytest.raises(DataError):
        selective.calibrate_tflite(small_model, calib)
    with pytest.raises(DataError):
        explain.activation_sensitivity(small_model, calib)
    with pytest.raises(DataError):
        explain.tflite_layer_errors(small_model, calib)


def test_onnx_layer_errors_refuses_it():
    pytest.importorskip("onnxruntime")
    from tledge.quant import explain

    f, q = (TINY / "model_fp32.onnx").read_bytes(), (TINY / "model_int8.onnx").read_bytes()
    with pytest.raises(DataError):
        explain.onnx_layer_errors(f, q, _nan())


def test_a_model_with_nan_outputs_is_not_repaired(small_model):
    """The rebuild + BN fold check failed only on a difference above tolerance: a NaN difference passed it, and a
    model with a NaN weight came back "repaired" ("BN folded (max abs nan)")."""
    import keras

    from tledge.quant import repair

    m = keras.models.clone_model(small_model)
    dense = m.layers[-1]
    w = dense.get_weights()
    w[0][0, 0] = np.nan
    dense.set_weights(w)
    calib = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype(np.float32)
    with pytest.raises(ExportError, match="differs from the original by nan"):
        repair.apply(m, calib)
