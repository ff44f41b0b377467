"""Sources and the pipeline: images as people have them, videos, a camera that drops, order, overlap."""
from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from tiny import CLASSES, TINY, images_of, keras_label

from tledge.errors import TledgeError
from tledge.runtime import load
from tledge.runtime.pipeline import Runner, ordered_map, split_cores, threaded
from tledge.runtime.sources import FileSource, LiveSource, VideoSource, open_source

VIDEO_FRAMES = [f for name in CLASSES for f in images_of(name)[:8]]


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory) -> Path:
    """Good images plus gray, RGBA, 16-bit, CMYK, EXIF-rotated, tiny, huge, corrupt, empty and a
    non-image file, some in a sub-folder."""
    import cv2

    root = tmp_path_factory.mktemp("odd")
    good = images_of(CLASSES[0])[:2]
    for f in good:
        (root / f.name).write_bytes(f.read_bytes())
    img = cv2.imread(str(good[0]))
    (root / "sub").mkdir()
    cv2.imwrite(str(root / "sub" / "gray.png"), cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(root / "sub" / "rgba.png"), cv2.cvtColor(img, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(root / "deep16.png"), img.astype(np.uint16) * 257)
    cv2.imwrite(str(root / "tiny.png"), img[:1, :1])
    cv2.imwrite(str(root / "huge.jpg"), cv2.resize(img, (3000, 2000), interpolation=cv2.INTER_NEAREST))
    try:
        from PIL import Image

        Image.fromarray(img[:, :, ::-1]).convert("CMYK").save(root / "cmyk.jpg")
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees on display
        Image.fromarray(np.ascontiguousarray(img[:, :24, ::-1])).save(root / "exif6.jpg", exif=exif)
    except ImportError:
        pass
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10)
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """An MP4 of 24 frames, 8 of each class in order (the committed images, in VIDEO_FRAMES' order), written
    with OpenCV."""
    import cv2

    path = tmp_path_factory.mktemp("video") / "shapes.mp4"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 12.0, (64, 64))
    assert w.isOpened()
    for f in VIDEO_FRAMES:
        w.write(cv2.resize(cv2.imread(str(f)), (64, 64), interpolation=cv2.INTER_AREA))
    w.release()
    return path


def test_folder_of_odd_images_skips_only_the_unreadable(odd_folder):
    model = load(TINY / "model_int8.tflite")
    runner = Runner(model, top_k=2, workers=2)
    results = list(runner.run(open_source(odd_folder, on_event=None)))
    by_name = {Path(r.source).name: r for r in results}
    assert "notes.txt" not in by_name and "gray.png" in by_name  # suffix filter, recursive
    assert {n for n, r in by_name.items() if r.status == "skipped"} == {"corrupt.jpg", "empty.png"}
    assert "not an image or corrupt" in by_name["corrupt.jpg"].error and "empty" in by_name["empty.png"].error
    s = runner.summary
    assert (s.ok, s.skipped, s.errors) == (len(results) - 2, 2, 0) and s.ok >= 7
    assert [r.index for r in results] == list(range(len(results)))  # input order
    assert all(len(r.top) == 2 and r.latency_ms > 0 and r.prep_ms > 0 for r in results if r.status == "ok")
    # the runner's answers are exactly classify()'s on the same files
    ok = [r for r in results if r.status == "ok"]
    ref = model.classify([r.source for r in ok], top_k=2)
    assert [[p.index for p in r.top] for r in ok] == [[p.index for p in t] for t in ref]


def test_exif_orientation_is_applied(odd_folder):
    from tledge import images

    if not (odd_folder / "exif6.jpg").exists():
        pytest.skip("Pillow not available to write EXIF")
    assert images.load(odd_folder / "exif6.jpg").shape[:2] == (24, 48)  # stored 48x24, displayed rotated


