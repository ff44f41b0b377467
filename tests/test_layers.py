"""The baked preprocessing layer equals keras.applications preprocess_input for every mode."""
import numpy as np
import pytest

keras = pytest.importorskip("keras")

from tledge.contract import Contract  # noqa: E402
from tledge.layers import CUSTOM_OBJECTS, Preprocess  # noqa: E402


@pytest.fixture(scope="module")
def pixels():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 16, 16, 3)).astype("float32")
    x[0, 0, 0] = [0, 0, 0]
    x[0, 0, 1] = [255, 255, 255]
    return x


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch"])
def test_layer_matches_keras_preprocess_input(mode, pixels):
    from keras.applications import imagenet_utils

    expected = imagenet_utils.preprocess_input(pixels.copy(), mode=mode)
    got = np.asarray(Preprocess(mode)(pixels))
    assert np.max(np.abs(got - expected)) <= 1e-5


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch", "scale", "raw"])
def test_layer_matches_the_numpy_reference(mode, pixels):
    c = Contract(16, 16, norm=mode, baked=False)
    ref = np.stack([c.normalize(p) for p in pixels.astype(np.uint8)])
    assert np.max(np.abs(np.asarray(Preprocess(mode)(pixels)) - ref)) <= 1e-5


def test_custom_and_grayscale_modes(pixels):
    got = np.asarray(Preprocess("custom", mean=[10, 20, 30], std=[2, 4, 8])(pixels))
    np.testing.assert_allclose(got, (pixels - [10, 20, 30]) / [2, 4, 8], rtol=1e-6, atol=1e-5)
    gray = pixels[..., :1]
    got = np.asarray(Preprocess("torch", channels=1)(gray))
    c = Contract(16, 16, channels=1, color="gray", norm="torch", baked=False)
    np.testing.assert_allclose(got, np.stack([c.normalize(g) for g in gray]), atol=1e-5)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_models_with_the_layer_save_and_load_again(tmp_path, pixels, suffix):
    inp = keras.Input((16, 16, 3))
    out = keras.layers.Dense(2)(keras.layers.Flatten()(Preprocess("caffe")(inp)))
    model = keras.Model(inp, out)
    path = tmp_path / f"m{suffix}"
    model.save(path)
    again = keras.saving.load_model(path, custom_objects=CUSTOM_OBJECTS, safe_mode=True)
    np.testing.assert_allclose(np.asarray(again(pixels)), np.asarray(model(pixels)), atol=1e-5)
    assert any(isinstance(layer, Preprocess) and layer.mode == "caffe" for layer in again.layers)
