"""`tledge parity` as a CI gate: exit codes, JUnit XML, thresholds files, the pytest fixture."""
import json
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from tledge.cli import main  # noqa: E402
from tledge.export.parity import Thresholds  # noqa: E402


def test_parity_passes_on_a_good_export_and_writes_junit(tiny_model, tiny_export, shapes_dataset, tmp_path):
    junit = tmp_path / "parity.xml"
    rc = main(["parity", str(tiny_model["keras"]), str(tiny_export.out), "--images",
               str(shapes_dataset / "val"), "--junit", str(junit)])
    assert rc == 0
    suite = ET.parse(junit).getroot()
    assert suite.get("tests") == "6" and suite.get("failures") == "0"
    assert {c.get("name") for c in suite.iter("testcase")} == {p.name for p in tiny_export.files}


def test_a_swapped_file_fails_with_one_failing_case(tiny_model, tiny_export, shapes_dataset, tmp_path, capsys):
    import keras

    from tledge.export.pipeline import ExportConfig, export

    model = keras.models.clone_model(tiny_model["model"])
    rng = np.random.default_rng(1)
    model.set_weights([w + rng.normal(0, 0.3, w.shape).astype(w.dtype) if w.ndim > 1 else w
                       for w in tiny_model["model"].get_weights()])
    model.save(tmp_path / "other.keras")
    other = export(tmp_path / "other.keras", ExportConfig(out=tmp_path / "other", formats=("onnx",),
                                                         val=str(shapes_dataset / "val")))
    folder = tmp_path / "mixed"
    shutil.copytree(tiny_export.out, folder)
    shutil.copy(other.files[0], folder / "model_fp32.onnx")
    junit = tmp_path / "p.xml"
    rc = main(["parity", str(tiny_model["keras"]), str(folder), "--images", str(shapes_dataset / "val"),
               "--junit", str(junit), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 1 and not report["passed"]
    assert [r["file"] for r in report["results"] if not r["passed"]] == ["model_fp32.onnx"]
    assert ET.parse(junit).getroot().get("failures") == "1"


def test_thresholds_file_is_applied(tiny_model, tiny_export, shapes_dataset, tmp_path):
    strict = tmp_path / "t.toml"
    strict.write_text('[int8]\nmax_abs = 1e-9\n\n["model_fp16.tflite"]\nmin_agreement = 0.5\n')
    rc = main(["parity", str(tiny_model["keras"]), str(tiny_export.out / "model_int8.tflite"),
               str(tiny_export.out / "model_fp16.tflite"), "--images", str(shapes_dataset / "val"),
               "--thresholds", str(strict), "--junit", str(tmp_path / "j.xml")])
    assert rc == 1
    cases = {c.get("name"): c for c in ET.parse(tmp_path / "j.xml").getroot().iter("testcase")}
    assert cases["model_int8.tflite"].find("failure") is not None
    assert cases["model_fp16.tflite"].find("failure") is None


def test_missing_images_is_a_usage_error(tiny_model, tiny_export, tmp_path):
    assert main(["parity", str(tiny_model["keras"]), str(tiny_export.out), "--images", str(tmp_path / "no")]) == 2
    assert main(["parity", str(tiny_model["keras"]), str(tmp_path / "none.tflite"), "--images", str(tmp_path)]) == 2


def test_pytest_fixture_for_users(tledge_parity, tiny_model, tiny_export, shapes_dataset):
    report = tledge_parity(tiny_model["keras"], tiny_export.out, images=shapes_dataset / "val")
    assert report.passed and len(report.results) == 6
    with pytest.raises(AssertionError, match="model_int8"):
        tledge_parity(tiny_model["keras"], tiny_export.out / "model_int8.tflite", images=shapes_dataset / "val",
                      thresholds={"int8": Thresholds(max_abs=0.0)})


def test_per_file_thresholds_start_from_their_precision_and_plain_dicts_work(tmp_path):
    from tledge.errors import TledgeError
    from tledge.export.parity import load_thresholds, thresholds_from_dict

    f = tmp_path / "t.json"
    f.write_text(json.dumps({"model_int8.onnx": {"min_agreement": 0.95}, "fp16": {"min_agreement": 0.9}}))
    t = load_thresholds(f)
    assert t["model_int8.onnx"] == Thresholds(min_agreement=0.95, max_accuracy_drop=0.01)  # int8's accuracy rule kept
    assert t["fp16"].min_agreement == 0.9
    assert thresholds_from_dict({"x.tflite": {"max_abs": 1.0}})["x.tflite"] == Thresholds(max_abs=1.0)
    with pytest.raises(TledgeError, match="unknown field") as err:  # a bad input (exit 2), not a parity failure
        thresholds_from_dict({"int8": {"min_agreemnt": 0.9}})
    assert err.value.exit_code == 2


def test_assert_parity_takes_plain_dict_thresholds(tiny_model, tiny_export, shapes_dataset):
    from tledge.errors import ParityError
    from tledge.testing import assert_parity

    with pytest.raises((ParityError, AssertionError), match="model_int8"):
        assert_parity(tiny_model["keras"], tiny_export.out / "model_int8.tflite", shapes_dataset / "val",
                      thresholds={"int8": {"max_abs": 0.0}})


def test_exported_files_get_normal_permissions(tiny_export):
    import os
    import stat

    mask = os.umask(0)
    os.umask(mask)
    for p in list(tiny_export.out.glob("*.tflite")) + [tiny_export.out / "parity.md", tiny_export.out / "tledge.json"]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask, p


def test_a_reference_of_another_size_names_the_files_contract_not_a_flag(tiny_export, shapes_dataset, tmp_path,
                                                                          capsys):
    """The exported file's embedded 48x48 against a 32x32 reference: the message says where 48x48 came from
    (it read "--input-size 48x48" although no --input-size was given)."""
    from conftest import build_tiny_classifier

    path = tmp_path / "ref32.keras"
    build_tiny_classifier(size=32).save(path)
    rc = main(["parity", str(path), str(tiny_export.out / "model_fp32.tflite"), "--images",
               str(shapes_dataset / "val")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "embedded contract says 48x48" in err and "32x32" in err and "--input-size" not in err


def test_one_corrupt_file_is_its_own_failure_and_the_junit_is_written(tiny_model, tiny_export, shapes_dataset,
                                                                       tmp_path, capsys):
    """A truncated model_int8.tflite aborted the whole check ("corrupt flatbuffer", no file named, no XML)."""
    folder = tmp_path / "broken"
    folder.mkdir()
    shutil.copy(tiny_export.out / "model_fp32.tflite", folder)
    (folder / "model_int8.tflite").write_bytes((tiny_export.out / "model_int8.tflite").read_bytes()[:5000])
    junit = tmp_path / "j.xml"
    rc = main(["parity", str(tiny_model["keras"]), str(folder), "--images", str(shapes_dataset / "val"),
               "--junit", str(junit)])
    err = capsys.readouterr().err
    assert rc == 1 and "model_int8.tflite: could not run" in err, err
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert cases["model_int8.tflite"].find("failure") is not None and cases["model_fp32.tflite"].find("failure") is None


def test_thresholds_keys_that_match_nothing_are_not_silent(tiny_model, tiny_export, shapes_dataset, tmp_path, capsys):
    """`[int9]` or `["model_int8.tfite"]` left the gate on its defaults and said PASSED."""
    for text, said in (("[int9]\nmin_agreement = 0.5\n", "'int9' is neither a precision"),
                       ('["model_int8.tfite"]\nmax_abs = 1e-9\n', "'model_int8.tfite' is neither")):
        (tmp_path / "t.toml").write_text(text)
        rc = main(["parity", str(tiny_model["keras"]), str(tiny_export.out), "--images", str(shapes_dataset / "val"),
                   "--thresholds", str(tmp_path / "t.toml")])
        assert rc == 2 and said in capsys.readouterr().err
    (tmp_path / "t.toml").write_text('["model_int9.tflite"]\nmax_abs = 1e-9\n')
    main(["parity", str(tiny_model["keras"]), str(tiny_export.out / "model_fp32.tflite"), "--images",
          str(shapes_dataset / "val"), "--thresholds", str(tmp_path / "t.toml")])
    err = capsys.readouterr().err
    assert "warning: --thresholds" in err and "model_int9.tflite match no checked file" in err, err


def test_a_file_of_another_model_is_a_usage_error_after_the_report(tiny_model, tiny_export, shapes_dataset,
                                                                    tmp_path, capsys):
    """A 4-class file beside the 3-class model's export was a parity failure (exit 1) like a bad int8 file; the
    report still lists every file, then one line says the pair is wrong (exit 2)."""
    import tensorflow as tf
    from conftest import build_tiny_classifier

    other = tmp_path / "other_model.tflite"
    other.write_bytes(tf.lite.TFLiteConverter.from_keras_model(build_tiny_classifier(n_classes=4)).convert())
    junit = tmp_path / "j.xml"
    rc = main(["parity", str(tiny_model["keras"]), str(tiny_export.out / "model_fp32.tflite"), str(other),
               "--images", str(shapes_dataset / "val"), "--junit", str(junit), "--preprocess", "raw"])
    out, err = capsys.readouterr()
    assert rc == 2, err
    assert "model_fp32.tflite" in out and "parity: FAILED" in out
    last = err.strip().splitlines()[-1]
    assert last.startswith("tledge parity: error: other_model.tflite: not an export of"), err
    assert last.endswith(", 4) differs from the reference (24, 3)"), err
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert cases["other_model.tflite"].find("failure") is not None
    assert cases["model_fp32.tflite"].find("failure") is None


def test_junit_never_replaces_an_input(tiny_model, tiny_export, shapes_dataset, tmp_path, capsys):
    """`--junit model.keras` reported PASSED and left 198 bytes of XML where the reference model was."""
    folder = tmp_path / "x"
    shutil.copytree(tiny_export.out, folder)
    ref = tmp_path / "model.keras"
    shutil.copy(tiny_model["keras"], ref)
    for target in (ref, folder / "model_fp32.tflite"):
        before = target.read_bytes()
        rc = main(["parity", str(ref), str(folder), "--images", str(shapes_dataset / "val"), "--junit", str(target)])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and "an input of this command" in err, err
        assert target.read_bytes() == before


def test_files_of_one_name_are_told_apart_and_a_file_named_twice_is_checked_once(tiny_model, tiny_export,
                                                                                 shapes_dataset, tmp_path, capsys):
    """Two export folders gave two rows named model_fp32.tflite (and two JUnit cases of that name); a folder and a
    file in it listed that file twice."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        shutil.copy(tiny_export.out / "model_fp32.tflite", tmp_path / name)
    junit = tmp_path / "j.xml"
    rc = main(["parity", str(tiny_model["keras"]), str(tmp_path / "a"), "--images", str(shapes_dataset / "val"),
               str(tmp_path / "a" / "model_fp32.tflite"), "--json", str(tmp_path / "b" / "model_fp32.tflite"),
               "--junit", str(junit)])  # files after options too (they were "unrecognized arguments")
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and [r["file"] for r in report["results"]] == ["a/model_fp32.tflite", "b/model_fp32.tflite"]
    assert [c.get("name") for c in ET.parse(junit).getroot().iter("testcase")] == ["a/model_fp32.tflite",
                                                                                   "b/model_fp32.tflite"]


def test_a_file_the_export_judged_is_judged_at_its_precision_again(tiny_model, tiny_export, shapes_dataset, tmp_path,
                                                                    capsys):
    """Session 37: a QAT model's model_fp32.tflite has int8 weights (its converter keeps the fake-quant): the export
    failed it as fp32, `tledge parity` passed it as dynamic by its tensors, so the CI gate passed what the manifest
    marks failed. A file its folder's manifest lists, unchanged, is judged at the manifest's precision."""
    from tledge.artifacts import sha256_of

    folder = tmp_path / "qat_like"
    shutil.copytree(tiny_export.out, folder)
    shutil.copy(folder / "model_int8.tflite", folder / "model_fp32.tflite")  # int8 tensors under the fp32 name
    manifest = json.loads((folder / "manifest.json").read_text())
    for e in manifest["files"]:
        if e["file"] == "model_fp32.tflite":
            f = folder / "model_fp32.tflite"
            e["sha256"], e["bytes"] = sha256_of(f), f.stat().st_size
    (folder / "manifest.json").write_text(json.dumps(manifest))
    args = ["--images", str(shapes_dataset / "val"), "--json"]
    assert main(["parity", str(tiny_model["keras"]), str(folder / "model_fp32.tflite")] + args) == 1
    (r,) = json.loads(capsys.readouterr().out)["results"]
    assert r["precision"] == "fp32" and not r["passed"]  # fp32's budget, as the export judged it
    loose = tmp_path / "loose"  # the same bytes outside an export folder: judged by its tensors
    loose.mkdir()
    shutil.copy(folder / "model_fp32.tflite", loose / "model_fp32.tflite")
    main(["parity", str(tiny_model["keras"]), str(loose / "model_fp32.tflite")] + args)
    (r,) = json.loads(capsys.readouterr().out)["results"]
    assert r["precision"] == "int8"


def test_exports_of_one_model_at_two_sizes_are_each_checked_against_their_own_reference(shapes_dataset, tmp_path):
    """Session 37: `tledge parity MODEL A B` traced the reference once, with A's contract: B's files, made at
    another input size (or another SavedModel signature), failed against it."""
    import keras

    i = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(keras.layers.Rescaling(1 / 127.5, offset=-1)(i))
    keras.Model(i, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))).save(
        tmp_path / "dyn.keras")
    for size in ("32x32", "40x40"):
        assert main(["export", str(tmp_path / "dyn.keras"), "--input-size", size, "--formats", "tflite", "--val",
                     str(shapes_dataset / "val"), "--out", str(tmp_path / size)]) == 0
    assert main(["parity", str(tmp_path / "dyn.keras"), str(tmp_path / "32x32"), str(tmp_path / "40x40"),
                 "--images", str(shapes_dataset / "val")]) == 0


def test_an_nchw_export_is_checked(tiny_model, shapes_dataset, tmp_path):
    """The reference takes NHWC pixels whatever an ONNX file's layout: `tledge parity` fed the traced reference the
    NCHW file's pixels and failed on every --layout nchw export (found in session 37)."""
    out = tmp_path / "nchw"
    assert main(["export", str(tiny_model["keras"]), "--layout", "nchw", "--val", str(shapes_dataset / "val"),
                 "--out", str(out)]) == 0
    assert main(["parity", str(tiny_model["keras"]), str(out / "model_fp32.onnx"), str(out / "model_fp32.tflite"),
                 "--images", str(shapes_dataset / "val")]) == 0
