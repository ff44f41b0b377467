"""The int8 weight repair (tledge.quant.repair) on tiny trained models with EfficientNet's and ResNet's
structures (issue 11's zoo rows hym-effb0 / hym-resnet50): EfficientNet's own Rescaling + Normalization,
conv-BN-swish, squeeze-excite (GAP, Reshape, swish / sigmoid 1x1 convs, Multiply) and an Add residual;
ResNet's caffe BGR preprocessing baked as a 1x1 conv, ZeroPadding, MaxPooling, conv-BN(-ReLU) with
biases, Add; MobileNetV3's hard-swish and hard-sigmoid written with bare keras ops, as keras.applications
writes them (before the fix the rebuild called get_weights on them: every MobileNetV3 int8 export crashed). The repair must fold every BN, keep the function, put every kernel on the int8 grid and
keep the confident model's top-1. (A Normalization clone given its weights computed with the defaults
until the rebuild called finalize_state: the EfficientNetB0 repair collapsed to chance, issue 11.)"""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

from conftest import train_tiny  # noqa: E402
from tledge.contract import Contract  # noqa: E402
from tledge.layers import preprocess_layer  # noqa: E402
from tledge.quant import repair  # noqa: E402

SIZE = 48
L = keras.layers


def _effnet_like():
    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 3), name="pixels")
    x = preprocess_layer("raw")(inp)
    x = L.Rescaling(1.0 / 255.0)(x)
    norm = L.Normalization()  # statistics in its weights, not its config, as EfficientNet's file has them
    x = norm(x)
    norm.set_weights([np.asarray([0.485, 0.456, 0.406], np.float32), np.asarray([0.052, 0.050, 0.051], np.float32),
                      np.int64(0)])
    norm.finalize_state()  # what loading a saved model does
    x = L.ZeroPadding2D(((0, 1), (0, 1)))(x)
    x = L.Activation("swish")(L.BatchNormalization()(L.Conv2D(16, 3, strides=2, use_bias=False)(x)))
    y = L.Activation("swish")(L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same", use_bias=False)(x)))
    se = L.Reshape((1, 1, 16))(L.GlobalAveragePooling2D()(y))
    se = L.Conv2D(4, 1, activation="swish")(se)
    se = L.Conv2D(16, 1, activation="sigmoid")(se)
    y = L.Multiply()([y, se])
    y = L.BatchNormalization()(L.Conv2D(16, 1, use_bias=False)(y))
    x = L.Add()([L.Dropout(0.2, noise_shape=(None, 1, 1, 1))(y), x])
    x = L.Activation("swish")(L.BatchNormalization()(L.Conv2D(24, 1, strides=2, use_bias=False)(x)))
    out = L.Dense(3, activation="softmax")(L.GlobalAveragePooling2D()(x))
    return keras.Model(inp, out, name="effnet_like")


def _resnet_like():
    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 3), name="pixels")
    x = preprocess_layer("caffe")(inp)  # a frozen 1x1 conv: RGB -> BGR minus the ImageNet means
    x = L.ZeroPadding2D(3)(x)
    x = L.Activation("relu")(L.BatchNormalization()(L.Conv2D(16, 7, strides=2)(x)))
    x = L.MaxPooling2D(3, strides=2)(L.ZeroPadding2D(1)(x))
    y = L.Activation("relu")(L.BatchNormalization()(L.Conv2D(8, 1)(x)))
    y = L.Activation("relu")(L.BatchNormalization()(L.Conv2D(8, 3, padding="same")(y)))
    y = L.BatchNormalization()(L.Conv2D(32, 1)(y))
    shortcut = L.BatchNormalization()(L.Conv2D(32, 1)(x))
    x = L.Activation("relu")(L.Add()([shortcut, y]))
    out = L.Dense(3, activation="softmax")(L.GlobalAveragePooling2D()(x))
    return keras.Model(inp, out, name="resnet_like")


