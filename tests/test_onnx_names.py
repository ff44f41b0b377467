"""The same model exported twice in one process gives the same ONNX bytes. tf2onnx numbers the names it makes
(`batchnorm/mul_1__6`, `const_fold_opt__21`) from a counter of its module that is never reset, so a second export (a
notebook, a sweep, a test session) wrote the same graph under other names (`mul_1__29`): not byte-identical, and a
sha256 comparison of two exports of one model said they differ."""
import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")


def test_a_second_export_in_one_process_writes_the_same_onnx_files(shapes_dataset, tmp_path):
    from conftest import build_tiny_classifier

    from tledge.export.pipeline import ExportConfig, export

    build_tiny_classifier().save(tmp_path / "m.keras")
    outs = [tmp_path / "first", tmp_path / "second"]
    for out in outs:  # fp32 by tf2onnx from the traced model, int8 by a second conversion and onnxruntime's QDQ
        export(tmp_path / "m.keras", ExportConfig(out=out, formats=("onnx",), int8=True,
                                                  calib=str(shapes_dataset / "train"), val=str(shapes_dataset / "val")))
    names = sorted(p.name for p in outs[0].glob("*.onnx"))
    assert names == ["model_fp32.onnx", "model_int8.onnx"] == sorted(p.name for p in outs[1].glob("*.onnx"))
    for name in names:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def test_a_second_translation_of_a_tflite_file_is_the_same_graph():
    """tf2onnx's TFLite reader (tledge.export.onnx_translate: an int8 ONNX file translated from the int8 TFLite file)
    also visits nodes in an order that changes from run to run: two translations of one file numbered its names
    otherwise and ordered its initializers otherwise, in one process as in two."""
    from tiny import TINY

    from tledge.contract import Contract
    from tledge.export import onnx_translate
    from tledge.images import iter_image_files

    contract = Contract.load(TINY / "tledge.json")
    x = np.stack([contract.replace(input_dtype="float32").prepare(f)
                  for f in sorted(iter_image_files(TINY / "images"))[:4]]).astype(np.float32)
    data = (TINY / "model_int8.tflite").read_bytes()
    first, second = (onnx_translate.from_tflite(data, "nhwc", x)[0].SerializeToString() for _ in range(2))
    assert first == second


def test_the_first_name_is_what_a_fresh_tf2onnx_starts_at():
    """fresh_names resets tf2onnx's name counter to onnx.FIRST_NAME, the value a fresh import of tf2onnx.convert (as
    the export imports it) leaves: a tf2onnx release that starts elsewhere would make a first export's names differ
    from a second's again."""
    import os
    import subprocess
    import sys

    from tledge.export.onnx import FIRST_NAME

    got = subprocess.run([sys.executable, "-c", "import tf2onnx.convert, tf2onnx.utils as u; print(u.INTERNAL_NAME)"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert got.returncode == 0 and int(got.stdout.split()[-1]) == FIRST_NAME, got.stderr[-2000:]
