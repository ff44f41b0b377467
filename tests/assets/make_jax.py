"""Regenerate tests/assets/jax/: two tiny Keras 3 models exported by the JAX backend (`model.export()`): a
SavedModel whose whole computation is one XlaCallModule op (StableHLO), which tledge cannot read the output's
activation or the preprocessing from.

    KERAS_BACKEND=jax python -m tests.assets.make_jax    # with jax, tensorflow and keras 3 installed

sigmoid_sm: pixels [1, 8, 8, 3] -> Rescaling(1/255) -> Flatten -> Dense(1, sigmoid), weights set so the output
varies from image to image within 0..1; logit_sm: the same without the sigmoid, its output beyond 0..1 on bright
images. About 20 KB each.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

OUT = Path(__file__).resolve().parent / "jax"


def main() -> int:
    if os.environ.get("KERAS_BACKEND") != "jax":
        raise SystemExit("set KERAS_BACKEND=jax")
    import keras
    import numpy as np

    for name, activation in (("sigmoid_sm", "sigmoid"), ("logit_sm", None)):
        inp = keras.Input((8, 8, 3), batch_size=1)
        x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255.0)(inp))
        dense = keras.layers.Dense(1, activation=activation)
        model = keras.Model(inp, dense(x))
        w = np.linspace(-1, 1, 192, dtype=np.float32).reshape(192, 1) * (0.05 if activation else 0.02)
        w[::3] += 0.02  # the red channel counts more: bright red images go past 1 as a logit
        dense.set_weights([w, np.zeros(1, np.float32)])
        if (OUT / name).exists():
            shutil.rmtree(OUT / name)
        model.export(str(OUT / name), format="tf_saved_model", verbose=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
