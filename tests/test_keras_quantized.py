"""A model Keras's `model.quantize("int8")` made (helper 149): export ran every repair rung, each failing "a tledge bug:
please report it", and both TFLite conversions failed on its int8 kernels. It is refused in one line."""
from __future__ import annotations

import warnings


def test_a_model_keras_quantised_is_refused_at_load(tmp_path, capsys):
    import keras

    from tledge.cli import main

    m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.Flatten(),
                          keras.layers.Dense(2, activation="softmax")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ("Layer Conv2D does not have a `quantize` method implemented")
        m.quantize("int8")
    m.save(tmp_path / "q8.keras")
    images = tmp_path / "images"
    images.mkdir()
    import cv2
    import numpy as np

    for i in range(4):
        cv2.imwrite(str(images / f"{i}.png"), np.full((8, 8, 3), 40 * i, np.uint8))
    code = main(["export", str(tmp_path / "q8.keras"), "--formats", "tflite", "--preprocess", "tf",
                 "--calib", str(images), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "already quantised (int8, by Keras's model.quantize())" in err, err
    assert "a tledge bug" not in err and not (tmp_path / "out").exists()
