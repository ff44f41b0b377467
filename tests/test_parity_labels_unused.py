"""`tledge parity` reads the reference's own labels only where a file without labels needs them, and refuses a
--labels that nothing would use. Before: a labels.txt beside the reference that disagreed with its tledge.json (or
had an empty line) made parity of the model against its own export exit 2, where every file's own labels were
used; and --labels of any count or names passed, ignored. Under an error filter for warnings, the raw-pixels
advice for a file made elsewhere names what parity takes (--mean/--std too, since parity takes them)."""
import shutil
import warnings

import pytest

pytest.importorskip("tensorflow")

from tledge.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def exported(tiny_model, shapes_dataset, tmp_path_factory):
    from tledge.export.pipeline import ExportConfig, export

    d = tmp_path_factory.mktemp("unused")
    (d / "ref").mkdir()
    shutil.copy(tiny_model["keras"], d / "ref" / "model.keras")
    export(d / "ref" / "model.keras", ExportConfig(out=d / "exp", formats=("tflite",), val=str(shapes_dataset / "val"),
                                                   labels=None))
    return d


def test_a_bad_labels_txt_beside_the_reference_is_not_read_when_every_file_has_labels(exported, shapes_dataset,
                                                                                       capsys):
    (exported / "ref" / "labels.txt").write_text("circle\n\nvstripes\n")  # an empty line between labels
    try:
        rc = main(["parity", str(exported / "ref" / "model.keras"), str(exported / "exp"),
                   "--images", str(shapes_dataset / "val")])
    finally:
        (exported / "ref" / "labels.txt").unlink()
    assert rc == 0, capsys.readouterr().err


def test_labels_that_nothing_would_use_are_refused(exported, shapes_dataset, tmp_path, capsys):
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    rc = main(["parity", str(exported / "ref" / "model.keras"), str(exported / "exp"),
               "--images", str(shapes_dataset / "val"), "--labels", str(tmp_path / "three.txt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "every exported file carries its labels" in err[-1] and "drop --labels" in err[-1], err


def test_the_raw_pixels_advice_under_an_error_filter_names_what_parity_takes(tiny_model, exported, shapes_dataset):
    import tensorflow as tf

    from tledge.errors import TledgeWarning
    from tledge.export.check import parity

    float_file = exported / "float.tflite"
    float_file.write_bytes(tf.lite.TFLiteConverter.from_keras_model(tiny_model["model"]).convert())
    with warnings.catch_warnings():
        warnings.simplefilter("error", TledgeWarning)
        report = parity(tiny_model["keras"], [float_file], shapes_dataset / "val")
    why = " ".join(report.results[0].failures)
    assert "could not run" in why and why.endswith("pass --preprocess MODE|BACKBONE or --mean/--std."), why


def test_labels_given_as_an_array_to_the_library(exported, shapes_dataset):
    """`if labels` on a numpy array: a ValueError traceback where a list worked."""
    import numpy as np

    from tledge.errors import TledgeError
    from tledge.export.check import parity

    with pytest.raises(TledgeError, match="drop --labels"):  # every file has its own: refused, not a ValueError
        parity(exported / "ref" / "model.keras", [exported / "exp"], shapes_dataset / "val",
               labels=np.array(["circle", "hstripes", "vstripes"]))
