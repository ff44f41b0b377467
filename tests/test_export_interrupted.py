"""The export folder as a unit, interrupted for real: `kill -9` of a `tledge export` process at random
points, then `tledge bundle`; two exports into one folder at once (slow: subprocess exports). The
in-process tests of the same unit are in tests/test_manifest.py."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tledge import artifacts
from tledge.export import unit

REPO = Path(__file__).resolve().parents[1]
needs_tf = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="needs tledge[export]")


def _export_cmd(tiny_model, shapes_dataset, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tledge", "export", str(tiny_model["keras"]), "--int8",
            "--calib", str(shapes_dataset / "train"), "--val", str(shapes_dataset / "val"), "--out", str(out), *extra]


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "TLEDGE_THREADS": "1"}


def _bundle_is_complete_or_refused(out: Path, dst: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "tledge", "bundle", str(out), "--device", "x86-cpu",
                           "--out", str(dst)], env=_env(), capture_output=True, text=True, timeout=300)
    if proc.returncode == 2:
        assert "manifest.json" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert not dst.exists()
        return "refused"
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(dst) as tar:
        top = tar.getnames()[0].split("/")[0]
        inner = json.loads(tar.extractfile(f"{top}/model/manifest.json").read())
        for e in inner["files"]:
            data = tar.extractfile(f"{top}/model/{e['file']}").read()
            assert hashlib.sha256(data).hexdigest() == e["sha256"]
            assert e["role"] == "side" or e["verdict"] == "pass"
        assert any(e["role"] == "model" for e in inner["files"])
    return "complete"


@pytest.mark.slow
@needs_tf
def test_kill_9_at_random_points_then_bundle(tiny_model, shapes_dataset, tmp_path):
    out = tmp_path / "out"
    start = time.monotonic()
    subprocess.run(_export_cmd(tiny_model, shapes_dataset, out), env=_env(), check=True, capture_output=True,
                   timeout=600)
    full = time.monotonic() - start
    rng = random.Random(int(os.environ.get("TLEDGE_KILL_SEED", "0")) or None)
    outcomes = []
    for i in range(3):
        delay = rng.uniform(0.3, full)
        proc = subprocess.Popen(_export_cmd(tiny_model, shapes_dataset, out), env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        outcomes.append((round(delay, 1), _bundle_is_complete_or_refused(out, tmp_path / f"b{i}.tar.gz")))
    # and the next export into the folder takes over the dead lock and cleans up
    done = subprocess.run(_export_cmd(tiny_model, shapes_dataset, out, "--json"), env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert not list(out.glob(".tledge-*")), outcomes
    assert _bundle_is_complete_or_refused(out, tmp_path / "final.tar.gz") == "complete", outcomes


@pytest.mark.slow
@needs_tf
def test_two_concurrent_exports_into_one_folder(tiny_model, shapes_dataset, tmp_path):
    out = tmp_path / "out"
    heavy = _export_cmd(tiny_model, shapes_dataset, out, "--fp16", "--dynamic")
    first = subprocess.Popen(heavy, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / unit.LOCK).is_file() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    second = subprocess.run(_export_cmd(tiny_model, shapes_dataset, out), env=_env(), capture_output=True,
                            text=True, timeout=600)
    first_err = first.communicate(timeout=600)[1]
    assert first.returncode == 0, first_err
    assert second.returncode == 2, second.stderr
    assert "another tledge export (pid" in second.stderr and "choose another --out" in second.stderr
    assert "Traceback" not in second.stderr
    m = artifacts.read(out)
    assert {e.file for e in m.vouched()} >= {"model_fp16.tflite", "model_dynamic.tflite", "model_int8.onnx"}
    assert _bundle_is_complete_or_refused(out, tmp_path / "b.tar.gz") == "complete"
