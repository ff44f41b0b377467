"""Machine-readable outputs as strict readers take them (helper 140): NaN and Infinity read from a sidecar or a file
made elsewhere went back out into tledge.json, manifests and `info --json`; JUnit failure bodies and golden.npz's
meta held Infinity; `info --json` wrote the raw bytes of a name that is not UTF-8; CSV cells ran as spreadsheet
formulas; the summary counted skipped inputs as frames per second; `doctor --json` changed a number into a string;
`parity --golden` on an export where no file passed said "copy the folder again"."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny import IMAGES, TINY

from tledge.cli import main

REPO = Path(__file__).resolve().parents[1]


def _strict(text: str):
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))


def test_non_numbers_read_are_written_back_as_null():
    from tledge.contract import Contract
    from tledge.safejson import loads_json

    assert loads_json('{"a": NaN, "b": [Infinity, -Infinity, 1.5]}') == {"a": None, "b": [None, None, 1.5]}
    c = Contract(8, 8, labels=("a", "b"), extra={"calibrated_threshold": float("nan")})
    assert _strict(c.to_json())["extra"]["calibrated_threshold"] is None


def test_junit_bodies_and_golden_meta_hold_no_infinity(tmp_path):
    from tledge.parity import ParityReport, ParityResult, thresholds_from_dict
    from tledge.runtime import golden

    bad = ParityResult("m.tflite", "tflite", "int8", 3, float("inf"), float("inf"), float("inf"), 0.0, None, None,
                       False, ["could not run"])
    assert "Infinity" not in ParityReport(images=3, results=[bad]).to_junit()
    ref = np.eye(3, dtype=np.float32)
    g = golden.from_export(np.zeros((3, 4, 4, 3), np.uint8), ref, None, None, None,
                           thresholds_from_dict({"fp32": {"max_abs": float("inf")}}))
    golden.save(g, tmp_path / "golden.npz")
    meta = _strict(str(np.load(tmp_path / "golden.npz")["meta"]))
    assert meta["thresholds"] == {"fp32": {"max_abs": None}}  # (null: the check off, what inf meant)


def test_csv_cells_never_start_a_formula(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text('=HYPERLINK("http://evil.example/","c")\n+b\n@c\n')
    src = tmp_path / "=1+2.jpg"
    shutil.copy(IMAGES[0], src)
    assert main(["run", str(TINY / "foreign" / "model_int8.tflite"), "--labels", str(labels), "--source", str(src),
                 "--csv", str(tmp_path / "o.csv"), "--top-k", "3", "-q"]) == 0
    row = next(csv.DictReader(open(tmp_path / "o.csv", newline="")))
    for cell in (row["source"], row["label"], row["top"]):
        assert not cell.startswith(("=", "+", "-", "@")), row
    assert row["label"].lstrip("'") in ('=HYPERLINK("http://evil.example/","c")', "+b", "@c")


def test_info_json_is_utf8_for_a_name_that_is_not(tmp_path):
    odd = tmp_path / os.fsdecode(b"m\xe9.tflite")
    shutil.copy(TINY / "model_fp32.tflite", odd)
    p = subprocess.run([sys.executable, "-m", "tledge", "info", str(odd), "--json"], capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "utf-8:strict"}, timeout=120)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    _strict(p.stdout.decode("utf-8"))


def test_frames_per_second_count_frames_classified_and_doctor_keeps_types(monkeypatch):
    from tledge.runtime.doctor import threads
    from tledge.runtime.pipeline import Summary

    s = Summary(source="x")
    s.skipped, s.elapsed_s = 1, 0.5
    assert s.fps == 0.0
    monkeypatch.setenv("TLEDGE_THREADS", "nan")
    th = threads()
    assert th["default"] is None and "TLEDGE_THREADS" in th["error"]


def test_golden_check_of_an_export_where_no_file_passed(tmp_path, capsys):
    d = tmp_path / "exp"
    shutil.copytree(TINY, d, ignore=shutil.ignore_patterns("foreign", "images", "reference.json"))
    m = json.loads((d / "manifest.json").read_text())
    for e in m["files"]:
        if e["role"] == "model":
            e["verdict"] = "fail"
    (d / "manifest.json").write_text(json.dumps(m))
    assert main(["parity", "--golden", str(d)]) == 2
    err = capsys.readouterr().err
    assert "no file of this export passed parity at export" in err and "copy the whole" not in err, err
