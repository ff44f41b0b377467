"""Coral bundles (helper 143): `--format tflite` (the one format the Edge TPU runs) skipped the compile and every
Edge TPU note; a hand-compiled file was taken as the int8 file's on its shapes alone."""
from __future__ import annotations

import os
import shutil

import pytest

from tledge.errors import TledgeError

from test_edgetpu_fallback import _rescaled_output
from tiny import TINY, edgetpu_stand_in, need


def test_a_hand_compiled_file_of_another_calibration_is_refused(tmp_path, monkeypatch):
    from tledge.devices.bundle import make_bundle

    need("model_int8.tflite")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    if shutil.which("edgetpu_compiler"):
        pytest.skip("a real edgetpu_compiler is installed here")
    export_dir = tmp_path / "e"
    shutil.copytree(TINY, export_dir)
    other = tmp_path / "other_int8.tflite"
    other.write_bytes(_rescaled_output((export_dir / "model_int8.tflite").read_bytes()))
    (export_dir / "model_int8_edgetpu.tflite").write_bytes(edgetpu_stand_in(other))
    with pytest.raises(TledgeError, match="quantisation differs"):
        make_bundle(export_dir, "coral-usb", tmp_path / "c.tar.gz")
    (export_dir / "model_int8_edgetpu.tflite").write_bytes(edgetpu_stand_in(export_dir / "model_int8.tflite"))
    res = make_bundle(export_dir, "coral-usb", tmp_path / "c.tar.gz")
    assert res.model == "model_int8_edgetpu.tflite" and any("unverified" in n for n in res.notes)


def test_format_tflite_compiles_and_says_so(tmp_path, monkeypatch):
    from test_devices_edgetpu import FAKE_COMPILER, PARTIAL_LOG

    from tledge.devices.bundle import make_bundle

    need("model_int8.tflite")
    export_dir = tmp_path / "e"
    shutil.copytree(TINY, export_dir)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "edgetpu_compiler"
    script.write_text(FAKE_COMPILER.replace("@LOG@", PARTIAL_LOG))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    res = make_bundle(export_dir, "coral-usb", tmp_path / "c.tar.gz", backend="tflite")
    assert (res.model, res.fallback) == ("model_int8_edgetpu.tflite", "model_int8.tflite")
    assert any("ops on the Edge TPU" in n for n in res.notes), res.notes