def _hard_swish(x):
    """keras.applications.MobileNetV3's own form: bare keras ops (`x + 3.0`, `* (1 / 6)`), not layers,
    so the graph has nodes that `model.layers` does not list and that have no weights."""
    return L.Multiply()([x, L.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)])


def _mnv3_like():
    def _bn():  # statistics that settle within the tiny training run
        return L.BatchNormalization(momentum=0.9)

    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 3), name="pixels")
    x = L.Rescaling(1.0 / 127.5, offset=-1.0)(preprocess_layer("raw")(inp))
    x = _hard_swish(_bn()(L.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(x)))
    y = L.ReLU()(_bn()(L.DepthwiseConv2D(3, padding="same", use_bias=False)(x)))
    se = L.GlobalAveragePooling2D(keepdims=True)(y)
    se = L.Conv2D(8, 1, activation="relu")(se)
    se = L.ReLU(6.0)(L.Conv2D(16, 1)(se) + 3.0) * (1.0 / 6.0)  # hard sigmoid, bare ops
    y = L.Multiply()([y, se])
    x = L.Add()([_bn()(L.Conv2D(16, 1, use_bias=False)(y)), x])
    x = _hard_swish(_bn()(L.Conv2D(24, 1, strides=2, use_bias=False)(x)))
    out = L.Dense(3, activation="softmax")(L.GlobalAveragePooling2D()(x))
    return keras.Model(inp, out, name="mnv3_like")


def _pixels(folder):
    from tledge.images import labelled_images

    c = Contract(SIZE, SIZE, norm="raw", baked=True)
    files, y, _ = labelled_images(folder)
    return np.stack([c.prepare(f) for f in files]).astype(np.float32), np.asarray(y)


@pytest.fixture(scope="module", params=["effnet", "resnet", "mnv3"])
def trained(request, shapes_dataset):
    model = {"effnet": _effnet_like, "resnet": _resnet_like, "mnv3": _mnv3_like}[request.param]()
    contract = Contract(SIZE, SIZE, norm="raw", baked=True)
    train_tiny(model, shapes_dataset / "train", contract, epochs=40)
    return model, _pixels(shapes_dataset / "train")[0], _pixels(shapes_dataset / "val")[0]


def test_repair_keeps_the_function_and_puts_every_kernel_on_the_grid(trained):
    model, calib, val = trained
    ref = repair.predict(model, val)
    assert np.median(ref.max(axis=1)) > 0.8  # a confident model: agreement below means something
    fixed, log = repair.apply(model, calib)
    bns = sum(isinstance(layer, L.BatchNormalization) for layer in model.layers)
    assert log.folded_bn == bns and log.fold_max_abs < 1e-4
    kernels = [layer for layer in fixed.layers if repair.linear_kind(layer)]
    assert len(log.layers) == len(kernels) >= 5
    for layer in kernels:
        g = repair.to_groups(type(layer).__name__, layer.get_weights()[0].astype(np.float64))
        scale = repair.grid_scale(g)
        q = g / np.where(scale > 0, scale, 1)
        assert np.abs(q - np.round(q)).max() < 1e-3, layer.name
    out = repair.predict(fixed, val)  # int8 weights, float activations
    assert np.mean(out.argmax(1) == ref.argmax(1)) >= 0.95


def test_repair_refuses_a_model_that_does_not_survive_the_rebuild(shapes_dataset):
    """An in-memory Normalization given weights without finalize_state computes with its build-time
    statistics; the rebuilt copy computes with the weights: the repair must say so, not return it."""
    from tledge.errors import ExportError

    model = _effnet_like()
    norm = next(layer for layer in model.layers if isinstance(layer, L.Normalization))
    norm.set_weights([np.zeros(3, np.float32), np.full(3, 4.0, np.float32), np.int64(0)])  # not finalized
    calib = _pixels(shapes_dataset / "train")[0][:16]
    with pytest.raises(ExportError, match="does not survive the rebuild"):
        repair.apply(model, calib)
