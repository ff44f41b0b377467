"""Models built from ../shared/assets for acceptance tests (skipped where the assets are absent)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

WEIGHTS = "keras_imagenet_weights/mobilenet_2_5_224_tf_no_top.h5"


def hymenoptera_mobilenet(assets: Path, out: Path, size: int = 224, epochs: int = 8, seed: int = 0) -> Path:
    """The issue's reference model: MobileNet v1 alpha 0.25 with the official ImageNet weights,
    frozen, Dropout 0.2 + Dense(2, softmax) trained on hymenoptera_data/train (Adam 1e-3), saved as
    .h5 WITHOUT its preprocessing (inputs x/127.5 - 1), as Keras 2 era users have them."""
    import keras

    from tledge.contract import Contract
    from tledge.images import labelled_images

    path = out / f"hymenoptera_mobilenet_{size}.h5"
    if path.is_file():
        return path
    keras.utils.set_random_seed(seed)
    backbone = keras.applications.MobileNet(input_shape=(size, size, 3), alpha=0.25, include_top=False,
                                            pooling="avg", weights=str(assets / WEIGHTS))
    backbone.trainable = False
    inp = keras.Input((size, size, 3))
    x = keras.layers.Dropout(0.2)(backbone(inp, training=False))
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(x))
    c = Contract(size, size, norm="tf", baked=False)
    files, y, _ = labelled_images(assets / "hymenoptera_data" / "train")
    x_train = np.stack([c.prepare(f) for f in files])
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y, epochs=epochs, batch_size=32, verbose=0)
    out.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def skip_without(assets: Path, *parts: str) -> None:
    """pytest.skip unless every `parts` folder of the shared assets is there."""
    import pytest

    for part in parts:
        if not (assets / part).is_dir():
            pytest.skip(f"shared asset not available: {assets / part}")


def savedmodel_of(h5: Path, out: Path) -> Path:
    """The Keras model `h5` exported as a TensorFlow SavedModel (no Keras model behind it: the export rebuilds
    one from its float TFLite graph, tledge.quant.from_tflite, or runs the graph-level rungs)."""
    if (out / "saved_model.pb").is_file():
        return out
    import keras

    from tledge.layers import CUSTOM_OBJECTS

    model = keras.saving.load_model(h5, custom_objects=dict(CUSTOM_OBJECTS), compile=False)
    model.export(str(out), verbose=False)
    return out
