"""`tledge parity` of files made elsewhere against a reference with no labels in a contract: no accuracy ("no labels
in the reference's contract") unless there was one class folder per output, even with a labels.txt beside the
reference, which `tledge export` reads. Now --labels FILE, else that labels.txt, name the reference's outputs, and
--images class folders are matched to them by name."""
import json
import shutil

import pytest

pytest.importorskip("tensorflow")

from tledge.cli import main  # noqa: E402

LABELS = ("circle", "hstripes", "vstripes")  # the shapes data set's classes, the unbaked model's outputs


@pytest.fixture(scope="module")
def case(unbaked_model, shapes_dataset, tmp_path_factory):
    """The unbaked reference alone in a folder, its plain TFLite conversion, and 2 of its 3 class folders."""
    import tensorflow as tf

    d = tmp_path_factory.mktemp("labels")
    (d / "ref").mkdir()
    shutil.copy(unbaked_model["keras"], d / "ref" / "m.keras")
    (d / "m.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(unbaked_model["model"]).convert())
    for c in LABELS[1:]:
        shutil.copytree(shapes_dataset / "val" / c, d / "two" / c)
    (d / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return d


def _parity(capsys, case, *extra):
    rc = main(["parity", str(case / "ref" / "m.keras"), str(case / "m.tflite"), "--images", str(case / "two"),
               "--preprocess", "tf", "--json", *map(str, extra)])
    return rc, json.loads(capsys.readouterr().out)


def test_labels_option_gives_accuracy(case, capsys):
    rc, rep = _parity(capsys, case, "--labels", case / "labels.txt")
    r = rep["results"][0]
    assert r["accuracy"] is not None and r["reference_accuracy"] == r["accuracy"], r
    assert rc == 0 and not any("accuracy not measured" in n for n in rep["notes"]), rep["notes"]


def test_a_labels_txt_beside_the_reference_is_read_as_export_reads_it(case, capsys):
    shutil.copy(case / "labels.txt", case / "ref" / "labels.txt")
    try:
        rc, rep = _parity(capsys, case)
    finally:
        (case / "ref" / "labels.txt").unlink()
    assert rep["results"][0]["accuracy"] is not None, rep
    assert any("labels from " in n and "labels.txt" in n for n in rep["notes"]), rep["notes"]


def test_labels_of_another_count_are_refused_in_one_line(case, tmp_path, capsys):
    (tmp_path / "four.txt").write_text("a\nb\nc\nd\n")
    rc = main(["parity", str(case / "ref" / "m.keras"), str(case / "m.tflite"), "--images", str(case / "two"),
               "--preprocess", "tf", "--labels", str(tmp_path / "four.txt")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "4 labels from --labels" in err[-1] and "3 outputs" in err[-1], err
