"""`tledge bench`'s figures and messages say what they measure: the load without the runtime's import, sizes and
peak memory in one unit, the batch beside per-call times, why a measuring process gave nothing, and a time limit
that fits the runs asked for."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import TINY

from tledge.runtime import bench

pytestmark = pytest.mark.runtime_only
ONNX = TINY / "model_int8.onnx"


def test_load_ms_is_the_load_alone_not_the_import_of_onnxruntime():
    """In a fresh process the first .onnx file's "load ms" was mostly `import onnxruntime` (75-135 ms), the same
    file's second load 16 ms."""
    code = ("import json, sys\nfrom tledge.runtime.bench import measure\n"
            "assert 'onnxruntime' not in sys.modules\n"
            "print(json.dumps(measure(sys.argv[1], runs=2, warmup=0, threads=1)))")
    r = subprocess.run([sys.executable, "-c", code, str(ONNX)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.splitlines()[-1])
    assert got["import_ms"] > got["load_ms"] > 0, got


def test_a_killed_measuring_process_is_named_not_its_last_log_line(monkeypatch):
    def killed(cmd, **kw):
        return subprocess.CompletedProcess(cmd, -9, "", "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")

    monkeypatch.setattr(bench.subprocess, "run", killed)
    got = bench.measure_in_subprocess(ONNX, runs=2, warmup=0, batch=1, threads=1)
    assert got["error"] == "the measuring process was killed by SIGKILL (out of memory?)", got
    assert bench.failure(2, "INFO: x\nerror: no such file\nINFO: y") == "no such file"
    assert bench.failure(1, "Traceback\nValueError: bad") == ("the measuring process ended with exit code 1: "
                                                            "ValueError: bad")


def test_the_time_limit_grows_with_the_runs_asked_for(monkeypatch):
    """--runs up to 1,000,000 is accepted; a fixed 600 s limit stopped it after 10 minutes with nothing."""
    seen = []

    def record(cmd, **kw):
        seen.append(kw["timeout"])
        return subprocess.CompletedProcess(cmd, 2, "", "error: stop")

    monkeypatch.setattr(bench.subprocess, "run", record)
    bench.measure_in_subprocess(ONNX, runs=50, warmup=5, batch=1, threads=1)
    bench.measure_in_subprocess(ONNX, runs=1_000_000, warmup=5, batch=4, threads=1)
    assert 600 <= seen[0] < 700 and seen[1] >= 1_000_000, seen


def test_the_table_shows_the_batch_and_one_memory_unit():
    r = bench.measure(ONNX, runs=2, warmup=0, batch=3, threads=1)
    assert r["size_mb"] == pytest.approx(ONNX.stat().st_size / 2**20, abs=1e-3)  # MiB, as the peak RSS
    head, row = bench.table([r]).splitlines()
    titles = head.split("  ")
    assert "batch" in head and "MB" not in titles and "MiB" in head and row.split()[4] == "3", (head, row)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_measuring_process_ends_when_bench_is_killed(tmp_path):
    """`tledge bench` killed (kill -9, or a hang-up) left its measuring process running the rest of its runs."""
    import signal
    import time

    code = ("import sys\nfrom tledge.runtime.bench import measure_in_subprocess\n"
            "measure_in_subprocess(sys.argv[1], runs=10**6, warmup=0, batch=1, threads=1)")
    parent = subprocess.Popen([sys.executable, "-c", code, str(ONNX)],
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    child = None
    try:
        for _ in range(600):  # its measuring process started and past its start-up (the model loaded)
            assert parent.poll() is None, "the parent ended by itself"
            kids = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()
            if kids and "onnxruntime" in Path(f"/proc/{kids[0]}/maps").read_text():
                child = int(kids[0])
                break
            time.sleep(0.1)
        assert child is not None, "no measuring process"
        parent.kill()
        parent.wait()
        for _ in range(300):
            if _gone(child):
                break
            time.sleep(0.1)
        assert _gone(child), "the measuring process outlived its parent"
    finally:
        parent.kill()
        if child is not None and not _gone(child):
            os.kill(child, signal.SIGKILL)


def _gone(pid: int) -> bool:
    """Ended (a zombie its new parent has not reaped yet counts)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_the_measuring_process_on_windows_does_not_watch_a_launcher(monkeypatch):
    """On Windows ctypes.CDLL(None) raised TypeError (every file's measurement failed), and a venv's python.exe is a
    launcher whose child is the interpreter, so the parent process id is not tledge's: nothing is set up there."""
    import threading

    before = {t.ident for t in threading.enumerate()}
    monkeypatch.setattr(bench.os, "name", "nt")
    monkeypatch.setattr(bench.sys, "platform", "win32")
    bench.end_with_parent(os.getppid())  # (the POSIX path started a thread watching it)
    monkeypatch.undo()
    assert not [t for t in threading.enumerate() if t.ident not in before and t.name == "tledge-bench-parent"]
