"""A model that kept Keras 3 random augmentation layers whose seed is written at inference (RandomSaturation,
RandomHue, ...) in front of its Rescaling. The graph did not freeze: the export said "does not bake its
preprocessing" (its advice, --preprocess tf, normalised twice), then every converter failed, exit 1. The layers
do nothing at inference and are now taken out; the export reads the Rescaling and passes parity."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("keras")


@pytest.fixture(scope="module")
def augmented(tiny_model, tmp_path_factory):
    import keras

    trained = tiny_model["model"]
    inp = keras.Input((48, 48, 3), name="pixels")
    x = keras.layers.RandomFlip("horizontal")(inp)
    x = keras.layers.RandomSaturation(0.2, value_range=(0, 255))(x)
    x = keras.Sequential([keras.layers.RandomHue(0.1, value_range=(0, 255))], name="augment")(x)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(x)  # the tiny model's own preprocessing, as a Rescaling
    for layer in trained.layers[2:]:  # its trained layers after Input and Preprocess
        x = layer(x)
    model = keras.Model(inp, x)
    path = tmp_path_factory.mktemp("augmented") / "model.keras"
    model.save(path)
    return path, model


def test_the_augmentation_is_taken_out(augmented):
    from tledge.export.augment import strip

    path, model = augmented
    stripped, note = strip(model)
    assert "RandomHue" in note and "RandomSaturation" in note and "RandomFlip" not in note, note
    kinds = {type(layer).__name__ for layer in stripped.layers}
    assert "RandomFlip" in kinds and "RandomSaturation" not in kinds, kinds  # only the seed writers go
    x = np.random.default_rng(1).uniform(0, 255, (4, 48, 48, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(stripped(x, training=False)), np.asarray(model(x, training=False)),
                               atol=1e-6)


def test_the_export_reads_the_rescaling_behind_them_and_passes(augmented, shapes_dataset):
    from tledge.export.pipeline import ExportConfig, export

    path, _ = augmented
    result = export(path, ExportConfig(out=path.parent / "export", val=str(shapes_dataset / "val")))
    assert result.passed and result.contract.norm.value == "tf", result.report
    assert {f.name for f in result.files} >= {"model_fp32.tflite", "model_fp32.onnx"}


def test_a_model_without_such_layers_is_left_as_it_is(tiny_model):
    from tledge.export.augment import strip

    model = tiny_model["model"]
    assert strip(model) == (model, None)
