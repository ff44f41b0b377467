"""`--formats` wins over a --device profile, as `export --help` says (helper 143): a named format the profile has no
file of was dropped without a word (`--device coral-usb --formats tflite,onnx` wrote no ONNX file, exit 0), and
`--device coral-usb --formats onnx` wrote ONNX files only, int8-only, for a board that runs none of them."""
from __future__ import annotations

import pytest


def test_a_named_format_is_kept_when_the_profile_has_no_file_of_it():
    from tledge.devices.options import resolve

    pairs = resolve("coral-usb", formats=["tflite", "onnx"]).pairs
    assert ("tflite", "int8") in pairs and any(f == "onnx" for f, _ in pairs), pairs
    assert {f for f, _ in resolve("rpi4", formats=["onnx"]).pairs} == {"onnx"}


@pytest.mark.parametrize("formats", ["onnx", "tflite,onnx"])
def test_an_onnx_file_for_the_edge_tpu_is_refused_before_loading(tiny_model, shapes_dataset, tmp_path, capsys,
                                                                  formats):
    from tledge.cli import main

    code = main(["export", str(tiny_model["keras"]), "--device", "coral-usb", "--formats", formats, "--calib", str(shapes_dataset / "train"),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "runs compiled TFLite int8 files only" in err, err
    assert not (tmp_path / "out").exists()
