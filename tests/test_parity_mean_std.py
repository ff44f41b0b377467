"""`tledge parity` of a file made elsewhere whose int8 input has no quantisation: such a file takes pixel - 128, which
`tledge run` and `tledge bench` are told with --mean 128 --std 1; parity had no --mean/--std, and the file "could not
run" ("pixel - 128 is --mean 128 --std 1"). Parity takes them now, parsed and checked as run's, for the files without
a contract (the reference keeps its --preprocess), and refuses them where every file carries its own contract."""
import json

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from tledge.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def int8_file(unbaked_model, tmp_path_factory):
    """The unbaked tiny model (it takes x / 127.5 - 1) behind int8 pixel - 128 (no quantisation): (p - 128 + 128) /
    127.5 - 1 in front of it."""
    import keras
    import tensorflow as tf

    inp = keras.Input((48, 48, 3), dtype="int8")
    model = keras.Model(inp, unbaked_model["model"](keras.layers.Rescaling(1 / 127.5, offset=128 / 127.5 - 1)(inp)))
    path = tmp_path_factory.mktemp("i8") / "i8in.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return path


def _parity(capsys, *argv):
    rc = main(["parity", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_an_int8_input_without_quantisation_is_checked_with_mean_and_std(unbaked_model, int8_file, shapes_dataset,
                                                                         capsys):
    from tledge.images import class_folders

    val = shapes_dataset / "val"
    rc, out, _ = _parity(capsys, unbaked_model["keras"], int8_file, "--images", val, "--preprocess", "tf", "--json")
    (r,) = json.loads(out)["results"]
    assert rc == 1 and "pixel - 128 is --mean 128 --std 1" in r["failures"][0], r  # what it said before, still

    rc, out, _ = _parity(capsys, unbaked_model["keras"], int8_file, "--images", val, "--preprocess", "tf",
                         "--mean", "128", "--std", "1", "--json")
    rep = json.loads(out)
    (r,) = rep["results"]
    assert rc == 0 and rep["passed"] and r["precision"] != "?" and r["max_abs_error"] < 1e-4, r
    # the figures tledge run gives the file with the same options: its top-1 on the same images
    assert main(["run", str(int8_file), "--source", str(val), "--mean", "128", "--std", "1", "--json",
                 "--resize", rep_resize(rep)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    folders = [name for name, _ in class_folders(val)]
    hits = [row["top"][0]["index"] == folders.index(row["source"].replace("\\", "/").split("/")[-2]) for row in rows]
    assert len(rows) == r["images"] and r["accuracy"] == pytest.approx(np.mean(hits)), (r, rows[:3])


def rep_resize(rep) -> str:
    """The reference's resize, which parity gives a file without a contract (its note says it)."""
    (note,) = [n for n in rep["notes"] if "resized as the reference (" in n]
    return note.split("resized as the reference (")[1].split(",")[0]


def test_mean_and_std_are_checked_as_run_checks_them_and_refused_where_no_file_needs_them(
        unbaked_model, int8_file, shapes_dataset, capsys):
    from tiny import TINY

    val = shapes_dataset / "val"
    for bad, said in ((("--mean", "red"), "--mean wants 1 or 3 numbers"),
                      (("--std", "1,0,1"), "--std values must be > 0"),
                      # values for 0..1 pixels: tledge run refuses them (exit 2); parity said 'could not run', exit 1
                      (("--mean", "0.5", "--std", "0.25"), "look like values for 0..1 pixels")):
        rc, out, err = _parity(capsys, unbaked_model["keras"], int8_file, "--images", val, *bad)
        assert rc == 2 and said in err and len(err.strip().splitlines()) == 1 and out == "", err
    # a file with its contract (tledge's own export): nothing would use them
    rc, out, err = _parity(capsys, unbaked_model["keras"], TINY / "model_int8.tflite", "--images", val,
                           "--mean", "128", "--std", "1")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and out == "", err
    assert "every exported file carries its contract" in err and "drop --mean --std" in err, err
    rc, out, err = _parity(capsys, "--golden", TINY, "--mean", "128")
    assert rc == 2 and "it takes no --mean" in err and len(err.strip().splitlines()) == 1, err


def test_preprocess_the_reference_does_not_take_is_refused_beside_mean_and_std(tiny_model, int8_file,
                                                                                shapes_dataset, capsys):
    """--mean/--std normalise the files without a contract and --preprocess is then the reference's; a reference that
    bakes its normalisation takes none, so --preprocess was used by nothing, exit 0 (tledge run refuses the two
    together)."""
    rc, out, err = _parity(capsys, tiny_model["keras"], int8_file, "--images", shapes_dataset / "val",
                           "--preprocess", "torch", "--mean", "128", "--std", "1")
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "--preprocess torch: the reference does not take it (it bakes its normalisation)" in err, err


def test_the_library_refuses_values_for_0_to_1_pixels_before_loading(unbaked_model, int8_file, shapes_dataset):
    """tledge.export.check.parity(mean=0.5, std=0.25) fed a uint8 file raw pixels ('did not fit it') and reported
    others as 'could not run'; it refuses the values as the CLI does, before any model is loaded."""
    from tledge.errors import ContractError
    from tledge.export.check import parity

    with pytest.raises(ContractError, match="look like values for 0..1 pixels"):
        parity(unbaked_model["keras"], [int8_file], shapes_dataset / "val", mean="0.5", std="0.25")


def test_assert_parity_takes_mean_and_std_as_the_command_does(unbaked_model, int8_file, shapes_dataset):
    """tledge.testing.assert_parity had no mean/std: a file made elsewhere that `tledge parity --mean 128 --std 1`
    passes could not be checked from a user's test suite (it 'could not run' there, a TypeError with mean=)."""
    from tledge.testing import assert_parity

    val = shapes_dataset / "val"
    with pytest.raises(AssertionError, match="pixel - 128 is --mean 128 --std 1"):
        assert_parity(unbaked_model["keras"], int8_file, val, preprocess="tf")
    report = assert_parity(unbaked_model["keras"], int8_file, val, preprocess="tf", mean=128, std=1)
    (r,) = report.results
    assert report.passed and r.precision != "?" and r.max_abs_error < 1e-4, r
