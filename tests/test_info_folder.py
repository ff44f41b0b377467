"""`tledge info EXPORT_DIR` judges the folder as `tledge run` and `tledge bundle` do (moved from test_manifest.py)."""
from __future__ import annotations

import json

from test_manifest import _placeholder_export

from tledge.cli import main


def test_info_on_a_folder_judges_it_as_run_and_bundle_do(tmp_path, capsys):
    """A missing model file made `tledge info DIR` exit 2 while run and bundle leave it out with a note."""
    d = tmp_path / "e"
    _placeholder_export(d)
    (d / "model_int8.onnx").unlink()
    assert main(["info", str(d)]) == 0
    out, err = capsys.readouterr()
    assert "model_int8.onnx" in out and "<- MISSING" in out
    assert "model_int8.onnx listed in manifest.json but missing: left out" in err
    assert main(["info", str(d), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["missing"] == ["model_int8.onnx"]
    (d / "model_int8.tflite").write_bytes(b"changed")
    assert main(["info", str(d)]) == 2
    assert "model_int8.tflite: changed" in capsys.readouterr().err


def test_model_options_on_a_folder_are_refused(tmp_path, capsys):
    """`tledge info EXPORT --device rpi44` (or --threads 0, --labels /nonexist) exited 0 and used none of them."""
    d = tmp_path / "e"
    _placeholder_export(d)
    for opts, flag in ((["--device", "rpi44"], "--device"), (["--threads", "0"], "--threads"),
                       (["--labels", "/nonexist"], "--labels"), (["--delegate", "x.so"], "--delegate")):
        assert main(["info", str(d), *opts]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{flag} is for loading one model file" in err, err
