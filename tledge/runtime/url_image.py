"""An http(s) address of one image as a source: fetched once and decoded as image files are."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from tledge.errors import TledgeError
from tledge.runtime.sources import Frame, Source, redact


class ImageURLSource(Source):
    """One image at an http(s) address, fetched once and decoded as image files are (EXIF orientation applied):
    FFmpeg would read it as a one-frame stream, without EXIF, and reconnect to it for ever."""

    MAX_BYTES = 64 << 20

    def __init__(self, url: str, **kw):
        import urllib.request

        from tledge.images import decode

        super().__init__(redact(url), "files", **kw)
        try:
            with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - the user's own address
                data = response.read(self.MAX_BYTES + 1)
        except (OSError, ValueError) as exc:
            raise TledgeError(f"cannot fetch {self.name}: {getattr(exc, 'reason', None) or exc}") from None
        if len(data) > self.MAX_BYTES:
            raise TledgeError(f"{self.name} is over {self.MAX_BYTES >> 20} MB: not a photo")
        self.image = decode(np.frombuffer(data, np.uint8), self.name)

    def __len__(self) -> int:
        return 1

    def frames(self) -> Iterator[Frame]:
        yield Frame(self.name, 0, image=self.image)
