"""Options accepted and then ignored, or applied to other files than the user meant: each is applied as asked or
refused in one line (with test_bad_inputs.py's check: exit 2, one line, nothing written)."""
from __future__ import annotations

import json

import pytest
from test_bad_inputs import Case, assert_refused, export, images, parity, run, tfl, thresholds
from tiny import TINY

from tledge.cli import main
from tledge.errors import TledgeError

# empty values, abbreviations, outputs over inputs, options accepted and ignored: a traceback, the current folder, or
# nothing said before; each exits 2 with one line and writes nothing, as test_bad_inputs' catalogue
OPTION_CASES = [
    Case("train-out-empty", lambda t: ["train", images(t), "--out", ""], "--out is empty"),  # trained into "."
    Case("run-csv-empty", lambda t: run(t, "--csv="), "--csv is empty"),  # wrote no CSV, exit 0
    Case("export-formats-comma", lambda t: export(t, "--formats", ","), "names no format"),  # meant both
    Case("export-abbreviated", lambda t: export(t, "--fp"), "unrecognized arguments: --fp"),  # meant --fp16
    Case("run-csv-is-the-model", lambda t: run(t, "--csv", tfl(t)), "an input of this command"),  # replaced it
    Case("export-fidelity-without-int8", lambda t: export(t, "--fidelity", "0.9"), "--fidelity is about int8"),
    Case("export-explain-without-int8", lambda t: export(t, "--explain"), "--explain is about int8 files"),
    Case("export-repair-time-without-int8", lambda t: export(t, "--repair-time", "5"), "--repair-time is about"),
    Case("export-int8-only-onnx", lambda t: export(t, "--int8", "--int8-only", "--calib", images(t), "--formats",
                                                   "onnx"), "--int8-only is for TFLite"),
    Case("export-fidelity-and-thresholds", lambda t: thresholds(t, '{"int8": {"min_agreement": 0.9}}') + [
        "--int8", "--calib", images(t), "--fidelity", "0.95"], "both set the int8 agreement"),
    Case("parity-threads-zero-without-golden", lambda t: parity(t, "--threads", "0"), "--threads go with --golden"),
]


@pytest.mark.parametrize("case", OPTION_CASES, ids=[c.id for c in OPTION_CASES])
def test_option_refused_in_one_line_writing_nothing(case, tmp_path, capsys, monkeypatch):
    assert_refused(case, tmp_path, capsys, monkeypatch)


def test_providers_choose_the_onnx_file_of_an_export_folder():
    """`tledge run EXPORT --providers ...` ran the folder's int8 TFLite file with the providers ignored."""
    from tledge.runtime import load

    assert load(TINY).path.suffix == ".tflite"  # the folder's default choice
    m = load(TINY, providers=["CPUExecutionProvider"])
    assert m.path.suffix == ".onnx" and m.provider == "CPUExecutionProvider"
    with pytest.raises(TledgeError, match="pass one of them"):
        load(TINY, providers=["CPUExecutionProvider"], delegates=["libedgetpu.so.1"])


def test_parity_refuses_preprocess_that_no_file_would_use(tmp_path):
    """Every exported file carries its contract: --preprocess caffe was silently ignored (run and info refuse it)."""
    from tledge.export.check import parity

    with pytest.raises(TledgeError, match="--preprocess caffe: every exported file carries its contract"):
        parity(tmp_path / "never-loaded.keras", [TINY / "model_fp32.tflite"], TINY / "images", preprocess="caffe")


