"""`tledge run`, `tledge info`, `tledge bench` end to end, and the no-TensorFlow guarantee."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, shared_asset
from test_runtime_sources import FlakyCamera, odd_folder, video  # noqa: F401  (fixtures)
from tiny import CLASSES, FOREIGN, MODELS, REF, TINY, images_of, keras_label

from tledge.cli import main


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_run_folder_json_csv_and_save(odd_folder, tmp_path, capsys):
    code, out, err = run_cli(capsys, "run", TINY / "model_int8.tflite", "--source", odd_folder, "--json",
                             "--top-k", "2", "--csv", tmp_path / "out.csv", "--save", tmp_path / "annotated")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) >= 9 and [r["index"] for r in rows] == list(range(len(rows)))
    for r in rows:
        assert isinstance(r["source"], str) and r["status"] in ("ok", "skipped")
        if r["status"] == "ok":
            assert len(r["top"]) == 2 and isinstance(r["latency_ms"], float) and r["latency_ms"] > 0
            assert {tuple(sorted(p)) for p in r["top"]} == {("index", "label", "score")}
            assert r["top"][0]["label"] in CLASSES and isinstance(r["top"][0]["index"], int)
            assert 0 <= r["top"][1]["score"] <= r["top"][0]["score"] <= 1
        else:
            assert r["top"] == [] and r["latency_ms"] is None and r["error"]
    n_ok = sum(r["status"] == "ok" for r in rows)
    committed = [r for r in rows if Path(r["source"]).name in REF["keras_probabilities"]]  # the two good images
    assert len(committed) == 2 and all(r["top"][0]["label"] == keras_label(r["source"]) for r in committed)
    assert f"{len(rows)} input(s): {n_ok} ok, 2 skipped, 0 errors" in err and "FPS" in err  # summary on stderr
    with open(tmp_path / "out.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(rows) and table[0].keys() >= {"source", "label", "score", "latency_ms", "status"}
    assert not list(tmp_path.glob(".out.csv*"))  # no temporary left behind
    saved = sorted(p.relative_to(tmp_path / "annotated").as_posix() for p in (tmp_path / "annotated").rglob("*.*")
                   if p.name != ".tledge-save")  # the folder's marker: a later --save may replace these
    assert len(saved) == n_ok and "sub/gray.png" in saved and "deep16.png" in saved


def test_run_human_output_and_threshold(capsys):
    src = str(TINY / "images" / f"{CLASSES[2]}_*")  # a glob: 8 images
    code, out, _ = run_cli(capsys, "run", TINY / "model_fp32.onnx", "--source", src, "--threshold", "0.5")
    lines = out.splitlines()
    assert code == 0 and lines[-1].startswith("summary: 8 input(s): 8 ok, 0 skipped, 0 errors")
    want = [f"{f}: {keras_label(f)} " for f in images_of(CLASSES[2])]  # one label above 0.5: Keras' top-1
    assert [ln[:len(w)] for ln, w in zip(lines[:-1], want)] == want
    code, out, _ = run_cli(capsys, "run", TINY / "model_fp32.onnx", "--source", src, "--threshold", "1")
    assert code == 0 and "(nothing above the threshold)" in out  # no score reaches exactly 1 here
    code, out, err = run_cli(capsys, "run", TINY / "model_fp32.onnx", "--source", src, "--threshold", "1.01")
    assert code == 2 and out == "" and "--threshold must be in [0, 1], got 1.01" in err  # scores are 0..1


def test_run_video_to_annotated_video(video, tmp_path, capsys):
    import cv2

    out_video = tmp_path / "annotated.mp4"
    code, out, _ = run_cli(capsys, "run", TINY / "model_int8.onnx", "--source", video, "--json",
                           "--save", out_video, "--max-frames", "10")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["source"] for r in rows] == [f"{video}#{i}" for i in range(10)]
    cap = cv2.VideoCapture(str(out_video))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 10 and cap.get(cv2.CAP_PROP_FRAME_WIDTH) == 64
    cap.release()
    assert not list(tmp_path.glob(".annotated*"))


def test_run_camera_that_drops_ends_cleanly(video, monkeypatch, capsys):
    import tledge.runtime.cameras as cameras

    monkeypatch.setattr(cameras, "cv2_opener", lambda target, api=None: FlakyCamera(video, [True, False]))
    code, out, err = run_cli(capsys, "run", TINY / "model_int8.tflite", "--source", "0", "--json",
                             "--reconnect", "1", "--reconnect-delay", "0.01")
    assert code == 1  # the source was lost: reported, not a crash
    assert "camera:0: stream lost after 24 frames; reconnecting in 0.0 s (attempt 1/1)" in err
    assert "gave up after 1 reconnect attempts" in err and "source LOST" in err
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows and all(r["status"] == "ok" and r["source"].startswith("camera:0#") for r in rows)


def test_run_ctrl_c_prints_summary_and_keeps_csv(tmp_path, monkeypatch, capsys):
    import tledge.runtime.outputs as outputs

    real, calls = outputs.human_line, {"n": 0}

    def interrupt_on_third(r):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(r)

    monkeypatch.setattr(outputs, "human_line", interrupt_on_third)
    code, out, _ = run_cli(capsys, "run", TINY / "model_int8.tflite", "--source", TINY / "images",
                           "--csv", tmp_path / "partial.csv")
    assert code == 130 and "interrupted" in out.splitlines()[-1]
    # the header, the two results printed and the third, whose print was cut (its row is written before it: the
    # summary counts it, and a Ctrl-C in a print to a stalled reader left the CSV a row short)
    assert len((tmp_path / "partial.csv").read_text().splitlines()) == 1 + 3


def test_run_errors_exit_2(odd_folder, tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", TINY / "model_int8.tflite", "--source", tmp_path / "missing")
    assert code == 2 and "source not found" in err
    code, out, _ = run_cli(capsys, "run", TINY / "model_int8.tflite", "--source", odd_folder / "corrupt.jpg")
    assert code == 2 and "SKIPPED" in out  # nothing could be read at all
    code, _, err = run_cli(capsys, "run", TINY / "model_int8.tflite", "--source", odd_folder, "--device", "toaster")
    assert code == 2 and "toaster" in err
    code, _, err = run_cli(capsys, "run", TINY / "model_int8.tflite", "--source", odd_folder, "--preprocess", "tf")
    assert code == 2 and "carries its own tledge contract" in err


def test_foreign_coral_models_through_tledge_run(capsys):
    root = shared_asset("coral_tflite_classifiers")
    images = root / "test_images"
    def rows(model, *options):
        code, out, _ = run_cli(capsys, "run", model, "--source", str(images / "*"), "--json",
                               "--labels", root / "imagenet_labels.txt", *options)
        assert code == 0
        return {Path(r["source"]).name: r for r in map(json.loads, out.splitlines())}

    for model in sorted(root.glob("*.tflite")):
        area = rows(model, "--resize", "area")  # the provenance's check (PIL's antialiased resize is nearest to it)
        assert len(area) == 8 and area["cat.bmp"]["top"][0]["label"] == "Egyptian cat", model.name
        assert area["parrot.jpg"]["top"][0]["label"] == "macaw", model.name
        # a TFLite file made elsewhere resizes as MediaPipe Tasks does unless told otherwise
        default, warp = rows(model), rows(model, "--resize", "warp-linear")
        assert {k: r["top"] for k, r in default.items()} == {k: r["top"] for k, r in warp.items()} and default["parrot.jpg"]["top"][0]["label"] == "macaw", model.name
        assert {r["top"][0]["label"] for r in default.values()} != {r["top"][0]["label"] for r in area.values()} \
            or [r["top"][0]["score"] for r in default.values()] != [r["top"][0]["score"] for r in area.values()]


def test_info(capsys):
    code, out, _ = run_cli(capsys, "info", TINY / "model_int8.tflite", "--json")
    info = json.loads(out)
    assert code == 0 and info["format"] == "tflite" and info["contract_origin"] == "embedded"
    assert info["labels"] == 3 and info["inputs"][0]["dtype"] == "uint8" and info["inputs"][0]["quant"]["scale"] == 1
    assert info["outputs"][0]["shape"][-1] == 3 and info["size_bytes"] > 1000
    code, out, _ = run_cli(capsys, "info", FOREIGN / "model_int8.tflite")
    assert code == 0 and "INFERRED" in out and "quantised scale 1 zero point 0" in out
    code, out, _ = run_cli(capsys, "info", TINY / "model_int8.onnx")
    assert code == 0 and "onnxruntime (CPUExecutionProvider)" in out and "embedded in the file" in out


def test_bench_side_by_side(capsys):
    code, out, _ = run_cli(capsys, "bench", TINY, "--runs", "5", "--warmup", "1", "--batch", "2", "--json")
    results = json.loads(out)
    assert code == 0 and [r["name"] for r in results] == sorted(MODELS)
    for r in results:
        assert r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] and r["throughput_ips"] > 0 and r["batch"] == 2
        assert 10 < r["peak_rss_mb"] < 400 and r["load_ms"] > 0 and not r["tensorflow_imported"]
    code, out, _ = run_cli(capsys, "bench", TINY / "model_int8.tflite", "--runs", "3", "--same-process")
    assert code == 0 and "p50 ms" in out.splitlines()[0] and "int8.tflite" in out


def test_bench_notes_go_to_stderr(capsys):
    """The table is the result (stdout); a provider that is not there is a note (stderr, hidden by -q)."""
    args = ("bench", TINY / "model_int8.onnx", "--runs", "2", "--same-process", "--providers", "cuda")
    code, out, err = run_cli(capsys, *args)
    assert code == 0 and "p50 ms" in out and "not available" not in out
    assert "model_int8.onnx: not available in this onnxruntime: CUDAExecutionProvider" in err
    code, out, err = run_cli(capsys, "-q", *args)
    assert code == 0 and "p50 ms" in out and "not available" not in err


NO_TF_SCRIPT = """
import sys, io, contextlib, json
from tledge.cli import main   # builds the parser: imports every cli module
models, src = sys.argv[1], sys.argv[2]
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    codes = [main(["run", models + "/model_int8.tflite", "--source", src, "--json"]),
             main(["run", models + "/model_fp32.onnx", "--source", src]),
             main(["info", models + "/model_int8.onnx"]),
             main(["bench", models + "/model_int8.tflite", "--runs", "2", "--same-process"])]
