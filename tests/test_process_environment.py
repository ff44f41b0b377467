"""tledge under the process environments shells, schedulers and boards give it: closed or full standard streams,
a stdout that is not UTF-8, a C locale, `~name` paths, odd environment variables. The work is done and said, or
refused in one line (exit 2); never a traceback after the work."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import IMAGES, TINY

REPO = Path(__file__).resolve().parents[1]


def _tledge(args: str, tmp_path: Path, **env) -> subprocess.CompletedProcess:
    """`python -m tledge ARGS` through sh (for its redirections), in tmp_path."""
    e = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.run(["sh", "-c", f'exec "{sys.executable}" -m tledge {args}'], capture_output=True, text=True,
                          cwd=tmp_path, env=e, timeout=120)


@pytest.fixture
def photos(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    shutil.copy(IMAGES[0], d / f"fourmi_é{IMAGES[0].suffix}")
    return d


def test_a_closed_stdout_or_stderr_loses_only_what_went_there(tmp_path, photos):
    """`>&-`: every verb did its work, then failed (exit 1: "parity failed" for a passing check); `2>&-`: the notes
    and the summary went into stdout's JSON lines; `2>/dev/full`: exit 2 after the results were written."""
    assert _tledge(f"parity --golden {TINY} >&-", tmp_path).returncode == 0
    p = _tledge(f"run {TINY} --source photos --json 2>&-", tmp_path)
    assert p.returncode == 0 and [json.loads(ln)["status"] for ln in p.stdout.splitlines()] == ["ok"]
    p = _tledge(f"run {TINY} --source photos --json 2>/dev/full", tmp_path)
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 1
    p = _tledge("run nosuch.tflite --source photos 2>/dev/full", tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stdout


def test_a_stdout_that_is_not_utf8_gets_every_result(tmp_path, photos):
    """PYTHONIOENCODING=ascii: a UnicodeEncodeError traceback at the first accented file name."""
    p = _tledge(f"run {TINY} --source photos --json", tmp_path, PYTHONIOENCODING="ascii")
    assert p.returncode == 0, p.stderr
    assert Path(json.loads(p.stdout)["source"]).name.startswith("fourmi_é")  # JSON's \u00e9, read back
    p = _tledge(f"run {TINY} --source photos", tmp_path, PYTHONIOENCODING="ascii")
    assert p.returncode == 0 and "fourmi_?" in p.stdout, p.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="a C locale without UTF-8 mode")
def test_a_c_locale_writes_utf8_names_as_their_bytes_say(tmp_path, photos):
    """LC_ALL=C without UTF-8 mode: Python holds a UTF-8 name's bytes as surrogates, which the CSV wrote."""
    p = _tledge(f"run {TINY} --source photos --csv out.csv -q", tmp_path, LC_ALL="C", PYTHONUTF8="0",
                PYTHONCOERCECLOCALE="0")
    assert p.returncode == 0, p.stderr
    assert "fourmi_é" in (tmp_path / "out.csv").read_text(encoding="utf-8")


def test_paths_and_variables_that_are_not_what_they_look_like(tmp_path):
    """`~backup.jpg` (bash passes it on unchanged: there is no user "backup") and TLEDGE_THREADS='²' (a digit to
    str.isdigit, not to int) traced back."""
    for args, env, said in ((f"info ~nosuchuser_{os.getpid()}.tflite", {}, "model file not found"),
                            (f"run {TINY} --source x.jpg", {"TLEDGE_THREADS": "²"}, "TLEDGE_THREADS")):
        p = _tledge(args, tmp_path, **env)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and said in p.stderr, p.stderr


def test_keras_on_another_backend_is_one_line(monkeypatch):
    """KERAS_BACKEND=garbage: keras's import raised ValueError (a traceback); =jax: "keras is not installed"."""
    from tledge._deps import require
    from tledge.errors import MissingDependency

    monkeypatch.setenv("KERAS_BACKEND", "garbage")
    with pytest.raises(MissingDependency, match="KERAS_BACKEND is 'garbage': set KERAS_BACKEND=tensorflow"):
        require("keras")


def test_a_tf_config_nested_thousands_deep_is_one_line(monkeypatch):
    from tledge.errors import TledgeError
    from tledge.train.distributed import tf_config

    monkeypatch.setenv("TF_CONFIG", '{"a":' * 5000 + "1" + "}" * 5000)
    with pytest.raises(TledgeError, match="nested too deeply"):
        tf_config()


