"""Where frames come from: one Frame abstraction over image files, folders, globs, video files,
cameras, RTSP/HTTP streams, GStreamer pipelines and the Raspberry Pi camera (picamera2).

`open_source(spec)` -> a Source whose `frames()` yields Frames in order. File frames are decoded
lazily (`frame.rgb()`, called by the pipeline's worker threads); a video is decoded sequentially;
live sources keep only the newest frame (a grabber thread replaces it, so lag never grows) and
reconnect with back-off when the stream drops. No TensorFlow; OpenCV is imported when used.
"""
from __future__ import annotations

import contextlib
import glob
import os
import re
import threading
import time
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit


from tledge.errors import TledgeError
from tledge.paths import expand, glob_paths, utf8_alias
from tledge.runtime.frames import Frame as Frame, Source as Source, print_event, redact  # (Frame, Source re-exported)

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts",
                  ".3gp", ".mjpeg", ".mjpg"}
# an http(s) address ending in one of these is a video file (every frame, then the end), not a live stream; .ts, .mjpg
# and .mjpeg addresses are usually live (IP cameras, broadcast streams)
VIDEO_FILES = VIDEO_SUFFIXES - {".ts", ".mjpeg", ".mjpg"}
# what `run --save` writes (mp4v, MJPG for .avi), each checked to read back; the others it reads (.mpg, .webm, .flv,
# .mjpeg...) failed: "no encoder", or only after the whole run, "it came out unreadable (a full disk?)"
SAVE_VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v")
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")


class FileSource(Source):
    def __init__(self, name: str, files: list[Path], **kw):
        super().__init__(name, "files", **kw)
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def frames(self) -> Iterator[Frame]:
        for i, f in enumerate(self.files):
            yield Frame(str(f), i, path=f)


