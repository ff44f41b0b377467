"""`tledge parity` of a file made elsewhere that takes uint8 pixels with no quantisation, against a reference that
does not bake its preprocessing: the one --preprocess went to the reference and to the file, which refused it
("leave out --preprocess"), and without it the reference could not run ("none was given"). Such a file takes raw
pixels, as `tledge run` gives it without --preprocess."""
import json

import pytest

pytest.importorskip("tensorflow")

from tledge.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def uint8_file(unbaked_model, tmp_path_factory):
    """The unbaked tiny model with its x / 127.5 - 1 put in front of it, taking uint8 pixels (no quantisation)."""
    import keras
    import tensorflow as tf

    inp = keras.Input((48, 48, 3), dtype="uint8")
    model = keras.Model(inp, unbaked_model["model"](keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inp)))
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    path = tmp_path_factory.mktemp("u8") / "u8in.tflite"
    path.write_bytes(conv.convert())
    return path


def test_a_uint8_input_without_quantisation_gets_raw_pixels_and_passes(unbaked_model, uint8_file, shapes_dataset,
                                                                         capsys):
    rc = main(["parity", str(unbaked_model["keras"]), str(uint8_file), "--images", str(shapes_dataset / "val"),
               "--preprocess", "tf", "--json"])
    rep = json.loads(capsys.readouterr().out)
    r = rep["results"][0]
    assert r["max_abs_error"] < 1e-4 and r["top1_agreement"] == 1.0, r["failures"]
    assert rc == 0 and rep["passed"], rep
    (note,) = [n for n in rep["notes"] if "u8in.tflite: uint8 input with no quantisation, so raw pixels in" in n]
    assert note.endswith("(--preprocess tf is the reference's)"), note  # the option the command was given