def test_source_kinds(odd_folder, video, tmp_path):
    assert isinstance(open_source(odd_folder / "tiny.png"), FileSource)
    glob_src = open_source(str(odd_folder / "**" / "*.png"))
    assert {Path(f).name for f in glob_src.files} >= {"gray.png", "rgba.png", "tiny.png", "deep16.png"}
    v = open_source(video)
    assert isinstance(v, VideoSource) and v.fps == pytest.approx(12.0) and not v.live
    v.close()
    with pytest.raises(TledgeError, match="source not found"):
        open_source(tmp_path / "nope.jpg")
    with pytest.raises(TledgeError, match="no image files match"):
        open_source(str(tmp_path / "*.jpg"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TledgeError, match="no image files in"):
        open_source(tmp_path / "empty")
    with pytest.raises(TledgeError, match="cannot open camera:7"):
        open_source("7", opener=lambda: None)
    import cv2

    if not cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
        with pytest.raises(TledgeError, match="no GStreamer support"):
            open_source("videotestsrc ! videoconvert ! appsink")
    from tledge._deps import available

    if not available("picamera2"):
        with pytest.raises(TledgeError, match="python3-picamera2"):
            open_source("picamera2")


def test_stream_urls_are_live_and_credentials_redacted():
    class Fake:
        def isOpened(self):  # noqa: N802
            return True

        def read(self):
            time.sleep(0.01)
            return False, None

        def release(self):
            pass

    src = open_source("rtsp://admin:s3cret@10.0.0.5:554/stream", opener=Fake, retries=0, on_event=None)
    assert src.live and "s3cret" not in src.name and "admin:***@" in src.name
    assert list(src.frames()) == [] and src.lost


def test_video_every_frame_in_order(video):
    model = load(TINY / "model_fp32.tflite")
    runner = Runner(model, workers=2)
    results = list(runner.run(open_source(video, on_event=None)))
    assert [r.index for r in results] == list(range(24)) and runner.summary.ok == 24
    labels = [r.top[0].label for r in results]
    expected = [keras_label(f) for f in VIDEO_FRAMES]  # what Keras says of each frame's source image
    assert len(expected) == 24 and np.mean([a == b for a, b in zip(labels, expected)]) >= 0.8
    few = list(Runner(model, max_frames=5).run(open_source(video, on_event=None)))
    assert [r.index for r in few] == list(range(5))


class FlakyCamera:
    """Camera openers backed by a video file: `plan` says, per (re)open, whether it works."""

    def __init__(self, video: Path, plan: list[bool]):
        self.video, self.plan, self.opened = video, list(plan), 0

    def __call__(self):
        import cv2

        works = self.plan[self.opened] if self.opened < len(self.plan) else False
        self.opened += 1
        return cv2.VideoCapture(str(self.video)) if works else cv2.VideoCapture()


def test_camera_that_stops_mid_stream_reconnects_then_gives_up(video):
    events = []
    cam = FlakyCamera(video, [True, True, False, False])
    src = open_source("0", opener=cam, retries=2, backoff=0.01, on_event=events.append)
    assert src.live and src.name == "camera:0"
    runner = Runner(load(TINY / "model_int8.tflite"))
    results = list(runner.run(src))
    s = runner.summary
    assert s.ok == len(results) >= 1 and s.reconnects == 1 and s.lost
    assert any("stream lost after 24 frames; reconnecting in 0.0 s (attempt 1/2)" in e for e in events)
    assert any("reconnected" in e for e in events) and events[-1] == "camera:0: gave up after 2 reconnect attempts"
    assert src.grabbed == 48 and s.ok + s.dropped == 48  # every frame grabbed is either used or dropped


def test_live_source_keeps_only_the_newest_frame(video):
    src = LiveSource("camera:fake", FlakyCamera(video, [True]), retries=0, on_event=None)
    seen = []
    for frame in src.frames():
        seen.append(frame.index)
        time.sleep(0.05)  # a slow consumer: the grabber replaces frames it has not taken
    assert src.lost and src.dropped > 0 and len(seen) + src.dropped == src.grabbed == 24
    assert len(seen) < 24


def test_ordered_map_keeps_order_bounds_work_and_stops_early():
    started = []
    lock = threading.Lock()

    def slow(i):
        with lock:
            started.append(i)
        time.sleep(0.002 * ((7 * i) % 5))
        return i * i

    assert list(ordered_map(slow, range(40), workers=3, depth=4)) == [i * i for i in range(40)]
    started.clear()
    gen = ordered_map(slow, range(1000), workers=2, depth=3)
    assert [next(gen) for _ in range(5)] == [0, 1, 4, 9, 16]
    gen.close()
    assert len(started) <= 5 + 3  # bounded: never ran far ahead, stopped when closed


def test_threaded_passes_errors_and_stops():
    def items():
        yield 1
        yield 2
        raise ValueError("decoder broke")

    gen = threaded(items())
    assert next(gen) == 1 and next(gen) == 2
    with pytest.raises(ValueError, match="decoder broke"):
        next(gen)
    endless = threaded(iter(range(10 ** 9)), maxsize=2)
    assert next(endless) == 0
    endless.close()  # the producer thread notices and ends
    assert not any(t.name == "tledge-reader" and t.is_alive() for t in threading.enumerate())


def test_interrupt_ends_cleanly_with_a_summary(odd_folder, monkeypatch):
    model = load(TINY / "model_int8.tflite")
    runner = Runner(model, workers=1)
    calls = {"n": 0}
    real = model.run_inputs

    def ctrl_c_on_third(x):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(x)

    monkeypatch.setattr(model, "run_inputs", ctrl_c_on_third)
    results = []
    with pytest.raises(KeyboardInterrupt):  # raised on to the caller (it ended a library loop as if done)
        for r in runner.run(open_source(odd_folder, on_event=None)):
            results.append(r)
    assert runner.summary.interrupted and len(results) == 2 + sum(r.status == "skipped" for r in results)
    assert "interrupted" in runner.summary.line()
    assert not any(t.name.startswith("tledge-prep") and t.is_alive() for t in threading.enumerate())


def test_split_cores():
    assert split_cores(1) == (1, 1) and split_cores(2) == (1, 1) and split_cores(4) == (2, 2)
    assert split_cores(16) == (8, 4)


def test_live_source_stops_even_when_a_ctrl_c_left_the_frame_lock_held():
    """A Ctrl-C landing just after the reader took the frame lock, before its `with` block is set up,
    leaves the lock held (CPython cannot always run __exit__ there). The grabber must not block on it
    forever, and close() from several finally blocks must not wait for the grabber each time."""
    class Endless:
        def isOpened(self):
            return True

        def read(self):
            time.sleep(0.002)
            return True, np.zeros((8, 8, 3), np.uint8)

        def release(self):
            pass

    src = LiveSource("camera:fake", lambda: Endless(), on_event=None)
    frames = src.frames()
    next(frames)
    time.sleep(0.05)  # the grabber is running
    src._cond.acquire()  # the leaked lock, held by this (the reader's) thread
    t = time.perf_counter()
    src.close()
    src.close()
    src.close()
    assert time.perf_counter() - t < 3  # before: the grabber blocked on the lock, each close waited 5 s
    assert not src._thread.is_alive()
    src._cond.release()
    frames.close()


def test_a_stream_that_ends_again_at_once_is_a_failed_attempt(tmp_path):
    """A still image served over http (FFmpeg: a one-frame stream) "reconnected" for ever: every reopen gave its one
    frame, so the attempt counter started again at 1."""
    import cv2

    one = tmp_path / "one.avi"
    w = cv2.VideoWriter(str(one), cv2.VideoWriter_fourcc(*"MJPG"), 5, (32, 32))
    w.write(np.zeros((32, 32, 3), np.uint8))
    w.release()
    events = []
    cam = FlakyCamera(one, [True] * 50)
    src = LiveSource("http://host/x", cam, retries=3, backoff=0.001, on_event=events.append)
    assert len(list(src.frames())) >= 1 and src.lost
    assert cam.opened <= 5 and events[-1] == "http://host/x: gave up after 3 reconnect attempts", events


def test_an_image_address_is_fetched_once_and_decoded_as_files_are(tmp_path):
    import cv2

    from tledge.runtime.url_image import ImageURLSource

    img = np.zeros((20, 30, 3), np.uint8)
    img[:, :10] = (0, 0, 255)  # red on the left, in BGR
    cv2.imwrite(str(tmp_path / "p.png"), img)
    with _served(tmp_path) as base:
        url = f"{base}/p.png"
        src = open_source(url)
        assert isinstance(src, ImageURLSource) and len(src) == 1
        frame = next(src.frames())
        assert frame.rgb().shape == (20, 30, 3) and tuple(frame.rgb()[0, 0]) == (255, 0, 0)
        with pytest.raises(TledgeError, match="cannot fetch"):
            open_source(url.replace("p.png", "missing.png"))


@contextlib.contextmanager
def _served(folder: Path):
    """http://127.0.0.1:PORT serving `folder` (no network: this machine only)."""
    import http.server

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a):
            super().__init__(*a, directory=str(folder))

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_a_video_file_address_is_read_once_and_a_truncated_video_is_said(video, tmp_path):
    """An .mp4 over http was a live stream: "stream lost after 24 frames; reconnecting", the file again from its
    start, for ever (the attempt count restarts on each reconnection). A video cut in half ended quietly, exit 0."""
    events = []
    with _served(video.parent) as base:
        src = open_source(f"{base}/{video.name}", on_event=events.append)
        assert isinstance(src, VideoSource) and not src.live
        assert len(list(src.frames())) == len(VIDEO_FRAMES) and not events, events
    import cv2

    w = cv2.VideoWriter(str(tmp_path / "v.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 12.0, (64, 64))
    for f in VIDEO_FRAMES:  # an AVI's header comes first: a cut one still opens (a cut MP4 loses its index)
        w.write(cv2.resize(cv2.imread(str(f)), (64, 64)))
    w.release()
    data = (tmp_path / "v.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) // 2])
    src = open_source(tmp_path / "cut.avi", on_event=events.append)
    n = len(list(src.frames()))
    assert 0 < n < len(VIDEO_FRAMES) - 2
    assert events == [f"warning: {tmp_path / 'cut.avi'} ended after {n} of the {len(VIDEO_FRAMES)} frames its "
                      "header gives (truncated or damaged?)"], events
    assert len(list(open_source(tmp_path / "v.avi", on_event=events.append).frames())) == len(VIDEO_FRAMES)
    assert len(events) == 1  # the whole file: no warning


def test_a_name_with_spaces_around_it_is_that_file_and_other_spaces_are_dropped(tmp_path, monkeypatch):
    """--source "trail " classified the folder "trail" beside it; " photo.jpg" was "not found"."""
    import cv2

    from tledge.runtime.sources import open_source

    monkeypatch.chdir(tmp_path)
    for name, value in (("trail /x.png", 10), ("trail/y.png", 20), (" sp.png", 30)):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / name), np.full((8, 8, 3), value, np.uint8))
    assert [f.name for f in open_source("trail ").files] == ["x.png"]
    assert [f.name for f in open_source("trail").files] == [f.name for f in open_source(" trail\n").files] == ["y.png"]
    assert [f.name for f in open_source(" sp.png").files] == [" sp.png"]


def test_a_video_file_at_a_usually_live_address_ends(tmp_path):
    """An .mjpeg file over http (30 JPEGs one after another) was taken for a live camera and reconnected to for
    ever, its frames classified again on each pass (2263 results in 40 s): an address that answers with a length,
    not a multipart stream, is a file, read once."""
    import cv2

    with open(tmp_path / "clip.mjpeg", "wb") as f:
        for p in VIDEO_FRAMES[:10]:
            f.write(cv2.imencode(".jpg", cv2.imread(str(p)))[1].tobytes())
    events = []
    with _served(tmp_path) as base:
        src = open_source(f"{base}/clip.mjpeg", retries=2, backoff=0.05, on_event=events.append)
        assert isinstance(src, VideoSource) and not src.live
        assert len(list(src.frames())) == 10 and not events, events