class VideoSource(Source):
    """Every frame of a video file (a path, or an http(s) address of a file), in order; a video that ends well
    before the frame count its header gives (a truncated download or copy) is said."""

    def __init__(self, path: "Path | str", name: str | None = None, **kw):
        import cv2

        super().__init__(name or str(path), "video", **kw)
        self._lock = threading.Lock()  # read() on the reader thread, close() maybe on another
        with utf8_alias(path) as name:  # OpenCV crashed (SIGSEGV) on a name that is not UTF-8
            self._cap = cv2.VideoCapture(name)
        if not self._cap.isOpened():
            raise TledgeError(f"cannot open video {self.name}: not a video OpenCV can decode")
        self._mirror = self._display_mirror(path)  # a mirroring display matrix, which OpenCV turns instead
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and fps > 0 else None
        count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.announced = int(count) if count and count > 0 else None
        ok, self._first = self._cap.read()  # a video without one frame is said here, before a model or CSV is opened
        if not ok:
            self._cap.release()
            raise TledgeError(f"{self.name} has no frame OpenCV can decode (an empty or damaged video)")

    def _display_mirror(self, path):
        """isobmff.video_mirror of the file (an http(s) one read by byte ranges), OpenCV's own turn then off."""
        import cv2

        from tledge.isobmff import video_mirror

        where = path
        if str(path).lower().startswith(("http://", "https://")):
            from tledge.runtime.url_image import RangeReader

            where = RangeReader(str(path))
        m, auto = video_mirror(where), getattr(cv2, "CAP_PROP_ORIENTATION_AUTO", None)  # (OpenCV < 4.5: raw)
        if getattr(where, "failed", None) and str(path).lower().endswith((".mp4", ".mov", ".m4v", ".3gp")):
            self.event(f"warning: cannot read the display matrix of {self.name} ({where.failed}): a video tagged as "
                       "mirrored would be read turned instead")
        return m if m is not None and (auto is None or self._cap.set(auto, 0)) else None

    def frames(self) -> Iterator[Frame]:
        i = 0
        try:
            while True:
                if i == 0:
                    ok, img = True, self._first
                    self._first = None
                else:
                    with self._lock:
                        ok, img = self._cap.read()
                if not ok:
                    break
                if self._mirror is not None:
                    from tledge.isobmff import displayed

                    img = displayed(img, self._mirror)
                yield Frame(f"{self.name}#{i}", i, image=img, bgr=True, timestamp=time.time())
                i += 1
            n = self.announced
            if n is not None and i < n - max(2, n // 50):  # headers estimate some counts: a few frames' slack
                self.event(f"warning: {self.name} ended after {i} of the {n} frames its header gives "
                           "(truncated or damaged?)")
        finally:
            self.close()

    def close(self) -> None:
        with self._lock:
            self._cap.release()


class LiveSource(Source):
    """A camera / stream: a grabber thread keeps only the newest frame; reconnects with back-off.

    `opener()` returns a capture-like object (isOpened(), read() -> (ok, BGR frame), release()).
    `retries` consecutive failed reconnect attempts end the stream (`lost` is then True); the delay
    starts at `backoff` seconds and doubles up to `max_backoff`.
    """

    def __init__(self, name: str, opener: Callable, *, retries: int = 5, backoff: float = 1.0,
                 max_backoff: float = 30.0, **kw):
        super().__init__(name, "live", **kw)
        self._opener, self.retries, self.backoff, self.max_backoff = opener, retries, backoff, max_backoff
        self._cond = threading.Condition()
        self._latest: tuple | None = None
        self._ended = False
        self._stop = threading.Event()
        self.grabbed = 0
        cap = opener()
        if cap is None or not cap.isOpened():
            from tledge.runtime.cameras import open_hint

            raise TledgeError(f"cannot open {name}: {open_hint(name)}")
        self._cap = cap
        self._thread = threading.Thread(target=self._grab_loop, name=f"tledge-grab-{name}", daemon=True)
        self._thread.start()

    def _put(self, img) -> None:
        # never wait on the reader for long: a Ctrl-C that lands just after the reader took the lock
        # (before its `with` block is set up) can leave the lock held; the grabber must still stop
        if not self._cond.acquire(timeout=0.5):
            self.dropped += 1
            return
        try:
            if self._latest is not None:
                self.dropped += 1
            self._latest = (img, time.time())
            self.grabbed += 1
            self._cond.notify_all()
        finally:
            self._cond.release()

    def _grab_loop(self) -> None:
        failed, since = 0, self.grabbed  # a stream that ends again at once is a failed attempt, not a reconnection
        try:
            while not self._stop.is_set():
                ok, img = _read(self._cap, self.event, self.name)
                if ok and img is not None:
                    self._put(img)
                    continue
                _release(self._cap)
                failed = failed + 1 if self.reconnects and self.grabbed - since <= 1 else 0
                if self._stop.is_set() or not self._reconnect(first=failed + 1):
                    break
                since = self.grabbed
        finally:
            self._ended = True  # first: a release() that raises no longer left frames() waiting for ever
            _release(self._cap)
            if self._cond.acquire(timeout=0.5):
                self._cond.notify_all()
                self._cond.release()

    def _reconnect(self, first: int = 1) -> bool:
        for attempt in range(first, self.retries + 1):
            delay = min(self.backoff * 2 ** (attempt - 1), self.max_backoff)
            self.event(f"{self.name}: stream lost after {self.grabbed} frames; reconnecting in {delay:.1f} s "
                       f"(attempt {attempt}/{self.retries})")
            if self._stop.wait(delay):
                return False
            try:  # a camera that is gone or busy: Picamera2() raises, as a custom opener may
                cap = self._opener()
            except Exception as exc:  # noqa: BLE001 - a failed attempt, said; not the end of the grabber thread
                cap = None
                self.event(f"{self.name}: cannot reopen it: {exc.__class__.__name__}: {str(exc)[:200]}")
            ok, img = _read(cap, self.event, self.name) if cap is not None else (False, None)
            if ok and img is not None:
                self._cap = cap
                self.reconnects += 1
                self.event(f"{self.name}: reconnected")
                self._put(img)
                return True
            if cap is not None:
                _release(cap)
        self.lost = True
        self.event(f"{self.name}: gave up after {self.retries} reconnect attempts")
        return False

    def frames(self) -> Iterator[Frame]:
        i = 0
        try:
            while True:
                with self._cond:
                    while self._latest is None and not self._ended:
                        self._cond.wait(0.1)  # a timeout keeps Ctrl-C responsive
                    if self._latest is None:
                        return
                    img, t = self._latest
                    self._latest = None
                yield Frame(f"{self.name}#{i}", i, image=img, bgr=True, timestamp=t)
                i += 1
        finally:
            self.close()

    def close(self) -> None:
        """Stop the grabber and wait for it once (close is called from several finally blocks)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)


def _read(cap, say, name: str):
    """cap.read() of an open capture, a capture that raises (its device gone) taken as a frame that did not come."""
    try:
        return cap.read() if cap.isOpened() else (False, None)
    except Exception as exc:  # noqa: BLE001 - the grabber thread died with a traceback, and the run ended exit 0
        say(f"{name}: reading failed: {exc.__class__.__name__}: {str(exc)[:200]}")
        return False, None


def _release(cap) -> None:
    with contextlib.suppress(Exception):  # a device already gone may raise here too
        cap.release()


# ---- open_source ----------------------------------------------------------------------------------

def source_text(spec: str | Path) -> str:
    """The source as typed, without the spaces a copy-paste adds around it, unless a file or folder has them in its
    name ("trail " beside "trail", " photo.jpg")."""
    s = str(spec)
    return s if s != s.strip() and os.path.lexists(os.path.expanduser(s)) else s.strip()


def open_source(spec: str | Path, *, retries: int = 5, backoff: float = 1.0,
                on_event: Callable[[str], None] | None = print_event, opener: Callable | None = None) -> Source:
    """An image file, a folder (recursive), a glob, a video file, a camera index (or /dev/videoN), an
    RTSP/HTTP URL, a GStreamer pipeline (contains '!') or `picamera2`. An existing file or folder
    always wins (a folder named `2024`, a photo with `!` in its name). `opener` replaces the capture
    factory of live sources (for tests and custom cameras)."""
    s = source_text(spec)
    live = dict(retries=retries, backoff=backoff, on_event=on_event)
    if s == "-" and not Path(s).exists():
        raise TledgeError("--source -: images are not read from standard input; pass an image, folder, glob, "
                          "video, camera index, URL, GStreamer pipeline or picamera2")
    if expand(s).exists() and not s.startswith("/dev/video"):
        return _file_source(s, on_event)  # an existing file or folder wins: `2024/`, `a!b.jpg`, `picamera2/`
    from tledge.runtime import cameras  # (live sources only: not on the cold start of a photo)

    if s == "picamera2":
        return LiveSource("picamera2", opener or cameras.picamera_opener(), **live)
    if re.fullmatch(r"\d+|/dev/video\d+", s):
        if int(s.removeprefix("/dev/video")) > cameras.MAX_INDEX:  # OpenCV raised "Python int too large", a traceback
            raise TledgeError(f"cannot open camera:{s}: OpenCV takes camera numbers up to {cameras.MAX_INDEX}")
        return LiveSource(f"camera:{s}", opener or cameras.cv2_opener(int(s) if s.isdigit() else s), **live)
    if s.lower().startswith(("http://", "https://")) and Path(urlsplit(s).path).suffix.lower() in _image_suffixes():
        from tledge.runtime.url_image import ImageURLSource

        return ImageURLSource(s, on_event=on_event)  # a photo, not a stream: fetched once, decoded as files are
    suffix = Path(urlsplit(s).path).suffix.lower()
    if s.lower().startswith(("http://", "https://")) and suffix in VIDEO_SUFFIXES and \
            (suffix in VIDEO_FILES or _finite(s)):
        return VideoSource(s, name=redact(s), on_event=on_event)  # a file: every frame once, then the end
    if s.lower().startswith(STREAM_SCHEMES):
        return LiveSource(redact(s), opener or cameras.cv2_opener(s, "CAP_FFMPEG"), **live)
    if "!" in s and not (glob.has_magic(s) and glob_paths(expand(s))):
        cameras.require_gstreamer()
        return LiveSource("gstreamer", opener or cameras.cv2_opener(s, "CAP_GSTREAMER"), **live)
    return _file_source(s, on_event)


def _finite(url: str) -> bool:
    """Whether an http(s) .ts / .mjpeg / .mjpg address (usually a live stream) answers with a file: a length, not a
    multipart stream. A file there was reconnected to for ever, its frames classified again on each pass."""
    from tledge.runtime.url_image import response_headers

    headers = response_headers(url)
    return headers is not None and headers.get("Content-Length") is not None and \
        not str(headers.get("Content-Type", "")).lower().startswith("multipart/")


def _image_suffixes() -> set[str]:
    from tledge.images import IMAGE_SUFFIXES

    return IMAGE_SUFFIXES


def _file_source(s: str, on_event) -> Source:
    from tledge.images import IMAGE_SUFFIXES, data_files

    p = expand(s)
    if p.is_dir():
        from tledge.isobmff import skipped

        lost: list[Path] = []
        every = data_files(p, lost)
        files = [f for f in every if f.suffix.lower() in IMAGE_SUFFIXES]
        lost = [f for f in lost if f.suffix.lower() in IMAGE_SUFFIXES]
        videos = [f for f in every if f.suffix.lower() in VIDEO_SUFFIXES]  # a folder source is its images
        said = f"; its {len(videos)} video(s) ({videos[0].name}...) are read one per --source" if videos else ""
        unread = skipped(every)  # HEIC / AVIF: skipped without a word
        if not files:
            raise TledgeError(f"no image files in {p} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}){said}"
                              + (f"; {unread}" if unread else ""))
        source = FileSource(str(p), files, on_event=on_event)
        if videos:
            source.event(f"{p}: the images only{said}")
        if unread:
            source.event(f"{p}: {unread}")
        if lost:  # (the summary counted only the images that are there: "25 ok", of 49 listed)
            source.event(f"{p}: {len(lost)} image(s) are symbolic links to missing files, not read ({lost[0]}...)")
        return source
    if p.is_file():
        if p.suffix.lower() in VIDEO_SUFFIXES:
            return VideoSource(p, on_event=on_event)
        return FileSource(str(p), [p], on_event=on_event)
    if glob.has_magic(s):
        matches = glob_paths(p)  # each real folder once (a link back up the tree), sorted as a folder's files
        files = [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            from tledge.isobmff import skipped

            unread = skipped([m for m in matches if m.is_file()])
            videos = [m for m in matches if m.is_file() and m.suffix.lower() in VIDEO_SUFFIXES]
            said = f"; {len(videos)} of them are videos ({videos[0].name}...), read one per --source" if videos else ""
            raise TledgeError(f"no image files match {s!r}" + (f" ({len(matches)} other paths do)" if matches else "")
                              + said + (f"; {unread}" if unread else ""))
        return FileSource(s, files, on_event=on_event)
    if p.exists():  # a device, FIFO or socket: /dev/null, /dev/stdin
        raise TledgeError(f"source {s!r} is neither a regular file nor a folder (expected an image, folder, glob, "
                          "video, camera index, rtsp:// or http:// URL, GStreamer pipeline or picamera2)")
    raise TledgeError(f"source not found: {s!r} (expected an image, folder, glob, video, camera index, "
                      "rtsp:// or http:// URL, GStreamer pipeline or picamera2)")