def test_export_says_thresholds_for_files_it_does_not_write(tmp_path, capsys, monkeypatch):
    """A misspelt file name in export's --thresholds left that file on its defaults without a word (parity says it)."""
    import cv2
    import numpy as np

    from tledge.export import pipeline

    class Stop(Exception):
        pass

    def stop(*a, **k):
        raise Stop

    monkeypatch.setattr(pipeline, "export", stop)  # what is said before the export starts is what is tested
    (tmp_path / "m.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    for c in ("a", "b"):
        (tmp_path / "v" / c).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "v" / c / "0.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "t.json").write_text(json.dumps({"modl_fp32.tflite": {"max_abs": 0}, "model_fp32.onnx": {}}))
    with pytest.raises(Stop):
        main(["export", str(tmp_path / "m.h5"), "--val", str(tmp_path / "v"), "--thresholds", str(tmp_path / "t.json"),
              "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert "modl_fp32.tflite match no file this export writes" in err and "model_fp32.onnx match" not in err, err


def test_run_without_opencv_says_so_in_one_line(tmp_path, capsys, monkeypatch):
    """A --no-deps install without OpenCV (a Jetson venv without the system's): a video source traced back and every
    image of a folder was "SKIPPED: ModuleNotFoundError"."""
    import sys

    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` fails as it does where it is not installed
    for source in (str(TINY / "images"), str(tmp_path / "clip.mp4")):
        assert main(["run", str(TINY), "--source", source]) == 2
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1 and "cv2 is not installed" in err, err


def test_bench_runs_no_code_from_the_current_folder(tmp_path, capsys, monkeypatch):
    """bench measures in a fresh `python -m ...` process, which put the current folder first on sys.path: a numpy.py
    beside the model (a downloaded model folder) ran."""
    (tmp_path / "numpy.py").write_text("open('PWNED', 'w')\nraise SystemExit('the numpy.py of the folder ran')\n")
    monkeypatch.chdir(tmp_path)
    assert main(["bench", str(TINY / "model_int8.tflite"), "--runs", "2", "--warmup", "0"]) == 0, capsys.readouterr()
    assert not (tmp_path / "PWNED").exists()


def test_predict_reads_arrays_by_their_values_not_their_bytes():
    """A big-endian float32 array (`>f4`: dtype name float32) was fed as its bytes (66 of 153 labels changed); float
    pixels into a uint8 input wrapped (256.0 became 0: the black image's scores) and were truncated."""
    import numpy as np

    from tledge.runtime import load

    fp32, int8 = load(TINY / "model_fp32.tflite"), load(TINY / "model_int8.tflite")
    x = fp32.prepare(str(sorted((TINY / "images").iterdir())[0]))[None]
    np.testing.assert_array_equal(fp32.predict(x.astype(">f4")), fp32.predict(x))
    shape = (1, *int8.contract.input_shape)
    white = int8.predict(np.full(shape, 255, np.uint8))
    np.testing.assert_array_equal(int8.predict(np.full(shape, 256.0, np.float32)), white)
    np.testing.assert_array_equal(int8.predict(np.full(shape, 254.6, np.float32)), white)
    with pytest.raises(TledgeError, match="NaN"):
        int8.predict(np.full(shape, np.nan, np.float32))


def test_classify_refuses_float_images_that_are_not_pixels():
    """A tf-normalised (-1..1), mean/std-normalised or 16-bit float array was clipped into pixels without a word (36
    to 66 of 153 labels changed); a resize's overshoot of 0..255 data is still clipped."""
    import numpy as np

    from tledge.errors import ImageError
    from tledge.images import to_uint8_rgb

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 8, 3)).astype(np.float32)
    for bad in (img / 127.5 - 1, (img - 120) / 58, img * 257):
        with pytest.raises(ImageError, match="expected pixels in 0..1 or 0..255"):
            to_uint8_rgb(bad)
    overshoot = img.copy()
    overshoot[0, 0, 0], overshoot[0, 1, 0] = -16, 272
    assert to_uint8_rgb(overshoot)[0, 0, 0] == 0 and to_uint8_rgb(img / 255).dtype == np.uint8


def test_classify_reads_a_generator_a_batch_at_a_time():
    """classify(generator) pulled every frame before the first batch ran (60 frames of 720p: +166 MB)."""
    from tledge.runtime import load

    m = load(TINY / "model_fp32.tflite")
    images = sorted((TINY / "images").iterdir())
    pulled = []

    def frames():
        for p in images * 3:
            pulled.append(p)
            yield str(p)

    seen = []
    real = m.run_inputs
    m.run_inputs = lambda x: (seen.append(len(pulled)), real(x))[1]
    out = m.classify(frames(), batch=2)
    assert len(out) == 3 * len(images) and seen[0] == 2  # the first batch ran after two frames were read
    assert [p[0].index for p in out[:len(images)]] == [p[0].index for p in m.classify([str(p) for p in images])]
