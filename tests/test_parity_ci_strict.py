"""Parity's answers to CI must not be looser than what the user wrote (helper 134): a thresholds entry's value equal
to the name's default was dropped, an empty file or a JSON key given twice loosened the check silently, top_k 1.5 was
a hidden top-2, files --golden could not check vanished from the JUnit XML, --json wrote Infinity, a misspelt file
name in the pytest helper's thresholds said nothing, and the table printed control characters raw."""
from __future__ import annotations

import json
import os
import sys
import warnings
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from tiny import TINY

from tledge.artifacts import Thresholds
from tledge.cli import main
from tledge.errors import TledgeError, TledgeWarning
from tledge.parity import ParityReport, ParityResult, load_thresholds, thresholds_from_dict


def _result(name: str, passed: bool = True, max_abs: float = 0.1) -> ParityResult:
    return ParityResult(file=name, format="tflite", precision="int8", images=3, max_abs_error=max_abs,
                        mean_abs_error=max_abs, median_image_max_abs=0.0, top1_agreement=1.0, accuracy=None,
                        reference_accuracy=None, passed=passed, failures=[] if passed else ["could not run"])


def test_a_file_name_entry_keeps_every_value_it_gives():
    """min_agreement = 1.0 for mine.tflite (the bare default) checked an int8 file at int8's 0.98; max_abs = 1e-4 for
    model_fp32.tflite (fp32's default) was dropped for an int8 file of that name."""
    table = thresholds_from_dict({"mine.tflite": {"min_agreement": 1.0},
                                  "model_fp32.tflite": {"max_abs": 1e-4, "min_agreement": 0.9}})
    mine = Thresholds.lookup(table, "mine.tflite", "int8")
    assert mine.min_agreement == 1.0 and mine.max_accuracy_drop == Thresholds.for_precision("int8").max_accuracy_drop
    named = Thresholds.lookup(table, "model_fp32.tflite", "int8")
    assert named.max_abs == 1e-4 and named.min_agreement == 0.9
    stored = {k: t.overrides() for k, t in table.items()}  # as golden.npz keeps them, read back by --golden
    assert json.loads(json.dumps(stored)) == {"mine.tflite": {"min_agreement": 1.0},
                                              "model_fp32.tflite": {"max_abs": 1e-4, "min_agreement": 0.9}}
    assert Thresholds.lookup(thresholds_from_dict(stored), "mine.tflite", "int8") == mine


def test_fidelity_gate_is_kept_with_a_files_int8_entry():
    """--fidelity over a file's int8 entry: golden.npz must keep the gate the export used."""
    from tledge.export.pipeline import ExportConfig, thresholds_for

    used = thresholds_for(ExportConfig(fidelity=0.95, thresholds=thresholds_from_dict({"int8": {"max_abs": 0.5}})))
    assert used["int8"].overrides() == {"max_abs": 0.5, "min_agreement": 0.95, "min_topk_agreement": 0.95}


@pytest.mark.parametrize("name, text, said", [
    ("empty.toml", "", "sets no thresholds"),
    ("empty.json", "{}", "sets no thresholds"),
    ("twice.json", '{"int8": {"max_abs": 1e-6}, "fp32": {}, "int8": {"min_agreement": 0.98}}', "'int8' is given twice"),
    ("k.toml", "[int8]\ntop_k = 1.5\n", "int8.top_k must be a whole number"),
    ("m.json", '{"int8": {"many_classes": 20.0}}', "int8.many_classes must be a whole number"),
    ("nan.json", '{"int8": {"max_abs": NaN}}', "NaN is no number"),  # (read as null: the check switched off)
])
def test_thresholds_files_that_would_loosen_the_check_are_refused(tmp_path, name, text, said):
    (tmp_path / name).write_text(text)
    with pytest.raises(TledgeError, match=said):
        load_thresholds(tmp_path / name)


def test_golden_files_without_a_runtime_are_skipped_test_cases(tmp_path, monkeypatch, capsys):
    """A board without onnxruntime: the ONNX files were absent from the XML (2 of 2 passed, a green build)."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    junit = tmp_path / "golden.xml"
    rc = main(["parity", "--golden", str(TINY), "--junit", str(junit), "--json"])
    out = json.loads(capsys.readouterr().out)
    root = ET.parse(junit).getroot()
    skipped = [c.get("name") for c in root.iter("testcase") if c.find("skipped") is not None]
    assert rc == 0 and skipped == ["model_fp32.onnx", "model_int8.onnx"]
    assert root.get("skipped") == "2" and int(root.get("tests")) == len(list(root.iter("testcase")))
    assert [s["file"] for s in out["skipped"]] == skipped


def test_json_has_no_infinity_and_the_table_no_control_characters():
    report = ParityReport(images=3, results=[_result("ctl\x1b[2J\nx.tflite", passed=False, max_abs=float("inf"))])
    parsed = json.loads(report.to_json(), parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert parsed["results"][0]["max_abs_error"] is None
    table = report.table()
    assert "\x1b" not in table and len(table.splitlines()) == 2 and "ctl\\x1b[2J\\x0ax.tflite" in table


def test_the_pytest_helper_warns_of_a_file_name_no_file_has(monkeypatch):
    """assert_parity(thresholds={"model-int8.tflite": ...}) checked model_int8.tflite at int8's defaults, silently
    (the CLI warns)."""
    from tledge.export import check
    from tledge.testing import assert_parity

    monkeypatch.setattr(check, "parity", lambda *a, **k: ParityReport(images=3, results=[_result("model_int8.tflite")]))
    with pytest.warns(TledgeWarning, match="model-int8.tflite match no checked file"):
        assert_parity("m.keras", "exp", "val", thresholds={"model-int8.tflite": {"max_abs": 1e-6}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_parity("m.keras", "exp", "val", thresholds={"model_int8.tflite": {"max_abs": 1.0}})
    assert np.isfinite(_result("x").max_abs_error)


def test_fidelity_against_a_files_int8_agreement_equal_to_the_default(tmp_path, capsys):
    """{"int8": {"min_agreement": 0.98}} with --fidelity 0.9: the file's value (int8's default) was overridden without
    a word, while 0.97 was refused."""
    import zipfile

    with zipfile.ZipFile(tmp_path / "m.keras", "w") as z:
        z.writestr("config.json", "{}")
    (tmp_path / "t.json").write_text('{"int8": {"min_agreement": 0.98}}')
    rc = main(["export", str(tmp_path / "m.keras"), "--thresholds", str(tmp_path / "t.json"), "--fidelity", "0.9",
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "both set the int8 agreement" in err, err


def test_a_reader_looking_at_the_lock_does_not_refuse_an_export(tmp_path):
    """holder()'s momentary shared lock made a real export fail "another tledge export is writing" (1 in 3000)."""
    import fcntl
    import threading

    from tledge.folderlock import FolderLock

    lock = tmp_path / ".tledge-export.lock"
    lock.write_text("")
    fd = os.open(lock, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # a reader's look, released 30 ms later
    threading.Timer(0.03, lambda: (fcntl.flock(fd, fcntl.LOCK_UN), os.close(fd))).start()
    FolderLock(tmp_path).acquire().release()


def test_float32_policy_needs_keras_on_tensorflow(monkeypatch):
    pytest.importorskip("keras")
    from tledge.errors import MissingDependency
    from tledge.export import float32

    monkeypatch.setenv("KERAS_BACKEND", "jax")  # a traceback (No module named 'jax') before the loader's one line
    with pytest.raises(MissingDependency, match="KERAS_BACKEND"):
        with float32.policy():
            pass
