"""What the Edge TPU path says (helper 143): a compiled file run without --device got LiteRT's custom-op advice;
an fp32 file was told to go through edgetpu_compiler (int8 files only); the export's compile note named the deleted
staging folder and ExportResult.written left the compiled file out; a failing 48/49 read "0.980 < 0.98"."""
from __future__ import annotations

from tiny import IMAGES, TINY, need


def test_an_edge_tpu_file_without_the_device_says_how_to_run_it():
    from tledge.runtime.backends import load_reason

    said = load_reason(RuntimeError("Encountered unresolved custom op: edgetpu-custom-op. See instructions: "
                                    "https://www.tensorflow.org/lite/guide/ops_custom Node number 0 failed"))
    assert "--device coral-usb" in said and "libedgetpu" in said and "ops_custom" not in said


def test_only_an_integer_file_is_told_to_be_compiled():
    from tledge.runtime.device import device_hints

    need("model_int8.tflite")
    fp32 = device_hints("coral-usb", "tflite", TINY / "model_fp32.tflite").notes[0]
    int8 = device_hints("coral-usb", "tflite", TINY / "model_int8.tflite").notes[0]
    assert "edgetpu_compiler" not in fp32 and "int8 files only" in fp32
    assert "edgetpu_compiler -s -o" in int8 and "model_int8_edgetpu.tflite" in int8


def test_a_failing_agreement_shows_the_digits_that_make_it_fail():
    from tledge.parity import below

    assert below(48 / 49, 0.98) == "0.9796" and below(0.9, 0.98) == "0.900"


def test_the_compile_note_names_the_export_folder_and_the_file_is_written(tiny_model, shapes_dataset, tmp_path,
                                                                          monkeypatch):
    from test_devices_edgetpu import install_fake_compiler

    from tledge.export.pipeline import ExportConfig, export

    install_fake_compiler(tmp_path, monkeypatch)
    out = tmp_path / "e"
    cfg = ExportConfig(out=out, formats=("tflite",), int8=True, compile_edgetpu=True, repair=False,
                       calib=str(shapes_dataset / "train"), val=str(shapes_dataset / "val"))
    res = export(tiny_model["keras"], cfg)
    note = next(n for n in res.report.notes if n.startswith("edgetpu: "))
    assert f"-> {out / 'model_int8_edgetpu.tflite'}" in note and ".tledge-staging" not in note
    assert out / "model_int8_edgetpu.tflite" in res.files
    assert ".tledge-staging" not in (out / "parity.md").read_text()
    assert IMAGES  # (the tiny set is there: the export above read its own shapes set)
