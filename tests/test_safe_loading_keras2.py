"""Code in a Keras 2 era .h5 that the Keras 3 translation would not load but tf_keras (no safe mode for .h5) would:
a Lambda inside a config value tf_keras builds as a layer (`__passive_serialization__`) where the translation
drops the value (a SeparableConv2D's kernel_regularizer) or the whole layer config (an arithmetic TFOpLambda read
as Rescaling), and tf_keras' RNN cell wrappers with a stored function. Each ran without --unsafe."""
from __future__ import annotations

import json

import pytest
from test_safe_loading import _marker_lambda, _rewrite_config

from tledge.errors import ModelLoadError
from tledge.export import kerasconfig, loader

tf_keras = pytest.importorskip("tf_keras")


def _payload(marker):
    """A Sequential holding the marker Lambda, serialised as tf_keras writes a Keras object found in a config value."""
    seq = tf_keras.Sequential([tf_keras.Input((3,)), _marker_lambda(marker)])
    marker.unlink(missing_ok=True)
    return tf_keras.utils.serialize_keras_object(seq) | {"__passive_serialization__": True}


def _plain_model(path, arithmetic: bool):
    inp = tf_keras.Input((8, 8, 3))
    x = inp / 127.5 if arithmetic else tf_keras.layers.Rescaling(1 / 127.5)(inp)  # a TFOpLambda, or not
    x = tf_keras.layers.SeparableConv2D(4, 3, name="sep")(x)
    out = tf_keras.layers.Dense(2, activation="softmax")(tf_keras.layers.GlobalAveragePooling2D()(x))
    tf_keras.Model(inp, out).save(path)
    return path


@pytest.mark.parametrize("where", ["sep.kernel_regularizer", "tfop.activity_regularizer"])
def test_code_in_what_the_translation_drops_is_refused(where, tmp_path):
    marker = tmp_path / "MARKER"
    path = _plain_model(tmp_path / "m.h5", arithmetic=where.startswith("tfop"))
    assert loader.load_model(path).kind in loader.KINDS  # loads as it is (its arithmetic TFOpLambda is data)
    payload = _payload(marker)
    layer_class, key = ("SeparableConv2D", "kernel_regularizer") if where.startswith("sep") else ("TFOpLambda",
                                                                                                "activity_regularizer")

    def plant(cfg):
        target = next(entry for entry in cfg["config"]["layers"] if entry["class_name"] == layer_class)
        target["config"][key] = payload

    _rewrite_config(path, edit=plant)
    with pytest.raises(ModelLoadError, match=r"\(Lambda\).*--unsafe"):
        loader.load_model(path)
    assert not marker.exists()


def test_rnn_cell_wrapper_with_a_stored_function_is_refused(tmp_path):
    from tf_keras.src.layers.rnn.cell_wrappers import ResidualWrapper

    marker = tmp_path / "MARKER"
    path_text = str(marker)
    inp = tf_keras.Input((1, 3))
    cell = ResidualWrapper(tf_keras.layers.SimpleRNNCell(3),
                           residual_fn=lambda i, o, _m=path_text: (open(_m, "w").close(), i + o)[1])
    out = tf_keras.layers.Dense(2, activation="softmax")(tf_keras.layers.RNN(cell)(inp))
    tf_keras.Model(inp, out).save(tmp_path / "rnn.h5")
    marker.unlink(missing_ok=True)
    with pytest.raises(ModelLoadError, match=r"ResidualWrapper.*--unsafe"):
        loader.load_model(tmp_path / "rnn.h5")
    assert not marker.exists()
    entry = {"class_name": "Wrapper", "config": {"name": "w", "probe_fn": ["AAAA", None, None],
                                                 "probe_fn_type": "lambda"}}
    assert kerasconfig.find_code(entry)[0].reason.startswith("a Python function stored in the file")
    ordinary = {"class_name": "Dense", "config": {"name": "d", "kernel_initializer": {"class_name": "GlorotUniform"}}}
    assert kerasconfig.find_code(json.loads(json.dumps(ordinary))) == []
