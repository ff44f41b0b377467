"""`tledge run` and `bench` as shells and services use them: globs through link loops, decompression bombs, a full
standard output, a measurement past its time limit."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from tiny import IMAGES, TINY

from tledge.errors import ImageError
from tledge.paths import glob_paths

pytestmark = pytest.mark.runtime_only


def test_a_recursive_glob_visits_each_real_folder_once(tmp_path):
    """`rec/**/*.jpg` through a link back up the tree gave one photo 41 times (exit 0); two such links never
    ended. A folder source walked the same tree right."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "c").mkdir()
    shutil.copy(IMAGES[0], tmp_path / "a" / "b" / "x.png")
    shutil.copy(IMAGES[1], tmp_path / "c" / "y.png")
    (tmp_path / "a" / "b" / "up").symlink_to("..")
    (tmp_path / "a" / "b" / "up2").symlink_to("..")
    (tmp_path / "a" / "cl").symlink_to("../c")
    got = [p.relative_to(tmp_path).as_posix() for p in glob_paths(tmp_path / "**" / "*.png")]
    assert got == ["a/b/x.png", "a/cl/y.png", "c/y.png"], got  # a link elsewhere is followed, as glob does
    assert glob_paths(tmp_path / "*" / "*" / "x.png") == [tmp_path / "a" / "b" / "x.png"]  # no `**`: glob's own
    from tledge.runtime.sources import open_source

    with open_source(str(tmp_path / "**" / "*.png"), on_event=None) as src:
        assert len(list(src.frames())) == 3


def test_a_recursive_glob_keeps_folders_a_link_beside_them_also_reaches(tmp_path):
    """A link `00_latest -> 2024` sorted before 2024/ and hid it: `photos/20*/**/*.jpg` lost 2024's photos (exit 0).
    Hidden names, character classes and bad ranges read as glob reads them."""
    import glob

    for year, names in (("2023", ("a",)), ("2024", ("b", "c"))):
        (tmp_path / "photos" / year / "cats").mkdir(parents=True)
        for n in names:
            shutil.copy(IMAGES[0], tmp_path / "photos" / year / "cats" / f"{n}.jpg")
    (tmp_path / "photos" / "00_latest").symlink_to("2024")
    (tmp_path / "photos" / "2024" / ".hid").mkdir()
    shutil.copy(IMAGES[0], tmp_path / "photos" / "2024" / ".hid" / "h.jpg")
    shutil.copy(IMAGES[0], tmp_path / "photos" / "2024" / "cats" / "^x.jpg")
    for pattern in ("photos/20*/**/*.jpg", "photos/**/cats/*.jpg", "photos/**/.hid/*.jpg", "photos/**/[^a]*.jpg",
                    "photos/**/[!b]*.jpg", "photos/**/.*", "photos/**/[z-a]*.jpg", "photos/**/[z-ab]*.jpg",
                    "photos/**/[!z-a]*.jpg", "photos/*/../**/*.jpg"):
        want = sorted(Path(m) for m in glob.glob(str(tmp_path / pattern), recursive=True))
        assert glob_paths(tmp_path / pattern) == want, pattern
    assert len(glob_paths(tmp_path / "photos/20*/**/*.jpg")) == 4


def _png_header(width: int, height: int) -> bytes:
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + len(ihdr).to_bytes(4, "big") + chunk
            + zlib.crc32(chunk).to_bytes(4, "big") + b"\x00" * 64)


def test_an_image_whose_header_states_too_many_pixels_is_refused_before_decoding(tmp_path):
    """An 873 KB PNG of 30000 x 30000 took 5.3 GB to decode (32 s), and each worker held one: the header says so
    before anything is decoded. A JPEG's frame header the same."""
    from tledge import imagebytes, images

    (tmp_path / "bomb.png").write_bytes(_png_header(30000, 30000))
    with pytest.raises(ImageError, match=r"bomb.png: its header says 900 megapixels, over tledge's 268"):
        images.load(tmp_path / "bomb.png")
    import cv2

    ok, jpg = cv2.imencode(".jpg", np.zeros((16, 24, 3), np.uint8))
    data = bytearray(jpg.tobytes())
    sof = next(i for i in range(2, len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC2))
    assert imagebytes.header_pixels(np.frombuffer(bytes(data), np.uint8)) == 16 * 24
    data[sof + 5:sof + 9] = (20000).to_bytes(2, "big") + (20000).to_bytes(2, "big")
    with pytest.raises(ImageError, match="400 megapixels"):
        images.decode(np.frombuffer(bytes(data), np.uint8), "forged.jpg")
    rgb = images.load(IMAGES[0])  # an ordinary photo: decoded, RGB
    assert rgb.shape[2] == 3 and rgb.dtype == np.uint8


def test_a_full_standard_output_keeps_the_csv_and_says_it_was_standard_output(tmp_path):
    """`> /dev/full` deleted the --csv file (on a disk with room) and said only "no space left on the device"."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    csv = tmp_path / "r.csv"
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "tledge", "-q", "run", str(TINY / "model_int8.tflite"), "--source",
                            str(TINY / "images"), "--csv", str(csv)], stdout=full, stderr=subprocess.PIPE, text=True,
                           timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert r.returncode == 2 and "standard output: no space left" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert csv.is_file() and csv.read_text().startswith("source,")


def test_a_bench_measurement_past_its_time_limit_is_that_file_s_error(monkeypatch):
    """--runs 100000 ran into a hidden 600 s limit: a traceback after 10 minutes, the other files never measured."""
    from tledge.runtime import bench

    def slow(*args, **kw):
        raise subprocess.TimeoutExpired(args[0], kw.get("timeout"))

    monkeypatch.setattr(bench.subprocess, "run", slow)
    got = bench.measure_in_subprocess(TINY / "model_int8.tflite", runs=5, warmup=1, batch=1, threads=1, timeout=7)
    assert got["name"] == "model_int8.tflite" and "did not finish in 7 s" in got["error"]


def test_a_partial_video_is_removed_at_exit_when_the_run_never_closed_it(tmp_path):
    """A second Ctrl-C while the first was handled skipped close() and abort(): a hidden 2-8 MB
    .tledge-save-*.partial.mp4 stayed beside the video."""
    code = ("import sys, numpy as np\nfrom pathlib import Path\nfrom tledge.runtime.outputs import SaveSink\n"
            "s = SaveSink(Path(sys.argv[1]) / 'v.mp4', fps=5)\ns._write_video(np.zeros((32, 32, 3), np.uint8))\n"
            "print(len(list(Path(sys.argv[1]).iterdir())))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr  # it was there while the run went on
    assert list(tmp_path.iterdir()) == []
