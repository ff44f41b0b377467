"""File and folder names that are not UTF-8 (a Latin-1 name on a Linux disk: Python holds its bytes as surrogates).
LiteRT's and onnxruntime's loaders refused them with a TypeError (`tledge parity --golden` called a good export
FAILED, `tledge run` printed a traceback), and OpenCV's VideoCapture, VideoWriter and readNetFromONNX crashed the
process (SIGSEGV) on them."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny import TINY, images_of, CLASSES, need

from tledge.cli import main

ODD = os.fsdecode(b"exp\xe9")  # 'exp\udce9'


@pytest.fixture()
def odd_export(tmp_path):
    dst = tmp_path / ODD
    shutil.copytree(TINY, dst, ignore=shutil.ignore_patterns("foreign", "images"))
    return dst


@pytest.mark.parametrize("name", ["model_fp32.tflite", "model_int8.onnx"])
def test_run_and_info_open_a_file_in_a_folder_so_named(name, odd_export, capsys):
    need(name)
    img = images_of(CLASSES[0])[0]
    assert main(["run", str(odd_export / name), "--source", str(img), "--json"]) == 0
    assert main(["info", str(odd_export / name)]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_parity_golden_passes_on_a_folder_so_named(odd_export, capsys):
    need("model_fp32.tflite")
    need("model_fp32.onnx")
    assert main(["parity", "--golden", str(odd_export)]) == 0, capsys.readouterr().err


def _run_isolated(*argv) -> subprocess.CompletedProcess:
    """In its own process: a segfault must fail the test, not end pytest."""
    return subprocess.run([sys.executable, "-m", "tledge", *map(os.fsencode, argv)], capture_output=True, timeout=120)


def test_videos_so_named_are_read_and_saved(tmp_path):
    """A video source so named, and --save to a video so named in a folder so named."""
    cv2 = pytest.importorskip("cv2")
    need("model_fp32.tflite")
    src = tmp_path / os.fsdecode(b"clip\xe9.avi")
    w = cv2.VideoWriter(os.fsdecode(os.fsencode(tmp_path / "ok.avi")), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (64, 64))
    for f in images_of(CLASSES[0])[:3]:
        w.write(cv2.resize(cv2.imread(str(f)), (64, 64)))
    w.release()
    (tmp_path / "ok.avi").rename(src)
    (tmp_path / ODD).mkdir()
    out = tmp_path / ODD / os.fsdecode(b"annot\xe9.avi")
    done = _run_isolated("run", str(TINY / "model_fp32.tflite"), "--source", str(src), "--save", str(out), "-q")
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    shutil.copyfile(out, tmp_path / "copy.avi")
    cap = cv2.VideoCapture(str(tmp_path / "copy.avi"))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 3
    cap.release()
    assert sorted(p.name for p in (tmp_path / ODD).iterdir()) == [out.name]


def test_opencv_client_check_reads_an_onnx_file_so_named(odd_export):
    """The export's OpenCV check (clients.opencv) on an export folder so named."""
    pytest.importorskip("cv2")
    need("model_fp32.onnx")
    from tledge.clients import opencv
    from tledge.runtime import load

    pixels = np.stack([load(TINY / "model_fp32.onnx").contract.prepare(f) for f in images_of(CLASSES[0])[:2]])
    section = opencv(Path(odd_export), ["model_fp32.onnx"], pixels.astype(np.float32))
    assert section["files"][0].get("tledge") == 2, section


def test_a_bundle_named_in_no_utf8_is_refused_before_it_is_written(tmp_path, capsys):
    """`tledge bundle --out b\\xe9.tar.gz`: its top folder made hdrcharset=BINARY headers, and GNU tar warned on each of
    its ~100 members when unpacking on the board."""
    out = tmp_path / os.fsdecode(b"b\xe9.tar.gz")
    assert main(["bundle", str(TINY), "--device", "rpi4", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not UTF-8 text" in err and "b\\udce9" in err, err
    assert not out.exists() and os.listdir(tmp_path) == []
