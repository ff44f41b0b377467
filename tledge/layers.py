"""Keras layers that bake a contract's preprocessing into a model graph.

`Preprocess` reproduces keras.applications `preprocess_input` for the caffe / tf / torch modes
(plus scale, raw and custom mean/std) as one multiply-add (and a channel flip for caffe), so the
saved model takes raw pixel values. Registered for `.keras` and `.h5` loading.
"""
from __future__ import annotations

from tledge._deps import require

keras = require("keras", purpose="the preprocessing layer")


@keras.saving.register_keras_serializable(package="tledge")
class Preprocess(keras.layers.Layer):
    """Raw pixels (0..255, float or integer) -> the backbone's normalised input."""

    def __init__(self, mode: str = "tf", mean=None, std=None, channels: int = 3, **kwargs):
        super().__init__(**kwargs)
        from tledge.contract import ColorOrder, Contract, Norm

        self.mode = Norm(mode).value
        self.channels = int(channels)
        self.mean = None if mean is None else [float(v) for v in mean]
        self.std = None if std is None else [float(v) for v in std]
        c = Contract(height=1, width=1, channels=self.channels,
                     color=ColorOrder.GRAY if self.channels == 1 else ColorOrder.RGB,
                     norm=self.mode, baked=False, mean=self.mean, std=self.std)
        m, s = c.mean_std()
        self._flip = self.mode == "caffe" and self.channels == 3
        self._scale = [float(1.0 / v) for v in s]
        self._offset = [float(-mv / sv) for mv, sv in zip(m, s)]

    def call(self, x):
        ops = keras.ops
        x = ops.cast(x, "float32")
        if self._flip:  # RGB -> BGR as slices + concat: TFLite's int8 REVERSE_V2 corrupts values
            x = ops.concatenate([x[..., 2:3], x[..., 1:2], x[..., 0:1]], axis=-1)
        if self.mode == "raw":
            return x
        return x * ops.convert_to_tensor(self._scale, "float32") + ops.convert_to_tensor(self._offset, "float32")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        cfg = super().get_config()
        cfg.update(mode=self.mode, mean=self.mean, std=self.std, channels=self.channels)
        return cfg


CUSTOM_OBJECTS = {"Preprocess": Preprocess, "tledge>Preprocess": Preprocess}


def with_preprocessing(model, contract, name: str = "tledge_model"):
    """Wrap a Keras 3 model that expects normalised input so it takes raw pixels (float32 0..255)."""
    inp = keras.Input(shape=(contract.height, contract.width, contract.channels), dtype="float32", name="pixels")
    x = Preprocess(contract.norm.value, contract.mean, contract.std, contract.channels, name="preprocess")(inp)
    return keras.Model(inp, model(x), name=name)
