"""A Frame (one input image, decoded lazily) and a Source (where frames come from): the base classes of
tledge.runtime.sources and of the sources in their own modules (tledge.runtime.url_image)."""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from tledge.errors import ImageError


@dataclass
class Frame:
    """One input. `image` is HxWx3 uint8 (RGB, or BGR while `bgr`), or None until a file is decoded."""

    source: str
    index: int
    image: np.ndarray | None = None
    error: str | None = None
    path: Path | None = None
    timestamp: float = 0.0
    bgr: bool = False

    def rgb(self) -> np.ndarray:
        """The decoded RGB image (decodes a file frame; raises ImageError when it cannot)."""
        if self.error:
            raise ImageError(self.error)
        if self.image is None and self.path is not None:
            from tledge import images

            self.image = images.load(self.path)
        elif self.bgr:
            import cv2

            self.image = cv2.cvtColor(self.image, cv2.COLOR_BGR2RGB)
            self.bgr = False
        if self.image is None:
            raise ImageError(f"{self.source}: no image")
        return self.image


def print_event(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


EVENTS_KEPT = 1000  # the latest of a source's messages kept in Source.events (each is said as it comes)


@dataclass
class Source:
    name: str
    kind: str = "files"  # files | video | live
    fps: float | None = None
    events: list[str] = field(default_factory=list)
    dropped: int = 0
    reconnects: int = 0
    lost: bool = False
    on_event: Callable[[str], None] = print_event

    @property
    def live(self) -> bool:
        return self.kind == "live"

    def frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def event(self, message: str) -> None:
        self.events.append(message)
        if len(self.events) > EVENTS_KEPT:  # a camera reconnecting for days: two messages each time
            del self.events[0]
        if self.on_event:
            self.on_event(message)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def redact(url: str) -> str:
    """rtsp://user:password@host -> rtsp://user:***@host (names appear in logs and outputs)."""
    return re.sub(r"(://[^:/@]+):[^@/]+@", r"\1:***@", url)
