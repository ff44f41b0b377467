"""The CLI's own output: tledge lines on stderr (prefixed, or progress lines), TensorFlow's and the
converters' chatter in <out>/export.log unless -v, -q/-v on every verb, --json for train, a top-level help."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tledge import log
from tledge.cli import main
from tledge.errors import TledgeWarning

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRESS = re.compile(r"^\[\d+/\d+\] .+ \.\.\. \d+(\.\d)? s$")


def _cli(*args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",)}
    env["PYTHONPATH"] = REPO
    return subprocess.run([sys.executable, "-m", "tledge", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=timeout)


def _python(script: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -c script` in a process of its own, the checkout importable."""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": REPO}, timeout=timeout)


def _foreign(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines()
            if line.strip() and not line.startswith("tledge export: ") and not PROGRESS.match(line)]


@pytest.fixture(scope="module")
def quiet_export(tiny_model, shapes_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_out") / "export"
    res = _cli("export", tiny_model["keras"], "--int8", "--calib", shapes_dataset / "train",
               "--val", shapes_dataset / "val", "--out", out)
    return res, out


def test_export_stderr_has_only_tledge_lines_and_the_rest_is_in_export_log(quiet_export):
    res, out = quiet_export
    assert res.returncode == 0, res.stderr[-3000:]
    assert _foreign(res.stderr) == [], res.stderr
    steps = [line for line in res.stderr.splitlines() if PROGRESS.match(line)]
    # the int8 loop's step is counted from the start (it runs when parity fails a file, or to weigh a pass)
    numbers = [s[1:].split("]")[0].split("/") for s in steps]
    assert [int(n) for n, _ in numbers] == list(range(1, 9)) and {t for _, t in numbers} == {"8"}
    # the plain int8 pass is unconfirmed on the small val set: weighed against one repair rung
    assert any(re.search(r"int8 fidelity: \d file\(s\) to repair, [12] unconfirmed pass\(es\)", s) for s in steps), steps
    assert any("int8 TFLite: calibrating" in s for s in steps)
    text = (out / "export.log").read_text()
    # the log is the run's record: TensorFlow's and the converters' lines, and tledge's own (progress, notes)
    ours = [line for line in text.splitlines() if line.startswith("tledge export: ") or PROGRESS.match(line)]
    assert ours == [line for line in res.stderr.splitlines() if line.strip()], (ours, res.stderr)
    assert len(text.splitlines()) > len(ours)
    # the log sits beside the export without belonging to it: not in the manifest, the export is still vouched for
    from tledge import artifacts

    manifest = artifacts.read(out)
    assert "export.log" not in {e.file for e in manifest.files}
    wrote = next(line for line in res.stdout.splitlines() if line.startswith("wrote "))
    assert wrote.startswith(f"wrote 4 model files to {out}/: ") and "model_int8.tflite" in wrote
    # notes are tledge's notes: on stderr (README "Output"), not in the report on stdout
    assert any(line.startswith("tledge export: note: ") for line in res.stderr.splitlines()), res.stderr
    assert not any("note:" in line for line in res.stdout.splitlines()), res.stdout
    assert "export.log" in wrote
    info = _cli("info", out, "--json", timeout=300)
    assert info.returncode == 0, info.stderr
    assert info.stderr.strip() == "" or all(line.startswith("tledge info: ") for line in info.stderr.splitlines())


def test_verbose_export_shows_what_the_log_file_would_hold(tiny_model, shapes_dataset, tmp_path):
    res = _cli("export", tiny_model["keras"], "-v", "--formats", "tflite", "--int8", "--calib",
               shapes_dataset / "train", "--val", shapes_dataset / "val", "--out", tmp_path / "o")
    assert res.returncode == 0, res.stderr[-3000:]
    assert _foreign(res.stderr), res.stderr  # TensorFlow's own lines are on the terminal now
    assert not (tmp_path / "o" / "export.log").exists()


def test_an_int8_export_that_needs_no_repair_says_so_in_its_counted_step(tiny_model, shapes_dataset, tmp_path):
    """The loop's step is counted before parity knows whether it runs: when nothing needs it, the line says so
    (the count was [8/8] then [9/9] before; now the total never changes)."""
    res = _cli("export", tiny_model["keras"], "--formats", "tflite", "--int8", "--calib", shapes_dataset / "train",
               "--val", shapes_dataset / "val", "--fidelity", "0.05", "--out", tmp_path / "o")
    assert res.returncode == 0, res.stderr[-3000:]
    steps = [line for line in res.stderr.splitlines() if PROGRESS.match(line)]
    numbers = [s[1:].split("]")[0].split("/") for s in steps]
    assert [int(n) for n, _ in numbers] == list(range(1, 7)) and {t for _, t in numbers} == {"6"}, steps
    assert "int8 fidelity: no repair needed" in steps[-1], steps


def test_export_json_keeps_stdout_a_single_document(quiet_export, tiny_model, shapes_dataset, tmp_path):
    res = _cli("-q", "export", tiny_model["keras"], "--formats", "tflite", "--val", shapes_dataset / "val",
               "--out", tmp_path / "o", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert doc["passed"] is True and [os.path.basename(f) for f in doc["files"]] == ["model_fp32.tflite"]
    assert res.stderr.strip() == ""  # -q: no notes, no progress lines
    res = _cli("-q", "export", tiny_model["keras"], "--formats", "tflite", "--val", shapes_dataset / "val",
               "--out", tmp_path / "t")  # the text report: -q prints results (the table), no note anywhere
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr[-3000:]
    assert "model_fp32.tflite" in res.stdout and "note:" not in res.stdout, res.stdout


def test_top_level_help_shows_the_main_flows(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for flow in ("tledge train ", "tledge export ", "tledge run ", "tledge bundle ", "tledge parity ", "-q", "-v"):
        assert flow in out, flow


@pytest.mark.parametrize("argv", [["-q", "devices", "--json"], ["devices", "--json", "-q"],
                                  ["-v", "devices", "--json"], ["devices", "-v", "--json"]])
def test_q_and_v_go_before_or_after_the_verb(argv, capsys):
    assert main(argv) == 0
    assert isinstance(json.loads(capsys.readouterr().out), list)


@pytest.mark.parametrize("argv", [["devices", "--json", "show", "rpi4"], ["devices", "show", "rpi4", "--json"]])
def test_the_verbs_json_flag_is_not_reset_by_its_action(argv, capsys):
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "rpi4"


def test_progress_lines_and_each_warning_once(capsys):
    c = log.install("export")
    try:
        log.plan(2)
        with log.step("fp32 TFLite: converting"):
            pass
        with pytest.raises(RuntimeError):
            with log.step("int8 TFLite: calibrating 8 images"):
                raise RuntimeError("boom")  # a failed step prints nothing: the error line says it
        with log.capture(c, hook_warnings=True), warnings.catch_warnings():
            warnings.simplefilter("always")  # Python's own once-per-place filter out of the way
            for _ in range(3):
                warnings.warn("skipped 2 unreadable images", TledgeWarning)
            log.note("a note")
            log.note("a note")
        lines = capsys.readouterr().err.splitlines()
    finally:
        log.uninstall()
    assert PROGRESS.match(lines[0]) and lines[0].startswith("[1/2] fp32 TFLite: converting ... ")
    assert lines[1:] == ["tledge export: warning: skipped 2 unreadable images", "tledge export: note: a note"]


def test_library_calls_print_nothing(capsys):
    log.uninstall()
    with log.step("anything"):
        log.note("not shown")
    assert capsys.readouterr() == ("", "")


def test_train_json_is_one_document_on_stdout(shapes_dataset, tmp_path, capsys):
    rc = main(["train", str(shapes_dataset), "--backbone", "mobilenet", "--alpha", "0.25", "--weights", "none",
               "--size", "32", "--epochs", "1", "--fine-tune-epochs", "0", "--no-augment", "--batch", "16",
               "--out", str(tmp_path / "run"), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    doc = json.loads(captured.out)
    assert doc["out"] == str(tmp_path / "run") and doc["files"]["keras"] == "model.keras"
    assert 0.0 <= doc["val_accuracy"] <= 1.0 and doc["val_images"] > 0
    assert (tmp_path / "run" / "train.log").is_file()


def test_train_epoch_lines_are_progress_lines_on_stderr_and_q_hides_them(shapes_dataset, tmp_path, capsys):
    args = ["train", str(shapes_dataset), "--backbone", "mobilenet", "--alpha", "0.25", "--weights", "none",
            "--size", "32", "--epochs", "2", "--fine-tune-epochs", "0", "--no-augment", "--batch", "16"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("val accuracy ") and "files in " in out  # results on stdout, nothing else
    lines = err.splitlines()
    epochs = [line for line in lines if PROGRESS.match(line)]
    assert [e.split(" loss ")[0] for e in epochs] == ["[1/2] head:", "[2/2] head:"], err
    assert all(PROGRESS.match(line) or line.startswith("tledge train: ") for line in lines), err
    assert any(line.startswith("tledge train: note: data: ") for line in lines), err
    assert main(["-q"] + args + ["--out", str(tmp_path / "b")]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("val accuracy ") and not [line for line in err.splitlines()
                                                     if PROGRESS.match(line) or ": note: " in line], err


def test_parity_failure_lines_are_prefixed(quiet_export, tmp_path):
    _, out = quiet_export
    strict = tmp_path / "strict.json"
    strict.write_text(json.dumps({"int8": {"max_abs": 0.0}}))
    res = _cli("parity", "--golden", out, "--thresholds", strict, timeout=300)
    assert res.returncode == 1, res.stderr[-2000:]
    fails = [line for line in res.stderr.splitlines()
             if ("max abs" in line or "model_int8" in line) and not line.startswith("tledge parity: note: ")]
    assert fails and all(line.startswith("tledge parity: model_int8") for line in fails), res.stderr
    assert all(line.startswith("tledge parity: ") for line in res.stderr.splitlines() if line.strip()), res.stderr


def test_library_logging_goes_to_the_log_not_the_terminal(tmp_path):
    """onnxruntime.quantization calls `logging.warning()` (basicConfig: a root handler on sys.stderr, the
    terminal while fd 2 goes to the log) and tf2onnx's optimizer logs tracebacks through it: both reached the
    terminal of `tledge export --int8` on MobileNetV3 ('Failed to apply optimize_transpose' + Traceback)."""
    script = (
        "import sys\n"
        "from tledge import log\n"
        "from tledge._deps import require\n"
        "c = log.install('export')\n"
        f"log.keep_log({str(tmp_path / 'export.log')!r})\n"
        "with log.capture(c):\n"
        "    require('onnx')\n"
        "    import logging\n"
        "    logging.warning('The original model opset version is 17')\n"
        "    try:\n"
        "        max(())\n"
        "    except ValueError:\n"
        "        logging.getLogger('tf2onnx.optimizer').warning('Failed to apply optimize_transpose', exc_info=True)\n"
        "    log.note('a tledge line')\n"
        "logging.warning('after the command')\n")
    res = _python(script)
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert lines == ["tledge export: note: a tledge line", "WARNING:root:after the command"], res.stderr
    text = (tmp_path / "export.log").read_text()
    assert "WARNING:root:The original model opset version is 17" in text
    assert "Failed to apply optimize_transpose" in text and "Traceback" in text


def test_library_calls_leave_the_host_s_logging_as_it_was(tmp_path):
    """A library train() left a root handler on stderr (absl's warning() on saving model.h5 calls basicConfig, so
    the host's own basicConfig() did nothing) and TensorFlow's and absl's loggers at ERROR."""
    script = (
        "import logging\n"
        "import numpy as np\n"
        "from tledge._deps import require\n"
        "keras = require('keras')\n"
        "tf = require('tensorflow')\n"
        "from tledge.train.report import save_model\n"
        "m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])\n"
        "x = np.ones((2, 3), np.float32)\n"
        f"save_model(m, __import__('pathlib').Path({str(tmp_path / 'm.h5')!r}), x, m.predict_on_batch(x))\n"
        "print(len(logging.getLogger().handlers), tf.get_logger().level, logging.getLogger('absl').level)\n")
    res = _python(script, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split()[-3:] == ["0", "0", "0"], (res.stdout, res.stderr[-2000:])
    assert (tmp_path / "m.h5").is_file()


def test_a_pipe_reader_that_leaves_early_gets_no_error_and_no_traceback():
    """`tledge devices --json | head -c 10`: the reader closes the pipe before tledge writes; tledge stops quietly
    with the shell's SIGPIPE code (141), no "error: Broken pipe" line (it was exit 2) and no traceback."""

    p = subprocess.Popen([sys.executable, "-m", "tledge", "devices", "--json"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p.stdout.close()  # long before the interpreter has started: every write fails
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141, err
    assert err == "", err


def test_a_val_folder_over_the_limit_is_sampled_and_said(shapes_dataset, capsys):
    from tledge.contract import Contract
    from tledge.export.imagesets import load_images

    log.install("export")
    try:
        pixels, y, files = load_images(shapes_dataset / "val", Contract(48, 48), 10)
        err = capsys.readouterr().err
    finally:
        log.uninstall()
    assert len(pixels) == len(files) == 10 and len(set(y.tolist())) == 3  # spread over the classes
    assert f"tledge export: note: {shapes_dataset / 'val'}: 10 of its 24 images used" in err, err


def test_sigterm_ends_a_command_like_ctrl_c_with_its_cleanup(tmp_path):
    """SIGTERM (a scheduler, systemd, kill) ended the process outright: no message, its log left in /tmp."""
    script = ("import os, signal, sys, time\n"
              "import tledge.cli.info as verb\n"
              "def run(args):\n"
              "    try:\n"
              "        os.kill(os.getpid(), signal.SIGTERM)\n"
              "        time.sleep(30)\n"
              "    finally:\n"
              "        print('cleanup ran', file=sys.stderr)\n"
              "verb.run = run\n"
              "from tledge.cli import main\n"
              "rc = main(['info', 'x.tflite'])\n"
              "print(rc, signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)\n")
    res = _python(script)
    assert res.stdout.split() == ["143", "True"], (res.stdout, res.stderr[-2000:])
    assert "cleanup ran" in res.stderr and "tledge info: terminated (SIGTERM)" in res.stderr



def test_a_stopped_command_whose_output_folder_went_keeps_its_log_and_a_late_sigterm_is_not_exit_0(tmp_path):
    """An export into a new --out stopped by Ctrl-C or SIGTERM removed the folder, export.log with it (the README
    says the log is kept); a SIGTERM that landed in a finalizer ('Exception ignored in ... __del__') gave exit 0."""
    stopped = ("import os, shutil, signal, sys, time\n"
               "import tledge.cli.info as verb\n"
               "from tledge import log\n"
               "def run(args):\n"
               f"    out = {str(tmp_path / 'new')!r}\n"
               "    os.mkdir(out)\n"
               "    log.keep_log(out + '/export.log')\n"
               "    os.write(2, b'a converter says something\\n')\n"
               "    try:\n"
               "        os.kill(os.getpid(), signal.SIGTERM)\n"
               "        time.sleep(30)\n"
               "    finally:\n"
               "        shutil.rmtree(out)\n"
               "verb.run = run\n"
               "from tledge.cli import main\n"
               "print(main(['info', 'x.tflite']))\n")
    res = _python(stopped)
    assert res.stdout.split() == ["143"], res.stderr[-2000:]
    kept = re.search(r"messages are in (\S+\.log)", res.stderr)
    assert kept and "a converter says something" in Path(kept.group(1)).read_text(), res.stderr
    Path(kept.group(1)).unlink()
    (tmp_path / "old").mkdir()  # an earlier export's folder, which the stopped one leaves as it was
    (tmp_path / "old" / "export.log").write_text("the earlier export's log\n")
    res = _python(stopped.replace("os.mkdir(out)", "").replace("shutil.rmtree(out)", "pass")
                  .replace(repr(str(tmp_path / "new")), repr(str(tmp_path / "old"))))
    assert res.stdout.split() == ["143"], res.stderr[-2000:]
    assert (tmp_path / "old" / "export.log").read_text() == "the earlier export's log\n"  # was the stopped run's
    kept = re.search(r"messages are in (\S+\.log)", res.stderr)
    assert kept and "a converter says something" in Path(kept.group(1)).read_text(), res.stderr
    Path(kept.group(1)).unlink()
    # stopped once its outputs were in place (the export's swap done): its log goes with them
    res = _python(stopped.replace("os.mkdir(out)", "").replace("shutil.rmtree(out)", "pass")
                  .replace(repr(str(tmp_path / "new")), repr(str(tmp_path / "old")))
                  .replace("        os.kill(", "        log.outputs_written()\n        os.kill("))
    assert res.stdout.split() == ["143"], res.stderr[-2000:]
    assert "a converter says something" in (tmp_path / "old" / "export.log").read_text(), res.stderr
    late = ("import os, signal, time\n"
            "import tledge.cli.info as verb\n"
            "class Finalized:\n"
            "    def __del__(self):\n"
            "        os.kill(os.getpid(), signal.SIGTERM)\n"
            "        time.sleep(0.2)\n"
            "def run(args):\n"
            "    Finalized()\n"
            "    return 0\n"
            "verb.run = run\n"
            "from tledge.cli import main\n"
            "print(main(['info', 'x.tflite']))\n")
    res = _python(late)
    assert res.stdout.split() == ["143"] and "tledge info: terminated (SIGTERM)" in res.stderr, res.stderr[-2000:]
    # Ctrl-C in a weakref callback or finalizer: CPython ignores the KeyboardInterrupt; a training went on, exit 0
    ctrl_c = late.replace("signal.SIGTERM", "signal.SIGINT").replace(
        "import tledge.cli.info as verb\n", "import tledge.cli.info as verb\nsignal.signal(signal.SIGINT, "
                                             "signal.default_int_handler)\n")
    res = _python(ctrl_c)
    assert res.stdout.split() == ["130"] and "tledge info: interrupted" in res.stderr, res.stderr[-2000:]
