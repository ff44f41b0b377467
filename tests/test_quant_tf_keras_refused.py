"""A tf_keras (Keras 2) model given to the Keras-level int8 techniques: one line saying to rebuild it (before, an
AttributeError '_run_through_graph' from deep inside tledge.quant.kerasgraph.rebuild_model)."""
import numpy as np
import pytest

tf_keras = pytest.importorskip("tf_keras")
pytest.importorskip("keras")

from tledge.errors import ArgumentError  # noqa: E402
from tledge.quant import explain, rebuild, repair  # noqa: E402


@pytest.fixture(scope="module")
def keras2_model():
    inp = tf_keras.Input((16, 16, 3))
    x = tf_keras.layers.Conv2D(4, 3)(inp)
    x = tf_keras.layers.BatchNormalization()(x)
    x = tf_keras.layers.ReLU()(x)
    out = tf_keras.layers.Dense(2, activation="softmax")(tf_keras.layers.GlobalAveragePooling2D()(x))
    return tf_keras.Model(inp, out)


CALIB = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype(np.float32)
HINT = r"a tf_keras model: rebuild it first with tledge\.quant\.rebuild\.from_tf_keras\(model\)"


def test_repair_refuses_a_tf_keras_model(keras2_model):
    with pytest.raises(ArgumentError, match=HINT) as err:
        repair.apply(keras2_model, CALIB)
    assert "\n" not in str(err.value)


def test_activation_sensitivity_refuses_a_tf_keras_model(keras2_model):
    with pytest.raises(ArgumentError, match=HINT):
        explain.activation_sensitivity(keras2_model, CALIB)


def test_the_rebuilt_model_is_taken(keras2_model):
    k3 = rebuild.from_tf_keras(keras2_model)
    assert k3 is not None and rebuild.verified(keras2_model, k3, CALIB)
    folded, bn = repair.fold_bn(k3)
    assert bn == 1
    np.testing.assert_allclose(repair.predict(folded, CALIB), repair.predict(k3, CALIB), atol=1e-4)