def test_the_log_keeps_lines_not_the_terminal_s_redrawing(tmp_path, monkeypatch):
    """On a terminal, export.log held `\\r[1/4] loading ... 4.0 s\\x1b[K`; with TERM=dumb the codes reached it too."""
    from tledge.log import Console

    c = Console("export")
    c.logfile = open(tmp_path / "export.log", "w")
    c.line("\r[1/4] loading ... 4.0 s\x1b[K")
    c.logfile.close()
    assert (tmp_path / "export.log").read_text() == "[1/4] loading ... 4.0 s\n"
    monkeypatch.setenv("TERM", "dumb")
    c.stream = open(os.devnull, "w")
    monkeypatch.setattr(c.stream, "isatty", lambda: True)
    assert not c.tty  # a terminal that cannot redraw a line gets plain lines


def test_a_second_ctrl_c_while_the_outputs_close_keeps_them(tmp_path, monkeypatch, capsys):
    """Ctrl-C, then Ctrl-C again 50 ms later: the second landed in the join of the preparation threads, before the
    outputs were closed, and the CSV and the video were lost (exit 130, nothing said)."""
    import signal

    from tledge.cli import main
    from tledge.runtime.pipeline import Runner

    real_run = Runner.run

    class Stopped:
        def __init__(self, runner, source):
            self.it = real_run(runner, source)
            self.n = 0

        def __iter__(self):
            return self

        def __next__(self):
            self.n += 1
            if self.n == 3:
                raise KeyboardInterrupt  # the first Ctrl-C
            return next(self.it)

        def close(self):
            signal.raise_signal(signal.SIGINT)  # the second, while the threads are joined
            self.it.close()

    monkeypatch.setattr(Runner, "run", lambda self, source: Stopped(self, source))
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal (CI: SIGINT ignored)
    try:
        rc = main(["run", str(TINY), "--source", str(TINY / "images"), "--csv", str(tmp_path / "r.csv")])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert rc == 130
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 3  # the header and the two rows before the stop


def test_a_long_run_keeps_a_bounded_window_of_latencies():
    """Summary kept one float per frame for ever: a live camera run grew 4 MB an hour (100 MB a day on a 512 MB
    board). The p50 / p90 are over the last LATENCY_WINDOW inferences."""
    from tledge.runtime.pipeline import LATENCY_WINDOW, Summary

    s = Summary()
    for i in range(LATENCY_WINDOW + 500):
        s.latencies_ms.append(float(i))
    assert len(s.latencies_ms) == LATENCY_WINDOW and s.to_dict()["latency_ms_p50"] > 500


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork()")
def test_a_child_forked_while_a_model_runs_does_not_hang():
    """A server thread inside predict() when a fork() pool started: the child got the interpreter's lock held, and
    waited on it for ever. Its lock is renewed in the child."""
    import signal

    import numpy as np

    from tledge.runtime import load

    m = load(TINY / "model_int8.tflite")
    x = np.zeros((1, *m.contract.input_shape), np.uint8)
    with m.backend._lock:  # another thread is in run() at the moment of the fork
        pid = os.fork()
        if pid == 0:  # the child: answers (or says why not) within 20 s, else it hung
            signal.alarm(20)
            try:
                m.predict(x)
            except Exception:  # noqa: BLE001 - a clear error is fine; a hang is what is tested
                pass
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_quoted_home_path_is_the_home_s_for_every_option(tmp_path, photos):
    """`--csv '~/out.csv'` was checked in the home folder and then written to ./~/out.csv (and a model '~/m.tflite'
    checked there, then "not found")."""
    home = tmp_path / "home"
    shutil.copytree(TINY, home / "exp", ignore=shutil.ignore_patterns("foreign", "images"))
    p = _tledge("run '~/exp' --source photos --csv '~/out.csv' -q", tmp_path, HOME=str(home))
    assert p.returncode == 0, p.stderr
    assert (home / "out.csv").is_file() and not (tmp_path / "~").exists()
    # every verb: `bundle --out '~/b.tar.gz'` was checked in the home, then written to ./~/b.tar.gz
    p = _tledge("bundle '~/exp' --device x86-cpu --out '~/b.tar.gz' -q", tmp_path, HOME=str(home))
    assert p.returncode == 0, p.stderr
    assert (home / "b.tar.gz").is_file() and not (tmp_path / "~").exists()


