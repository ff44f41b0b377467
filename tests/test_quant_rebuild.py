"""tf_keras (Keras 2) models rebuilt as Keras 3 so the Keras-level int8 repairs apply (issue 11)."""
import numpy as np
import pytest

tf_keras = pytest.importorskip("tf_keras")
pytest.importorskip("keras")


def _functional_with_nested_backbone():
    tf_keras.utils.set_random_seed(0)
    inner_in = tf_keras.Input((24, 24, 3))
    x = tf_keras.layers.ZeroPadding2D(((0, 1), (0, 1)))(inner_in)
    x = tf_keras.layers.Conv2D(8, 3, strides=2, use_bias=False)(x)
    x = tf_keras.layers.BatchNormalization()(x)
    x = tf_keras.layers.ReLU(6.0)(x)
    x = tf_keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = tf_keras.layers.BatchNormalization()(x)
    x = tf_keras.layers.ReLU(6.0)(x)
    x = tf_keras.layers.GlobalAveragePooling2D()(x)
    backbone = tf_keras.Model(inner_in, x, name="backbone")
    inp = tf_keras.Input((24, 24, 3))
    y = tf_keras.layers.Dropout(0.2)(backbone(inp, training=False))
    model = tf_keras.Model(inp, tf_keras.layers.Dense(3, activation="softmax")(y))
    # non-trivial BN statistics, so a missed weight would show
    for layer in backbone.layers:
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            rng = np.random.default_rng(len(g))
            layer.set_weights([g * 1.5, b + 0.1, m + rng.normal(0, 0.2, m.shape), v * 2.0])
    return model


def test_functional_model_with_a_nested_backbone_is_copied_exactly():
    from tledge.quant import rebuild

    m2 = _functional_with_nested_backbone()
    m3 = rebuild.from_tf_keras(m2)
    assert m3 is not None and type(m3).__module__.startswith("keras")
    x = np.random.default_rng(1).uniform(-1, 1, (5, 24, 24, 3)).astype(np.float32)
    assert rebuild.verified(m2, m3, x)
    assert np.abs(np.asarray(m3(x)) - np.asarray(m2(x))).max() < 1e-5


def test_sequential_and_unsupported_layers():
    from tledge.quant import rebuild

    tf_keras.utils.set_random_seed(0)
    seq = tf_keras.Sequential([tf_keras.layers.InputLayer((16, 16, 3)), tf_keras.layers.Conv2D(4, 3),
                               tf_keras.layers.GlobalAveragePooling2D(), tf_keras.layers.Dense(2)])
    x = np.random.default_rng(2).uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32)
    assert rebuild.verified(seq, rebuild.from_tf_keras(seq), x)
    lam = tf_keras.Sequential([tf_keras.layers.InputLayer((4,)), tf_keras.layers.Lambda(lambda t: t * 2)])
    assert rebuild.from_tf_keras(lam) is None  # never carried over: it is code


def test_slashed_layer_names_and_augmentation_rng_type_are_carried_over():
    """tf_keras' MobileNetV3 names layers "Conv/BatchNorm" (Keras 3 refuses '/'), tf_keras 2.13's RandomFlip
    carries rng_type (Keras 3 has no such option): neither stops the copy."""
    from tledge.quant import rebuild

    tf_keras.utils.set_random_seed(0)
    inp = tf_keras.Input((16, 16, 3))
    x = tf_keras.layers.RandomFlip("horizontal")(inp)
    x = tf_keras.layers.Conv2D(4, 3, name="stem/conv")(x)
    x = tf_keras.layers.BatchNormalization(name="stem/bn")(x)
    model = tf_keras.Model(inp, tf_keras.layers.Dense(2)(tf_keras.layers.GlobalAveragePooling2D()(x)))
    bn = model.get_layer("stem/bn")
    g, b, m, v = bn.get_weights()
    bn.set_weights([g * 1.5, b + 0.1, m + 0.3, v * 2.0])
    assert "rng_type" in model.get_layer(index=1).get_config()
    copy = rebuild.from_tf_keras(model)
    assert copy is not None and copy.get_layer("stem_bn") is not None
    x = np.random.default_rng(2).uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32)
    assert rebuild.verified(model, copy, x)
