"""Files whose standard TFLite metadata carries score calibration (TFLite Support's ScoreCalibrationOptions and a
TENSOR_AXIS_SCORE_CALIBRATION file, written by TFLite Support's own writer: tests/assets/make_calibrated.py). The
TFLite Task Library applies it; `tledge run` ranked the uncalibrated scores, another top-1 on some images, exit 0
(a helper hunt). The reference is the Task Library's own scores, recorded when the asset was made."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny import IMAGES

from tledge.cli import main

CAL = Path(__file__).resolve().parent / "assets" / "calibrated"
TASK_LIBRARY = {name: [row[str(i)] for i in range(len(row))]
                for name, row in json.loads((CAL / "task_library.json").read_text()).items()}


def test_scores_are_the_task_librarys():
    if not _tflite_runtime():
        pytest.skip("no TFLite runtime")
    from tledge.runtime import load

    m = load(CAL / "model_int8.tflite")
    cal = m.contract.extra["score_calibration"]
    assert cal["transformation"] == "inverse_logistic" and cal["default_score"] == pytest.approx(0.05)
    got = np.array([[p.score for p in sorted(m.classify(img, top_k=3), key=lambda p: p.index)] for img in IMAGES])
    want = np.array([TASK_LIBRARY[img.name] for img in IMAGES])
    np.testing.assert_allclose(got, want, atol=2e-6)
    raw = np.array([[p.score for p in sorted(load(CAL.parent / "tiny" / "foreign" / "model_int8.tflite")
                                              .classify(img, top_k=3), key=lambda p: p.index)] for img in IMAGES])
    assert (raw.argmax(1) != want.argmax(1)).any()  # the case this is about: calibration changes some top-1


def test_run_and_info_say_it(capsys, tmp_path):
    if not _tflite_runtime():
        pytest.skip("no TFLite runtime")
    vstripes = [p for p in IMAGES if p.name.startswith("vstripes")]
    assert main(["run", str(CAL / "model_int8.tflite"), "--source", str(vstripes[0]), "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    best = int(np.argmax(TASK_LIBRARY[vstripes[0].name]))
    assert row["top"][0]["index"] == best
    assert main(["info", str(CAL / "model_int8.tflite")]) == 0
    assert "score calibration" in capsys.readouterr().out


def _tflite_runtime() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) is not None for m in ("ai_edge_litert", "tflite_runtime"))


@pytest.mark.parametrize("text, why", [(b"1,1,0\n1,1,0\n", "2 calibration lines for 3 outputs"),
                                       (b"1,1\n\n\n", "line 1 of c.txt has 2 values")])
def test_a_calibration_it_cannot_apply_is_said_and_left_out(text, why):
    from tledge.errors import TledgeWarning
    from tledge.runtime.backends import TensorInfo
    from tledge.runtime.foreign import infer_contract
    from tledge.std_metadata import FILE_SCORE_CALIBRATION, AssociatedFile, StandardMetadata, TensorMd

    out = TensorMd(calibration=("identity", 0.0), files=(AssociatedFile("c.txt", FILE_SCORE_CALIBRATION),))
    std = StandardMetadata(outputs=(out,), packed={"c.txt": text})
    with pytest.warns(TledgeWarning, match=f"score calibration is not applied: {why}"):
        c = infer_contract(TensorInfo("x", (1, 8, 8, 3), "uint8"), TensorInfo("y", (1, 3), "float32"), standard=std)
    assert "score_calibration" not in c.extra and why in c.extra["score_calibration_ignored"]