def test_export_drops_the_onednn_setting_that_moved_repaired_weights(tmp_path):
    """TF_ENABLE_ONEDNN_OPTS=0 (set to silence TensorFlow's start-up line) ran the weight repair on Eigen: repaired
    int8 files one image apart at the gate, and other kept rungs. The verbs that repair drop it before TensorFlow is
    imported; the others leave the environment as it is. Either way the caller's environment is put back after."""
    import subprocess
    import sys

    code = ("import os, sys\nimport tledge.cli as cli\nseen, run = [], cli._run\n"
            "cli._run = lambda *a: seen.append(os.environ.get('TF_ENABLE_ONEDNN_OPTS')) or run(*a)\n"
            "rc = cli.main(sys.argv[1:])\nprint(rc, *seen, os.environ.get('TF_ENABLE_ONEDNN_OPTS'))")
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0"}
    for argv, during in ((["export", str(tmp_path / "missing.h5")], "None"), (["info", str(tmp_path / "m.tflite")], "0")):
        r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=120)
        assert r.stdout.split() == ["2", during, "0"], (r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # a user's mistake: one line, nothing more


SHUTDOWN_CTRL_C = """
import atexit, os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal (a background job ignores Ctrl-C)
def late(times):  # what a Ctrl-C while the libraries' exit handlers run looks like
    for _ in range(times):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
    print("cleanup after it ran", file=sys.stderr)
atexit.register(late, int(sys.argv.pop(1)))
from tledge.cli import main
sys.exit(main())
"""


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_during_interpreter_shutdown_is_quiet(tmp_path, presses):
    """The command had finished and printed its results: a Ctrl-C during shutdown printed "Exception ignored in
    atexit callback ... KeyboardInterrupt" and skipped the rest of that handler. One is now dropped (the cleanup
    still runs, the command's exit code stands); a second ends the process at once with 130."""
    model = TINY / "model_int8.tflite"
    r = subprocess.run([sys.executable, "-c", SHUTDOWN_CTRL_C, str(presses), "info", str(model)],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert "KeyboardInterrupt" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
    assert model.name in r.stdout  # the results are all there
    if presses == 1:
        assert r.returncode == 0 and "cleanup after it ran" in r.stderr
    else:
        assert r.returncode == 130


def test_main_called_by_a_program_leaves_its_ctrl_c_handler_alone(capsys):
    import signal

    from tledge.cli import main

    before = signal.getsignal(signal.SIGINT)
    assert main(["info", str(TINY / "model_int8.tflite")]) == 0
    assert signal.getsignal(signal.SIGINT) is before


CALLER = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal (a background job ignores Ctrl-C)
sys.argv = ["tledge", "info", sys.argv[1]]
from tledge.cli import main
main()
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(2)
    print("the Ctrl-C was swallowed")
except KeyboardInterrupt:
    print("the program got its Ctrl-C")
"""


def test_a_program_that_calls_main_keeps_its_ctrl_c():
    """main() from a program (argv None, as the console script calls it) installed the quiet-shutdown handler at
    once: the program's next Ctrl-C was dropped. It is now installed only as the interpreter exits."""
    r = subprocess.run([sys.executable, "-c", CALLER, str(TINY / "model_int8.tflite")], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert "the program got its Ctrl-C" in r.stdout, (r.stdout, r.stderr)


@pytest.mark.parametrize("tmpdir", [None, "/nonexistent-folder"])  # the second: tempfile's descriptor, no O_APPEND
def test_the_libraries_messages_of_a_long_run_are_bounded(monkeypatch, tmpdir):
    """fd 2 goes to a temporary log while a command runs: FFmpeg's decode errors of a camera run for days grew it
    without bound (120 KB/s from a damaged stream). Past the limit it starts again, saying so."""
    from tledge import log

    if tmpdir:
        monkeypatch.setenv("TMPDIR", tmpdir)
    c = log.install("run", log.NORMAL)
    try:
        with log.capture(c, hook_warnings=False):
            os.write(2, b"[h264 @ 0x55] error while decoding MB 3 7\n" * 30000)  # ~1.2 MB
            log.bound_log(limit=1 << 20)
            os.write(2, b"the latest message\n")
            text = c.log_path.read_text()
    finally:
        log.uninstall()
    assert text.startswith("[tledge: the libraries' earlier messages were dropped past 1 MB]")
    assert text.endswith("the latest message\n") and len(text) < 200, text[:300]


def test_warnings_said_before_an_error_are_not_extra_lines(tmp_path):
    """As a user's terminal shows it (pytest records warnings instead of printing them): files ignored, then
    "class folder without images" was three lines; "feeding raw 0..255 pixels", then a labels error two."""
    import cv2
    import numpy as np

    for c in ("a", "empty"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "imgs" / "a" / "0.png"), np.full((8, 8, 3), 40, np.uint8))
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    (tmp_path / "one.txt").write_text("one\n")
    for args, said in [(f"train {tmp_path / 'imgs'} --out {tmp_path / 'run'}", "class folder(s) without images"),
                       (f"run {TINY / 'foreign' / 'model_fp32.onnx'} --labels {tmp_path / 'one.txt'} --source "
                        f"{TINY / 'images'}", "1 labels but the model has 3 outputs")]:
        r = _tledge(args, tmp_path)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and said in lines[0], r.stderr
