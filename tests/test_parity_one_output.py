"""`tledge parity` on a one-output Keras model (a sigmoid, or its logit) and a TFLite file converted from it elsewhere
(no tledge contract): the reference is widened to [1 - p, p], and the file's raw (N, 1) output was compared as it
was, so a correct conversion was called "not an export" of its own model (exit 2). `tledge run` widens it."""
import json

import pytest

pytest.importorskip("tensorflow")

from tledge.cli import main  # noqa: E402


@pytest.fixture(scope="module", params=["sigmoid", "logit"])
def one_output(request, tmp_path_factory):
    """An unbaked one-output model (x / 127.5 - 1 outside it) and its plain TFLite conversion."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid" if request.param == "sigmoid" else None)(x))
    d = tmp_path_factory.mktemp("one_output")
    model.save(d / "m.keras")
    (d / "m.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return d


def test_a_one_output_file_made_elsewhere_passes_against_its_model(one_output, shapes_dataset, capsys):
    rc = main(["parity", str(one_output / "m.keras"), str(one_output / "m.tflite"), "--images",
               str(shapes_dataset / "val"), "--preprocess", "tf", "--json"])
    rep = json.loads(capsys.readouterr().out)
    r = rep["results"][0]
    assert r["max_abs_error"] < 1e-4 and r["top1_agreement"] == 1.0, r
    assert rc == 0 and rep["passed"], rep

