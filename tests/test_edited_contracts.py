"""Contracts that are not what an export writes (edited by hand, copied, pushed to their limits): refused in one line,
never a different preprocessing or a score with exit 0."""
from __future__ import annotations

import json
import shutil

import pytest
from conftest import shared_asset
from tiny import FOREIGN, TINY

from tledge.cli import main
from tledge.contract import Contract
from tledge.errors import ContractError
from tledge.runtime import load

onnx = pytest.importorskip("onnx")


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _edited_onnx(tmp_path, change):
    """A copy of the tiny export's fp32 ONNX file with its embedded contract changed by `change(dict)`."""
    m = onnx.load(str(TINY / "model_fp32.onnx"))
    for prop in m.metadata_props:
        if prop.key == "tledge_contract":
            contract = json.loads(prop.value)
            change(contract)
            prop.value = json.dumps(contract)
    out = tmp_path / "edited.onnx"
    onnx.save(m, str(out))
    return out


def test_a_score_calibration_in_a_tledge_contract_is_not_applied(tmp_path, capsys):
    """Only a TFLite Support file's own calibration (checked when read) is applied: one written into a tledge
    contract changed the labels after parity had passed, or raised a KeyError / TypeError."""
    flat = {"transformation": "identity", "default_score": 0.5,  # applied, every image is class 0
            "sigmoids": [[1, 1, 5, None], [1, 1, -5, None], [1, 1, -5, None]]}
    path = _edited_onnx(tmp_path, lambda c: c["extra"].update(score_calibration=flat))
    images = sorted((TINY / "images").glob("*"))
    edited, plain = load(path), load(TINY / "model_fp32.onnx")
    got = [p[0].label for p in edited.classify(images)]
    assert got == [p[0].label for p in plain.classify(images)] and len(set(got)) == 3
    bad = _edited_onnx(tmp_path, lambda c: c["extra"].update(score_calibration={"x": 1}))
    code, out, err = _cli(capsys, "info", bad)
    assert code == 0 and "calibrated" not in out, err
    code, out, err = _cli(capsys, "run", bad, "--source", images[0])
    assert code == 0 and "Traceback" not in err


def test_a_preprocessing_that_squeezes_pixels_into_a_few_steps_is_refused(capsys):
    """-1..1 into a uint8 input of scale 1: two steps, class 0 for every image, exit 0."""
    code, _, err = _cli(capsys, "run", FOREIGN / "model_int8.tflite", "--source", TINY / "images", "--preprocess", "tf")
    assert code == 2 and "2 steps" in err and len(err.strip().splitlines()) == 1
    edited = Contract.from_json((TINY / "tledge.json").read_text()).replace(baked=False, norm="tf")
    with pytest.raises(ContractError, match="steps"):  # a contract given (or embedded), not inferred
        load(TINY / "model_int8.tflite", contract=edited)


def test_raw_pixels_do_not_go_into_int8():
    """An embedded contract edited to input_dtype int8 cast raw pixels to int8: 128..255 wrapped, class 0 for all."""
    edited = Contract.from_json((TINY / "tledge.json").read_text()).replace(input_dtype="int8")
    for name in ("model_int8.tflite", "model_fp32.onnx"):
        with pytest.raises(ContractError, match="raw pixels as int8"):
            load(TINY / name, contract=edited)
    assert load(TINY / "model_fp32.onnx", contract=edited.replace(input_dtype="uint8")).contract.baked


@pytest.mark.parametrize("mean, std", [(1e39, 1.0), (0.0, 1e-320), (0.0, 1e40), (1e38, 1e-3)])
def test_mean_and_std_that_overflow_float32_are_refused(mean, std):
    """Finite in float64, not in float32, where pixels are normalised: NaN scores with status ok, exit 0."""
    with pytest.raises(ContractError):
        Contract(8, 8, norm="custom", mean=(mean,), std=(std,), baked=False, input_dtype="float32")


def test_mean_that_overflows_is_one_line_on_the_command_line(capsys):
    code, out, err = _cli(capsys, "run", FOREIGN / "model_fp32.onnx", "--source", TINY / "images", "--mean", "1e39")
    assert code == 2 and "float32" in err and not out and len(err.strip().splitlines()) == 1


def test_a_file_made_elsewhere_in_an_export_folder_does_not_take_its_tledge_json(tmp_path):
    """Read without an interpreter (tledge info on the core install) or with tledge.metadata.read_contract, a
    Coral file copied into an export folder took the export's 48 x 48 contract and 3 labels."""
    from tledge.cli.info import offline_info
    from tledge.metadata import read_contract

    coral = shared_asset("coral_tflite_classifiers", "mobilenet_v1_0.25_128_quant.tflite")
    export = tmp_path / "export"
    shutil.copytree(TINY, export)
    shutil.copy(coral, export / "coral.tflite")
    assert read_contract(export / "coral.tflite") is None
    info = offline_info(export / "coral.tflite", "no interpreter (test)")
    assert info["contract"] is None and info["contract_origin"] is None and "circle" not in json.dumps(info)
    own = read_contract(export / "model_fp32.onnx")
    assert own is not None and own.labels == ("circle", "hstripes", "vstripes")
    assert read_contract(export / "model_int8.tflite").size == (48, 48)


