"""What `tledge parity` advises is what it takes: the "feeding raw 0..255 pixels" warning for a float file made
elsewhere says "pass --preprocess ... or --mean/--std" (parity had no --mean/--std and said --preprocess only; it
takes them now, as run does), and a reference that does not
bake its preprocessing was told "--preprocess auto with labelled --val images" (parity: "unknown preprocessing
'auto'"). `tledge run` and `tledge export` keep their wording."""
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")

from tledge.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def float_file(tiny_model, tmp_path_factory):
    """The tiny model (tf preprocessing baked in) converted elsewhere: a float TFLite file taking raw pixels, with
    nothing in it saying so."""
    import tensorflow as tf

    path = tmp_path_factory.mktemp("advice") / "float.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(tiny_model["model"]).convert())
    return path


def test_the_raw_pixels_warning_names_parity_options(tiny_model, float_file, shapes_dataset):
    from tledge.errors import TledgeWarning

    with pytest.warns(TledgeWarning, match="feeding raw 0..255 pixels") as said:  # (the CLI leaves them to pytest)
        rc = main(["parity", str(tiny_model["keras"]), str(float_file), "--images", str(shapes_dataset / "val")])
    text = [str(w.message) for w in said if "feeding raw" in str(w.message)]
    assert rc == 0 and text[0].endswith("If that is wrong, pass --preprocess MODE|BACKBONE or --mean/--std."), text


def test_run_keeps_its_wording(float_file):
    from tledge.errors import TledgeWarning
    from tledge.runtime import load

    with pytest.warns(TledgeWarning, match=r"feeding raw 0\.\.255 pixels\. If that is wrong, pass --preprocess "
                                           r"MODE\|BACKBONE or --mean/--std\."):
        load(float_file)


def test_an_unbaked_reference_is_not_told_to_use_auto(unbaked_model, float_file, shapes_dataset, capsys):
    rc = main(["parity", str(unbaked_model["keras"]), str(float_file), "--images", str(shapes_dataset / "val")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "does not bake its preprocessing and none was given" in err[-1], err
    assert "--preprocess auto" not in err[-1] and "a backbone name such as mobilenet_v2 or resnet50." in err[-1]


def test_export_keeps_its_wording():
    from tledge.errors import ContractError
    from tledge.export import resolve
    from tledge.export.loaded import LoadedModel

    lm = LoadedModel(Path("m.keras"), None, "keras3", (48, 48), 3, None, None, num_outputs=3)
    with pytest.raises(ContractError, match=r"or --preprocess auto with labelled --val images\.$"):
        resolve.resolve_contract(lm, preprocess=None, input_size=None)
