"""The int8 weight repair on layers it does not model (a bug hunt on architectures the loop was not developed on):
a SeparableConv2D ending in swish had its activation simulated on its *input* (8 channels for 16), and every Keras
repair rung failed "operands could not be broadcast together"."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")


def test_a_separable_conv_with_swish_inside_repairs():
    import keras

    from tledge.quant import repair

    keras.utils.set_random_seed(0)
    L = keras.layers
    i = keras.Input((24, 24, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="relu")(L.Rescaling(1 / 127.5, offset=-1)(i))
    x = L.SeparableConv2D(16, 3, padding="same", activation="swish")(x)
    x = L.Conv2D(16, 3, padding="same", activation="relu")(x)
    model = keras.Model(i, L.Dense(2, activation="softmax")(L.GlobalAveragePooling2D()(x)))
    pixels = np.random.default_rng(0).uniform(0, 255, (40, 24, 24, 3)).astype(np.float32)
    fixed, _ = repair.apply(model, pixels)
    np.testing.assert_allclose(np.asarray(fixed(pixels[:4])), np.asarray(model(pixels[:4])), atol=0.2)
