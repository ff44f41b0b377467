"""Coral bundles (helper 143): `--format tflite` (the one format the Edge TPU runs) skipped the compile and every
Edge TPU note. (A hand-compiled file of another calibration: tests/test_bundle.py.)"""
from __future__ import annotations

import shutil

from tiny import TINY, need


def test_format_tflite_compiles_and_says_so(tmp_path, monkeypatch):
    from test_devices_edgetpu import install_fake_compiler

    from tledge.devices.bundle import make_bundle

    need("model_int8.tflite")
    export_dir = tmp_path / "e"
    shutil.copytree(TINY, export_dir)
    install_fake_compiler(tmp_path, monkeypatch)
    res = make_bundle(export_dir, "coral-usb", tmp_path / "c.tar.gz", backend="tflite")
    assert (res.model, res.fallback) == ("model_int8_edgetpu.tflite", "model_int8.tflite")
    assert any("ops on the Edge TPU" in n for n in res.notes), res.notes
