"""A model's own normalisation found wherever users put it (a bug hunt on model shapes): a Keras guide's Resizing
before the Rescaling, and any Rescaling inside a SavedModel (no layers to read), were "this model does not bake its
preprocessing"; following that advice (--preprocess tf) normalised twice, and parity said PASSED."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("tensorflow")

from tledge.cli import main  # noqa: E402
from tledge.export import loader  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import keras
    import numpy as np

    L, d = keras.layers, tmp_path_factory.mktemp("baked")

    def head(x):
        return L.Dense(2, activation="softmax")(L.GlobalAveragePooling2D()(L.Conv2D(4, 3, activation="relu")(x)))

    i = keras.Input((40, 48, 3))
    keras.Model(i, head(L.Rescaling(1 / 127.5, offset=-1)(L.Resizing(20, 24)(i)))).save(d / "resized.keras")
    i = keras.Input((24, 24, 3))
    keras.Model(i, head(L.Rescaling(1 / 127.5, offset=-1)(i))).export(str(d / "tf_sm"), verbose=False)
    i = keras.Input((24, 24, 3))
    keras.Model(i, head(L.Rescaling(1 / 255.0)(i))).export(str(d / "scale_sm"), verbose=False)
    i = keras.Input((24, 24, 3))
    keras.Model(i, head(L.Rescaling(0.01, offset=-0.3)(i))).export(str(d / "own_sm"), verbose=False)
    i = keras.Input((24, 24, 3))
    norm = L.Normalization(mean=np.array([0.4, 0.5, 0.6]), variance=np.array([0.04, 0.05, 0.06]))
    keras.Model(i, head(norm(i))).export(str(d / "normalization_sm"), verbose=False)
    i = keras.Input((24, 24, 3))
    keras.Model(i, head(i)).export(str(d / "plain_sm"), verbose=False)
    i = keras.Input((24, 24, 3))  # Keras 3 augmentation: its seed variable is assigned in the exported function
    keras.Model(i, head(L.Rescaling(1 / 255.0)(L.RandomFlip()(i)))).export(str(d / "augment_sm"), verbose=False)
    i = keras.Input((24, 24, 3))  # EfficientNet's x / 255 then its Normalization: the model normalises raw pixels
    norm = L.Normalization(mean=np.array([0.485, 0.456, 0.406]), variance=np.array([0.229, 0.224, 0.225]) ** 2)
    keras.Model(i, head(norm(L.Rescaling(1 / 255.0)(i)))).export(str(d / "effnet_like_sm"), verbose=False)
    for family in ("densenet", "resnet50"):  # Keras 3's preprocess_input as ops: torch (/255, BiasAdd), caffe
        i = keras.Input((24, 24, 3))
        pre = getattr(keras.applications, family).preprocess_input
        keras.Model(i, head(pre(i))).save(d / f"{family}_pi.keras")
    i = keras.Input((28, 30, 3))  # a crop before the Rescaling: the graph walk stopped at its StridedSlice
    keras.Model(i, head(L.Rescaling(1 / 127.5, offset=-1)(L.CenterCrop(24, 24)(i)))).export(str(d / "crop_sm"),
                                                                                           verbose=False)
    i = keras.Input((24, 24, 3))  # keras.applications' caffe preprocess_input: RGB -> BGR, ImageNet means off
    bgr = L.Lambda(lambda t: t[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32))(i)
    keras.Model(i, head(bgr)).export(str(d / "caffe_sm"), verbose=False)
    import tensorflow as tf

    m = tf.Module()  # TF-Hub style: 0..1 input, x * 2 - 1 inside (a map that is no named mode of 0..255 pixels)
    m.w = tf.Variable(np.ones((3, 2), np.float32))
    m.f = tf.function(lambda x: {"p": tf.nn.softmax(tf.reduce_mean(x * 2.0 - 1.0, [1, 2]) @ m.w)},
                      input_signature=[tf.TensorSpec([None, 24, 24, 3], tf.float32)])
    tf.saved_model.save(m, str(d / "hub_sm"), signatures={"serving_default": m.f})
    return d


@pytest.mark.parametrize("name, mode", [("resized.keras", "tf"), ("tf_sm", "tf"), ("scale_sm", "scale"),
                                        ("caffe_sm", "caffe"), ("own_sm", None), ("hub_sm", None),
                                        ("normalization_sm", None), ("plain_sm", None), ("crop_sm", "tf"),
                                        ("effnet_like_sm", None), ("densenet_pi.keras", "scale"),
                                        ("resnet50_pi.keras", None)])
def test_the_models_own_normalisation_is_found(models, name, mode):
    lm = loader.load_model(models / name)
    assert lm.baked_mode == mode
    # a Normalization's variance sits behind Maximum(Sqrt(variance), epsilon), Keras 3's caffe mode slices each
    # channel: read as "does not bake", and the suggested --preprocess normalised twice (0.45 agreement, parity
    # PASSED, a helper hunt); a named map read before such a stop stands (Keras 3's densenet: /255, then a BiasAdd;
    # EfficientNet's x / 255 then its untrained Normalization: scale), an unnamed one is unread
    assert (lm.unread_preprocessing is not None) == (name in ("normalization_sm", "resnet50_pi.keras",
                                                              "effnet_like_sm"))


def test_input_arithmetic_it_cannot_read_is_said_so(models, tmp_path, capsys):
    images = Path(__file__).resolve().parent / "assets" / "tiny" / "images"
    assert main(["export", str(models / "normalization_sm"), "--out", str(tmp_path / "e"), "--val", str(images)]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot read normalization_sm's preprocessing" in err and "does not bake" not in err, err


def test_a_savedmodel_whose_map_is_no_named_mode_takes_the_users_preprocess(models):
    """A TF-Hub style 0..1 model with `x * 2 - 1` inside was read as `raw` (it normalises itself): --preprocess scale,
    the right flag, was refused, and without it the export fed it 0..255."""
    from tledge.export.resolve import resolve_contract

    lm = loader.load_model(models / "hub_sm")
    contract, add = resolve_contract(lm, preprocess="scale", input_size=None, labels=("a", "b"))
    assert (contract.norm.value, add) == ("scale", "scale")


def test_a_second_normalisation_on_a_savedmodel_is_refused(models, tmp_path, capsys):
    images = Path(__file__).resolve().parent / "assets" / "tiny" / "images"  # parity's, checked before loading
    rc = main(["export", str(models / "tf_sm"), "--preprocess", "scale", "--out", str(tmp_path / "e"), "--val",
               str(images)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "would normalise twice" in err, err
    assert not (tmp_path / "e").exists()


def test_a_channels_first_model_is_refused_as_such(tmp_path):
    """It was read as 3 high x 24 wide x 32 channels: "contract channels must be 1 or 3, got 32"."""
    import keras

    i = keras.Input((3, 24, 32))
    x = keras.layers.Conv2D(4, 3, data_format="channels_first")(i)
    keras.Model(i, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(x))).save(tmp_path / "cf.keras")
    with pytest.raises(loader.ModelLoadError, match=r"channels-first images \(3, 24, 32\)"):
        loader.load_model(tmp_path / "cf.keras")


def test_augmentation_layers_are_named_not_pruning(models):
    """A model.export() with RandomFlip inside was blamed on tfmot's prune_low_magnitude (helper hunt). No converter
    freezes it, so it is refused when loaded (exit 2); it was told to pass --preprocess raw, which then ended in
    exit 1 with TensorFlow's words (the outside audit of 2026-12-08)."""
    with pytest.raises(loader.ModelLoadError) as err:
        loader.load_model(models / "augment_sm")
    text = str(err.value)
    assert "Keras augmentation layers" in text and "prune" not in text and "--preprocess" not in text, text
