"""--grayscale: the 1-channel model folded from RGB weights computes what the RGB model computes on the
replicated gray image (exactly for tf-mode backbones; in the interior for per-channel means)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tledge.backbones import contract_for
from tledge.contract import Contract
from tledge.errors import TledgeError
from tledge.train import model as tm
from tledge.train.grayscale import fold_to_gray

SIZE = 32


def calibrated(bb, channels=3):
    """Give batch norm the statistics of random inputs, so activations are O(1) instead of ~1e-17."""
    import keras

    bns = [l for l in bb.layers if isinstance(l, keras.layers.BatchNormalization)]
    for layer in bns:
        layer.momentum = 0.0
    bb(np.random.default_rng(0).uniform(-1, 1, (16, SIZE, SIZE, channels)).astype("float32"), training=True)
    return bb


def gray_images(n=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 1)).astype("float32")


def folded(name, alpha=None, prepare=lambda bb: bb):
    import keras

    from tledge import backbones

    keras.utils.set_random_seed(0)
    c3, c1 = contract_for(name, SIZE), contract_for(name, SIZE, grayscale=True)
    bb3 = prepare(backbones.build(name, (SIZE, SIZE, 3), weights=None, alpha=alpha))
    bb1, report = fold_to_gray(bb3, tm._preprocess(c3, "p3"), tm._preprocess(c1, "p1"))
    return (c3, bb3), (c1, bb1), report


def layer_out(contract, bb, layer, x):
    import keras

    sub = keras.Model(bb.input, bb.get_layer(layer).output)
    return np.asarray(sub(tm._preprocess(contract, "p")(x)))


def test_tf_mode_fold_is_exact_everywhere():
    (c3, bb3), (c1, bb1), rep = folded("mobilenet", 0.25, calibrated)
    assert rep.first_conv == "conv1" and rep.offset_into == "batchnorm conv1_bn" and rep.exact_at_borders
    assert bb1.input.shape[-1] == 1 and bb1.get_layer("conv1").kernel.shape == (3, 3, 1, 8)
    g = gray_images()
    rgb = np.repeat(g, 3, axis=-1)
    for layer in ("conv1_bn", "conv_pw_1_relu", "conv_pw_3_relu"):
        a, b = layer_out(c3, bb3, layer, rgb), layer_out(c1, bb1, layer, g)
        assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max(), layer  # borders included
    m3, m1 = tm.assemble(bb3, c3, 3, 0.2), tm.assemble(bb1, c1, 3, 0.2)
    m1.dense.set_weights(m3.dense.get_weights())
    p3, p1 = np.asarray(m3.model(rgb)), np.asarray(m1.model(g))
    assert np.abs(p3 - p1).max() < 1e-3 and (p3.argmax(1) == p1.argmax(1)).all()
    # a colour image is not the same thing: the check above can fail
    colour = np.random.default_rng(5).integers(0, 256, (6, SIZE, SIZE, 3)).astype("float32")
    assert np.abs(layer_out(c3, bb3, "conv1_bn", colour) - layer_out(c1, bb1, "conv1_bn", g)).max() > 0.1


def test_caffe_fold_exact_inside_and_reports_the_border():
    def random_bias(bb):
        conv = bb.get_layer("block1_conv1")
        k, b = conv.get_weights()
        conv.set_weights([k, np.random.default_rng(1).normal(0, 0.5, b.shape).astype("float32")])
        return bb

    (c3, bb3), (c1, bb1), rep = folded("vgg16", prepare=random_bias)
    assert c3.norm.value == "caffe" and rep.offset_into == "bias" and not rep.exact_at_borders
    g = gray_images()
    a = layer_out(c3, bb3, "block1_conv1", np.repeat(g, 3, axis=-1))
    b = layer_out(c1, bb1, "block1_conv1", g)
    scale = np.abs(a).max()
    assert np.abs(a - b)[:, 1:-1, 1:-1].max() <= 1e-5 * scale  # 3x3 'same': only the outer ring touches padding
    assert np.abs(a - b).max() > 1e-3 * scale  # zero padding is a different colour per channel in caffe mode


def test_per_channel_normalisation_inside_the_backbone_is_folded():
    """EfficientNet normalises inside the model: that per-channel layer is dropped and folded into the kernel."""
    def imagenet_stats(bb):
        norm = next(l for l in bb.layers if l.__class__.__name__ == "Normalization")
        norm.adapt_mean.assign([0.485, 0.456, 0.406])
        norm.adapt_variance.assign(np.square([0.229, 0.224, 0.225]))
        norm.finalize_state()
        return calibrated(bb)

    (c3, bb3), (c1, bb1), rep = folded("efficientnet_b0", prepare=imagenet_stats)
    assert len(rep.dropped) == 1 and rep.dropped[0].startswith("normalization") and not rep.exact_at_borders
    assert not any(l.__class__.__name__ == "Normalization" for l in bb1.layers)
    g = gray_images()
    a = layer_out(c3, bb3, "stem_bn", np.repeat(g, 3, axis=-1))
    b = layer_out(c1, bb1, "stem_bn", g)
    assert np.abs(a - b)[:, 1:-1, 1:-1].max() <= 1e-4 * np.abs(a).max()


def test_unsupported_stem_is_a_clear_error():
    import keras

    inp = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Activation("relu")(inp)
    bb = keras.Model(inp, keras.layers.Conv2D(4, 3)(x), name="odd")
    c3, c1 = contract_for("mobilenet", SIZE), contract_for("mobilenet", SIZE, grayscale=True)
    with pytest.raises(TledgeError, match="not supported for odd"):
        fold_to_gray(bb, tm._preprocess(c3), tm._preprocess(c1))


@pytest.mark.filterwarnings("ignore:val accuracy .* no better than always:tledge.errors.TledgeWarning")  # 1 epoch
def test_grayscale_training_run(shapes_dataset, tmp_path):
    import keras

    from tledge import backbones
    from tledge.layers import CUSTOM_OBJECTS
    from tledge.train import TrainConfig, train
    from tledge.train.checkpoint import numpy2_quiet

    keras.utils.set_random_seed(0)
    w = tmp_path / "bb.weights.h5"
    with numpy2_quiet():
        calibrated(backbones.build("mobilenet", (SIZE, SIZE, 3), weights=None, alpha=0.25)).save_weights(str(w))
    out = tmp_path / "gray"
    r = train(shapes_dataset, TrainConfig(backbone="mobilenet", alpha=0.25, weights=str(w), size=SIZE, grayscale=True,
                                          epochs=1, fine_tune_epochs=1, batch=16, out=out, verbose=0))
    contract = Contract.load(out / "tledge.json")
    assert (contract.channels, contract.color.value, contract.input_dtype) == (1, "gray", "float32")
    m = json.loads((out / "metrics.json").read_text())
    assert m["grayscale_fold"]["exact_at_borders"] is True
    model = keras.saving.load_model(str(out / "model.h5"), custom_objects=CUSTOM_OBJECTS, safe_mode=True)
    assert model.input.shape[1:] == (SIZE, SIZE, 1)
    files = sorted((shapes_dataset / "val" / "circle").iterdir())[:3]
    x = contract.prepare_batch(files)
    assert x.shape == (3, SIZE, SIZE, 1)
    p = np.asarray(model.predict(x, verbose=0))
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    assert r.contract == contract
