"""What `tledge run` opens live sources with: OpenCV captures (camera index, URL, GStreamer pipeline) and picamera2
seen as a capture; and what to say when one does not open."""
from __future__ import annotations

from typing import Callable

from tledge.errors import TledgeError

MAX_INDEX = 2**31 - 1  # OpenCV's VideoCapture(index) takes a C int


def open_hint(name: str) -> str:
    if name.startswith("camera"):
        return "is it connected, and readable by this user (the video group, /dev/video*)?"
    if name.startswith("gstreamer"):
        return "check the pipeline with gst-launch-1.0, ending it in `appsink`"
    return "check the address, credentials and that the stream is up"


class PiCamera:
    """picamera2 seen as a capture: read() -> (True, BGR frame). RGB888 is [B, G, R] in memory."""

    def __init__(self, size=(640, 480)):
        from picamera2 import Picamera2

        self._cam = Picamera2()
        self._cam.configure(self._cam.create_preview_configuration(main={"format": "RGB888", "size": size}))
        self._cam.start()
        self._open = True

    def isOpened(self) -> bool:  # noqa: N802 (cv2's name)
        return self._open

    def read(self):
        try:
            return True, self._cam.capture_array()
        except Exception:  # a camera error ends this capture; the source reconnects
            return False, None

    def release(self) -> None:
        if self._open:
            self._open = False
            try:
                self._cam.stop()
                self._cam.close()
            except Exception:
                pass


def cv2_opener(target, api: str | None = None) -> Callable:
    def open_capture():
        import cv2

        cap = cv2.VideoCapture(target, getattr(cv2, api)) if api else cv2.VideoCapture(target)
        if cap.isOpened():
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # where supported: do not queue stale frames
        return cap
    return open_capture


def picamera_opener() -> Callable:
    from tledge._deps import available

    if not available("picamera2"):
        raise TledgeError("--source picamera2 needs the picamera2 package (on Raspberry Pi OS: "
                          "sudo apt install python3-picamera2, and create the venv with --system-site-packages)")
    return PiCamera


def require_gstreamer() -> None:
    import cv2

    if not cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
        raise TledgeError("this OpenCV build has no GStreamer support (opencv-python wheels do not): use the "
                          "distribution's python3-opencv, or pass a camera index / URL instead")
