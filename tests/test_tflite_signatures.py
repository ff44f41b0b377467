"""TFLite files with several signatures (helper 109, session 39): tledge runs a file's first subgraph, and the
converter put another function (`a_reversed`) there: every image went through it, accuracy 0.19, exit 0."""
from __future__ import annotations

import pytest

tf = pytest.importorskip("tensorflow")

from tledge.errors import ModelLoadError  # noqa: E402
from tledge.runtime import load  # noqa: E402

SPEC = [tf.TensorSpec([1, 8, 8, 3], tf.float32, name="pixels")]


def _convert(tmp_path, keys: list[str]):
    """A Keras classifier as a SavedModel with `keys` endpoints (serving_default: the model; a_reversed: its
    scores in reverse order), converted with those signature keys (the converter's own order of subgraphs)."""
    import keras
    import numpy as np

    i = keras.Input((8, 8, 3))
    dense = keras.layers.Dense(2, activation="softmax")
    m = keras.Model(i, dense(keras.layers.GlobalAveragePooling2D()(i)))
    dense.set_weights([np.array([[-0.1, 0.1], [0.1, -0.1], [0.0, 0.0]], np.float32), np.zeros(2, np.float32)])
    ar = keras.export.ExportArchive()
    ar.track(m)
    ends = {"serving_default": lambda x: {"scores": m(x, training=False)},
            "a_reversed": lambda x: {"scores": m(x, training=False)[:, ::-1]}}
    for k in keys:
        ar.add_endpoint(k, ends[k], input_signature=SPEC)
    ar.write_out(str(tmp_path / "sm"), verbose=False)
    out = tmp_path / "m.tflite"
    out.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "sm"), signature_keys=keys).convert())
    return out


def test_a_file_whose_first_subgraph_is_not_serving_default_is_refused(tmp_path):
    path = _convert(tmp_path, ["a_reversed", "serving_default"])
    with pytest.raises(ModelLoadError, match=r"2 signatures \(a_reversed, serving_default\).*'a_reversed', not "
                                             "serving_default"):
        load(path, preprocess="raw")


def test_one_signature_runs_as_before(tmp_path):
    import numpy as np

    path = _convert(tmp_path, ["serving_default"])
    m = load(path, preprocess="raw")
    green = np.full((8, 8, 3), (10, 200, 30), np.uint8)  # class 0 weighs green up
    assert m.classify([green])[0][0].index == 0
