"""An http(s) address of one image as a source: fetched once and decoded as image files are."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from tledge.errors import TledgeError
from tledge.runtime.frames import Frame, Source, redact


class ImageURLSource(Source):
    """One image at an http(s) address, fetched once and decoded as image files are (EXIF orientation applied):
    FFmpeg would read it as a one-frame stream, without EXIF, and reconnect to it for ever."""

    MAX_BYTES = 64 << 20

    def __init__(self, url: str, **kw):
        from tledge.images import decode

        super().__init__(redact(url), "files", **kw)
        try:
            with open_url(_request(url), timeout=30) as response:  # noqa: S310 - the user's address
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


def open_url(request, timeout: float):
    """urlopen, with a password kept across a redirect on the same host (a camera's /cam.jpg -> /snapshot.jpg) and
    never sent on to another host (urllib sends a plain Authorization header wherever a redirect points)."""
    import urllib.request

    class SameHost(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):
            new = super().redirect_request(req, fp, code, msg, headers, newurl)
            auth = req.unredirected_hdrs.get("Authorization")
            if new is not None and auth and _same_site(req.full_url, newurl):
                new.add_unredirected_header("Authorization", auth)
            return new

    return urllib.request.build_opener(SameHost).open(request, timeout=timeout)  # noqa: S310 - the user's address


def _same_site(old: str, new: str) -> bool:
    """The same host and port, on the same scheme or from http to https on their usual ports (as requests keeps it)."""
    import urllib.parse

    a, b = urllib.parse.urlsplit(old), urllib.parse.urlsplit(new)
    ports = {"http": 80, "https": 443}
    pa, pb = a.port or ports.get(a.scheme), b.port or ports.get(b.scheme)
    if a.hostname != b.hostname:
        return False
    return (a.scheme == b.scheme and pa == pb) or ((a.scheme, pa, b.scheme, pb) == ("http", 80, "https", 443))


def _request(url: str):
    """`http://user:password@host/snapshot.jpg` (an IP camera's) as urllib needs it: the credentials moved into a
    Basic Authorization header (urlopen took `user:password@host` for a host name)."""
    import base64
    import urllib.parse
    import urllib.request

    u = urllib.parse.urlsplit(url)
    if u.username is None:
        return urllib.request.Request(url)
    if not u.hostname:  # (`user:pw@/x.jpg`: a TypeError traceback)
        raise TledgeError(f"cannot fetch {redact(url)}: no host given")
    host = u.hostname + (f":{u.port}" if u.port else "")
    if ":" in u.hostname:  # IPv6
        host = f"[{u.hostname}]" + (f":{u.port}" if u.port else "")
    plain = urllib.parse.urlunsplit((u.scheme, host, u.path, u.query, u.fragment))
    user, password = urllib.parse.unquote(u.username), urllib.parse.unquote(u.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(plain)  # not sent on to whatever host a redirect names (urllib would)
    request.add_unredirected_header("Authorization", f"Basic {token}")
    return request


class RangeReader:
    """An http(s) file as a binary file object for tledge.isobmff (seek / read): each read is a request for that byte
    range (a server that ignores Range is read from the start, up to MAX_SKIP bytes). `failed` says why it could not
    read, if it could not; reads then return nothing."""

    MAX_SKIP = 64 << 20

    def __init__(self, url: str, timeout: float = 10.0):
        self.url, self.timeout, self.at, self.requests, self.failed = url, timeout, 0, 0, None

    def seek(self, at: int) -> int:
        self.at = at
        return at

    def read(self, n: int) -> bytes:
        if self.failed or n <= 0 or self.requests >= 64:  # a moov is the second or third box: a few requests
            self.failed = self.failed or "too many boxes before the moov"
            return b""
        self.requests += 1
        request = _request(self.url)
        request.add_header("Range", f"bytes={self.at}-{self.at + n - 1}")
        try:
            with open_url(request, timeout=self.timeout) as response:  # noqa: S310 - the user's address
                if response.status != 206:  # the whole file: what comes before `at` is read and dropped
                    if self.at > self.MAX_SKIP:
                        self.failed = "the server sends no byte ranges and the moov is far into the file"
                        return b""
                    response.read(self.at)
                data = response.read(n)
        except (OSError, ValueError) as exc:
            code = getattr(exc, "code", None)  # (an HTTPError's status)
            self.failed = (f"HTTP {code} " if isinstance(code, int) else "") + str(getattr(exc, "reason", None) or exc)
            return b""
        self.at += len(data)
        return data


def response_headers(url: str, timeout: float = 10.0):
    """The headers an http(s) address answers a GET with (the body left unread), or None when it does not answer."""
    try:
        with open_url(_request(url), timeout=timeout) as response:  # noqa: S310 - the user's address
            return response.headers
    except (OSError, ValueError):
        return None