def test_an_edited_labels_txt_beside_the_model_is_not_ignored(tmp_path):
    """tledge export read tledge.json's labels and ignored a labels.txt the user had changed beside it."""
    from tledge.cli.export_labels import export_labels
    from tledge.errors import TledgeError

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(TINY / "tledge.json", run / "tledge.json")
    shutil.copy(TINY / "labels.txt", run / "labels.txt")
    notes: list[str] = []
    assert export_labels(run / "model.keras", None, {}, notes.append) is None  # the two agree: tledge.json's
    (run / "labels.txt").write_text("round\nhstripes\nvstripes\n")
    with pytest.raises(TledgeError, match="line 1: 'round' against 'circle'"):
        export_labels(run / "model.keras", None, {}, notes.append)
    (run / "labels.txt").write_text("circle\nhstripes\n")
    with pytest.raises(TledgeError, match="2 names against 3"):
        export_labels(run / "model.keras", None, {}, notes.append)
    assert export_labels(run / "model.keras", str(run / "labels.txt"), {}, notes.append) == str(run / "labels.txt")


def test_labels_are_checked_against_the_folders_that_give_accuracy(tmp_path):
    """--labels is matched against the class folders up front; --calib's folders need no labels when --val is
    given (day/ and night/ calibration folders were refused beside a --val of loose images)."""
    from tledge.cli.export_labels import export_labels
    from tledge.errors import TledgeError

    labels = tmp_path / "labels.txt"
    labels.write_text("circle\nhstripes\nvstripes\n")
    for folder in ("flat", "calib/day", "calib/night", "val/circle", "val/hstripes", "val/vstripes", "wrong/a",
                   "wrong/b"):
        (tmp_path / folder).mkdir(parents=True)
        shutil.copy(next((TINY / "images").iterdir()), tmp_path / folder / "0.jpg")
    (tmp_path / "flat" / "0.jpg").rename(tmp_path / "flat.jpg")
    shutil.copy(tmp_path / "flat.jpg", tmp_path / "flat" / "0.jpg")
    given, notes = str(labels), []
    assert export_labels(tmp_path / "m.keras", given, {"--val": str(tmp_path / "flat"),
                                                        "--calib": str(tmp_path / "calib")}, notes.append) == given
    assert export_labels(tmp_path / "m.keras", given, {"--val": str(tmp_path / "val"),
                                                        "--calib": str(tmp_path / "calib")}, notes.append) == given
    with pytest.raises(TledgeError, match="make the file name every class folder"):
        export_labels(tmp_path / "m.keras", given, {"--val": str(tmp_path / "wrong"), "--calib": None}, notes.append)


def test_contract_errors_say_which_contract(tmp_path, capsys):
    """The embedded contract, or which tledge.json: 'mean needs 3 values' did not say where."""
    path = _edited_onnx(tmp_path, lambda c: c.update(labels=["circle", "hstripes"]))
    code, _, err = _cli(capsys, "run", path, "--source", TINY / "images")
    assert code == 2 and "the contract embedded in edited.onnx: 2 labels but the model has 3 outputs" in err
    path = _edited_onnx(tmp_path, lambda c: c.update(mean=[1, 2], std=[1, 2], norm="custom"))
    code, _, err = _cli(capsys, "info", path)
    assert code == 2 and "the contract embedded in edited.onnx: mean needs 3 values" in err
    export = tmp_path / "export"
    shutil.copytree(TINY, export)
    (export / "tledge.json").write_text((TINY / "manifest.json").read_text())  # a manifest copied over it
    with pytest.raises(ContractError, match=r"tledge.json: format 'tledge.export' is not a tledge contract's"):
        Contract.load(export / "tledge.json")


def test_nan_outputs_are_errors_not_labels(tmp_path, capsys):
    """A file giving NaN (uninitialised variables) labelled every image, "ok", exit 0; --json wrote NaN."""
    from onnx import TensorProto, helper

    m = onnx.load(str(FOREIGN / "model_fp32.onnx"))
    out = m.graph.output[0].name
    m.graph.node[-1].output[0] = "pre_nan"  # the output, times NaN
    m.graph.initializer.append(helper.make_tensor("nan", TensorProto.FLOAT, [], [float("nan")]))
    m.graph.node.append(helper.make_node("Mul", ["pre_nan", "nan"], [out]))
    path = tmp_path / "nan.onnx"
    onnx.save(m, str(path))
    code, out_text, err = _cli(capsys, "run", path, "--source", TINY / "images", "--json", "--preprocess", "raw")
    rows = [json.loads(line) for line in out_text.splitlines()]
    assert rows and all(r["status"] == "error" and "NaN" in r["error"] for r in rows), rows[:2]
    assert "NaN," not in out_text and code != 0


def test_info_shows_labels_holding_commas_apart(capsys):
    """ImageNet's labels hold commas ("tench, Tinca tinca"): joined with commas, one label read as two."""
    coral = shared_asset("coral_tflite_classifiers", "mobilenet_v1_0.25_128_quant.tflite")
    code, out, _ = _cli(capsys, "info", coral)
    assert code == 0 and "1001: background; tench, Tinca tinca; goldfish, Carassius auratus;" in out
    code, out, _ = _cli(capsys, "info", TINY / "model_int8.tflite")
    assert code == 0 and "3: circle, hstripes, vstripes" in out


def test_a_gray_file_against_a_colour_reference_says_so(tmp_path, tiny_model, shapes_dataset, capsys):
    """An RGB model against a grayscale export: "a 1-channel contract must use color='gray' and a 3-channel one
    rgb/bgr" named neither the reference nor the file."""
    gray = _edited_onnx(tmp_path, lambda c: c.update(channels=1, color="gray"))
    code, _, err = _cli(capsys, "parity", tiny_model["keras"], gray, "--images", shapes_dataset / "val")
    assert code == 2 and "is for a 1-channel input but model.keras takes 3 channel(s)" in err, err
