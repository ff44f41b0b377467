"""`tledge run --save VIDEO`: what a first frame of any size and which suffixes give a video."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from tiny import TINY

from tledge.cli import main


def run(capsys, *argv) -> tuple[int, str]:
    code = main(["run", str(TINY), "-q", *map(str, argv)])
    return code, capsys.readouterr().err


def size_of(video) -> tuple[int, int, int]:
    cap = cv2.VideoCapture(str(video))
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), \
            int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
@pytest.mark.parametrize("hw, want", [((64, 1), (2, 64)), ((1, 64), (64, 2)), ((10, 9000), (4096, 4))])
def test_first_frame_of_any_size(tmp_path, capsys, suffix, hw, want):
    """A 1 px frame was rounded to 0 ("no encoder for .mp4", a cv2.error traceback for .avi); one over 8192 px
    wide opened no MPEG-4 encoder."""
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.full((*hw, 3), 128, np.uint8))
    video = tmp_path / f"out{suffix}"
    code, err = run(capsys, "--source", image, "--save", video)
    assert code == 0, err
    assert size_of(video) == (*want, 1)


def test_an_encoder_that_does_not_open_is_named_with_the_size(tmp_path, capsys, monkeypatch):
    class Closed:
        def __init__(self, *a):
            pass

        def isOpened(self):  # noqa: N802 (OpenCV's name)
            return False

        def release(self):
            pass

    monkeypatch.setattr(cv2, "VideoWriter", Closed)
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.full((64, 1, 3), 128, np.uint8))
    code, err = run(capsys, "--source", image, "--save", tmp_path / "out.mp4")
    assert code == 2 and "at 2x64 px" in err and "Traceback" not in err
    assert not (tmp_path / "out.mp4").exists() and not list(tmp_path.glob(".tledge-save-*"))


@pytest.mark.parametrize("suffix", [".mpg", ".mpeg", ".webm", ".flv", ".mjpeg", ".mjpg"])
def test_a_video_suffix_tledge_only_reads_is_refused_up_front(tmp_path, capsys, suffix):
    """.mpg/.mpeg failed only after the whole run ("unreadable (a full disk?)"), the others with "no encoder"."""
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.full((32, 32, 3), 128, np.uint8))
    code, err = run(capsys, "--source", image, "--save", tmp_path / f"out{suffix}")
    assert code == 2 and "writes only .mp4, .avi" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frame.png"]  # refused before the run: nothing written


@pytest.mark.parametrize("suffix", [".mkv", ".mov", ".m4v"])
def test_the_other_written_suffixes_read_back(tmp_path, capsys, suffix):
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), np.full((32, 32, 3), 128, np.uint8))
    code, err = run(capsys, "--source", image, "--save", tmp_path / f"out{suffix}")
    assert code == 0, err
    assert size_of(tmp_path / f"out{suffix}") == (32, 32, 1)


def test_frames_of_a_video_in_a_subfolder_of_the_save_folder(tmp_path, capsys):
    """--source proj/clips/cam.mp4 --save proj: the frames are frame_NNNNNN.jpg, never the video; refused as "holds
    input files ... would overwrite them" by the check of a glob's inputs (helper 154)."""
    clips = tmp_path / "proj" / "clips"
    clips.mkdir(parents=True)
    w = cv2.VideoWriter(str(clips / "cam.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (32, 32))
    for i in range(3):
        w.write(np.full((32, 32, 3), 60 * i, np.uint8))
    w.release()
    code, err = run(capsys, "--source", clips / "cam.avi", "--save", tmp_path / "proj")
    assert code == 0, err
    assert len(list((tmp_path / "proj").glob("frame_*.jpg"))) == 3 and (clips / "cam.avi").stat().st_size > 0