heavy = sorted(m for m in ("tensorflow", "keras", "tf_keras", "tf2onnx", "jax", "torch") if m in sys.modules)
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def test_runtime_and_cli_never_import_tensorflow():
    proc = subprocess.run([sys.executable, "-c", NO_TF_SCRIPT, str(TINY), str(TINY / "images")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"codes": [0, 0, 0, 0], "heavy": []}, proc.stderr[-2000:]


def test_ordered_json_matches_library(capsys):
    from tledge.runtime import load

    src = str(TINY / "images" / f"{CLASSES[1]}_*")
    _, out, _ = run_cli(capsys, "run", TINY / "model_fp32.tflite", "--source", src, "--json", "--top-k", "3")
    rows = [json.loads(line) for line in out.splitlines()]
    ref = load(TINY / "model_fp32.tflite").classify([r["source"] for r in rows], top_k=3)
    for row, preds in zip(rows, ref):
        assert [p["index"] for p in row["top"]] == [p.index for p in preds]
        np.testing.assert_allclose([p["score"] for p in row["top"]], [p.score for p in preds], atol=1e-6)


SIGINT_SCRIPT = """
import signal, sys, time, numpy as np
import tledge.runtime.cameras as cameras
from tledge.cli import main

# as from a terminal: a non-interactive shell starts background jobs (CI runners) with SIGINT ignored,
# and Python then never turns Ctrl-C into KeyboardInterrupt
signal.signal(signal.SIGINT, signal.default_int_handler)

class EndlessCamera:
    def isOpened(self):
        return True
    def read(self):
        time.sleep(0.005)
        return True, np.full((48, 64, 3), 90, np.uint8)
    def release(self):
        pass

cameras.cv2_opener = lambda target, api=None: EndlessCamera
print("started", file=sys.stderr, flush=True)
sys.exit(main(["run", sys.argv[1], "--source", "0", "--json", "--csv", sys.argv[2]]))
"""


def _rest_of(stream, into: list) -> None:
    into.append(stream.read())


def _hangup_at(disposition):
    """A preexec_fn: SIGHUP at `disposition` in the child (the test's own may be nohup's SIG_IGN)."""
    import signal

    return lambda: signal.signal(signal.SIGHUP, disposition)


@pytest.mark.parametrize("sig,code", [("SIGINT", 130), ("SIGTERM", 143), ("SIGHUP", 129)])
def test_real_ctrl_c_or_sigterm_on_a_live_camera_stops_with_a_summary_and_keeps_the_csv(sig, code, tmp_path):
    """SIGTERM (`timeout 60 tledge run 0 --csv log.csv`, systemd) threw the whole --csv away; Ctrl-C kept it.
    SIGHUP (an ssh connection dropped, the terminal closed) killed the run outright: exit 129, no message, the CSV
    left as a hidden temporary file; it stops as SIGTERM does now."""
    import signal
    import threading
    import time

    log_csv = tmp_path / "log.csv"
    proc = subprocess.Popen([sys.executable, "-c", SIGINT_SCRIPT, str(TINY / "model_int8.tflite"), str(log_csv)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            preexec_fn=_hangup_at(signal.SIG_DFL))
    out, err = [], []
    try:
        assert proc.stderr.readline().strip() == "started"
        first = proc.stdout.readline()  # a first result: the camera loop is running
        assert json.loads(first)["source"] == "camera:0#0"
        # the rest read through the same file objects: communicate() reads the pipes' fds and lost the lines
        # readline() had already buffered (on a loaded machine, several rows came with the first: the CSV seemed
        # rows longer than stdout)
        readers = [threading.Thread(target=_rest_of, args=a, daemon=True)
                   for a in ((proc.stdout, out), (proc.stderr, err))]
        for t in readers:
            t.start()
        time.sleep(0.3)
        proc.send_signal(getattr(signal, sig))
        proc.wait(timeout=30)
        for t in readers:
            t.join(timeout=30)
    finally:
        proc.kill()
    out, err = "".join(out), "".join(err)
    assert proc.returncode == code, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err
    if sig != "SIGINT":
        assert f"terminated ({sig}); the results so far are kept" in err, err[-2000:]
    assert [p.name for p in tmp_path.iterdir()] == ["log.csv"]  # no hidden temporary file left beside it
    rows = [json.loads(line) for line in [first, *out.splitlines()]]
    assert all(r["status"] == "ok" for r in rows)
    with open(log_csv, newline="") as f:
        kept = [r["source"] for r in csv.DictReader(f)]
    # every row printed is in the CSV, in order; the CSV is written first, so the signal may leave it one row ahead
    assert kept[:len(rows)] == [r["source"] for r in rows] and len(kept) - len(rows) in (0, 1), (kept, len(rows))


def test_a_hangup_under_nohup_is_ignored(tmp_path):
    """nohup starts the command with SIGHUP ignored: the CLI leaves it so (the run goes on after a hang-up)."""
    import signal

    proc = subprocess.Popen([sys.executable, "-c", SIGINT_SCRIPT, str(TINY / "model_int8.tflite"),
                             str(tmp_path / "log.csv")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, preexec_fn=_hangup_at(signal.SIG_IGN))
    try:
        assert proc.stderr.readline().strip() == "started"
        assert json.loads(proc.stdout.readline())["source"] == "camera:0#0"
        proc.send_signal(signal.SIGHUP)
        proc.stdout.read(1 << 14)  # results still coming after the hang-up (it did not stop)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-2000:]  # stopped by the SIGTERM, not the SIGHUP before it
    assert "terminated (SIGTERM)" in err and "SIGHUP" not in err


def _one_line_error(code: int, err: str) -> bool:
    return code == 2 and "Traceback" not in err and len([ln for ln in err.splitlines() if ln.strip()]) == 1


def test_bad_delegate_device_and_empty_source_exit_2_before_loading(tmp_path, capsys):
    """A --delegate that cannot load (missing, not a library, not a delegate) used to crash inside the
    interpreter with tracebacks; bench tried --device bogus per file; an empty --source ran on the current folder."""
    import ctypes.util

    text = tmp_path / "notalib.so"
    text.write_text("hello\n")
    libs = ["libtledge_no_such_delegate.so", str(text)] + ([ctypes.util.find_library("c")]
                                                            if ctypes.util.find_library("c") else [])
    for verb in (("run", TINY / "model_int8.tflite", "--source", TINY / "images"), ("info", TINY / "model_int8.tflite"),
                 ("bench", TINY / "model_int8.tflite", "--same-process")):
        for lib in libs:
            code, out, err = run_cli(capsys, *verb, "--delegate", lib)
            assert _one_line_error(code, err) and f"--delegate {lib}: " in err and out == "", (verb[0], lib, err)
    code, out, err = run_cli(capsys, "bench", TINY / "model_int8.tflite", "--device", "toaster")
    assert _one_line_error(code, err) and "unknown device 'toaster'" in err and out == ""
    code, out, err = run_cli(capsys, "run", TINY / "model_int8.tflite", "--source", "")
    assert _one_line_error(code, err) and "--source is empty" in err and out == ""


def test_bench_where_a_file_does_not_load_says_so_on_stderr(tmp_path, capsys):
    fake = tmp_path / "model.tflite"
    fake.write_text("not a model\n")
    code, out, err = run_cli(capsys, "bench", fake, "--runs", "1", "--warmup", "0", "--same-process")
    assert _one_line_error(code, err) and "no file could be measured: model.tflite: cannot load" in err
    assert "ERROR" in out  # the table still shows the row
    code, out, err = run_cli(capsys, "bench", TINY / "model_int8.tflite", fake, "--runs", "1", "--warmup", "0",
                             "--same-process", "-q")  # one good file beside it was exit 0
    assert code == 2 and "not every file could be measured: model.tflite: cannot load" in err, err
    assert "model_int8.tflite" in out and "ERROR" in out


def test_threads_one_image_takes_the_cores_a_folder_shares_them(capsys, monkeypatch):
    """One image: nothing prepares images alongside, so inference gets the default threads; a folder splits the
    cores between preparation and inference; TLEDGE_THREADS (like --threads) is kept as given."""
    from tledge.runtime.backends import default_threads
    from tledge.runtime.pipeline import split_cores

    monkeypatch.delenv("TLEDGE_THREADS", raising=False)
    model = str(TINY / "model_int8.tflite")
    one = str(images_of("circle")[0])
    for source, threads in ((one, default_threads()), (str(TINY / "images"), split_cores()[1])):
        code, _, err = run_cli(capsys, "run", model, "--source", source)
        assert code == 0 and f", {threads} thread(s)," in err, err
    monkeypatch.setenv("TLEDGE_THREADS", "3")
    code, _, err = run_cli(capsys, "run", model, "--source", str(TINY / "images"))
    assert code == 0 and ", 3 thread(s)," in err, err


def test_tledge_threads_out_of_range_is_refused_before_loading(capsys, monkeypatch, tmp_path):
    """TLEDGE_THREADS=0 was refused only once the model had been loaded (and the source opened); it is an option
    like --threads: checked with the others, before anything is loaded."""
    import tledge.runtime as runtime

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before TLEDGE_THREADS was checked")

    monkeypatch.setattr(runtime, "load", no_load)
    monkeypatch.setenv("TLEDGE_THREADS", "0")
    model = str(TINY / "model_int8.tflite")
    keras = tmp_path / "m.keras"
    keras.write_bytes(b"PK")  # export and parity refuse before they open it
    for argv in (("run", model, "--source", str(TINY / "images")), ("bench", model, "--runs", "1"), ("info", model),
                 ("parity", "--golden", str(TINY)), ("export", keras, "--calib", str(TINY / "images")),
                 ("parity", keras, model, "--images", str(TINY / "images"))):
        code, out, err = run_cli(capsys, *argv)
        assert code == 2 and "TLEDGE_THREADS='0'" in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_threads_given_win_over_a_bad_tledge_threads(capsys, monkeypatch):
    """`TLEDGE_THREADS=0 tledge parity --golden EXPORT --threads 2` was refused for the variable --threads replaces."""
    monkeypatch.setenv("TLEDGE_THREADS", "0")
    code, out, err = run_cli(capsys, "parity", "--golden", str(TINY), "--threads", "2")
    assert code == 0, err
