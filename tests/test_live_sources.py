"""Live and video sources as they fail: a camera whose reopening or reading raises, messages kept over days of
reconnecting, a video with no frame, camera numbers OpenCV cannot take."""
from __future__ import annotations

import threading

import cv2
from tiny import CLASSES, TINY, images_of

from tledge.runtime import load
from tledge.runtime.pipeline import Runner
from tledge.runtime.sources import open_source


def test_a_camera_whose_reopening_or_reading_raises_is_lost_not_finished():
    """Picamera2() raises when the camera is gone or busy, as a custom opener may, and a capture's read() may: the
    grabber thread died with a traceback, no other attempt was made and the run ended as if the stream had, exit 0."""
    calls, events = [], []

    class Working:  # a camera's first frames
        def __init__(self):
            self.frames = [cv2.imread(str(f)) for f in images_of(CLASSES[0])[:3]]

        def isOpened(self):
            return True

        def read(self):
            return (True, self.frames.pop()) if self.frames else (False, None)

        def release(self):
            pass

    class Broken:
        def isOpened(self):
            return True

        def read(self):
            raise RuntimeError("device unplugged")

        def release(self):  # (it raised from the grabber's finally, and frames() waited for ever)
            raise RuntimeError("device unplugged")

    def opener():
        calls.append(1)
        if len(calls) == 1:
            return Working()
        if len(calls) == 2:
            return Broken()
        raise RuntimeError("Camera __init__ sequence did not complete")

    src = open_source("picamera2", opener=opener, retries=3, backoff=0.0, on_event=events.append)
    runner = Runner(load(TINY / "model_int8.tflite"))
    done = threading.Thread(target=lambda: list(runner.run(src)), daemon=True)
    done.start()
    done.join(60)
    assert not done.is_alive(), "the run never ended"
    assert runner.summary.lost and src.lost and len(calls) == 4, (calls, events)  # every attempt made
    assert any("reading failed: RuntimeError: device unplugged" in e for e in events), events
    assert any("cannot reopen it: RuntimeError: Camera __init__" in e for e in events), events
    assert events[-1] == "picamera2: gave up after 3 reconnect attempts"


def test_a_source_keeps_only_its_latest_messages():
    """Two messages per reconnection were kept for ever: a camera reconnecting for days grew without bound."""
    from tledge.runtime.frames import EVENTS_KEPT, Source

    src = Source("camera:0", "live", on_event=None)
    for i in range(EVENTS_KEPT + 500):
        src.event(f"message {i}")
    assert len(src.events) == EVENTS_KEPT and src.events[-1] == f"message {EVENTS_KEPT + 499}"


def test_a_video_without_frames_and_a_camera_number_opencv_cannot_take_are_one_line(tmp_path, capsys):
    """A video with no frame exited 2 with no reason and left a CSV of its header; camera 2147483648 traced back
    (OpenCV: "Python int too large to convert to C long"); a glob of videos did not say they were videos."""
    from tledge.cli import main

    w = cv2.VideoWriter(str(tmp_path / "zero.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    w.release()
    model = str(TINY / "model_int8.tflite")
    for source, said in [(tmp_path / "zero.avi", "zero.avi has no frame OpenCV can decode"),
                         ("2147483648", "OpenCV takes camera numbers up to 2147483647"),
                         (str(tmp_path / "*.avi"), "1 of them are videos (zero.avi...), read one per --source")]:
        assert main(["run", model, "--source", str(source), "--csv", str(tmp_path / "out.csv")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and said in err[0], err
        assert not (tmp_path / "out.csv").exists()
