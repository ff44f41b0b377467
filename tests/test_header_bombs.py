"""Decompression bombs in TIFF and JPEG 2000: `header_pixels` read PNG, GIF, BMP, WebP and JPEG headers only, so a
453 KB deflate TIFF of 17000 x 17000 was decoded (1.76 GB) while the same PNG was refused. Tiny crafted files
whose first IFD (TIFF) or ihdr box / SIZ marker (JPEG 2000) states the size."""
from __future__ import annotations

import io
import struct

import numpy as np
import pytest

from tledge.errors import ImageError
from tledge.imagebytes import header_pixels
from tledge.images import MAX_PIXELS, decode

HUGE = (17000, 17000)  # 289 megapixels


def _tiff(w: int, h: int, order: str = "<", big: bool = False, typ: int = 4, ifd_last: bool = True) -> np.ndarray:
    """An 8-bit grey TIFF (classic or BigTIFF, either byte order, width / height as SHORT 3 or LONG 4) whose IFD0
    states w x h, followed (or preceded, as libtiff writes it) by a few bytes of pixels."""
    pixels = bytes(np.arange(min(w * h, 4096)) % 251)
    entries = [(256, typ, w), (257, typ, h), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 0), (277, 3, 1),
               (278, typ, h), (279, 4, w * h)]
    head = 16 if big else 8
    ifd_size = (8 + 20 * len(entries) + 8) if big else (2 + 12 * len(entries) + 4)
    ifd_at, pix_at = (head + len(pixels), head) if ifd_last else (head, head + ifd_size)
    word = "Q" if big else "I"
    ifd = struct.pack(order + word[0] if big else order + "H", len(entries))
    for tag, t, v in entries:
        v = pix_at if tag == 273 else v
        value = struct.pack(order + ("H" if t == 3 else "I"), v).ljust(8 if big else 4, b"\0")
        ifd += struct.pack(order + "HH" + word, tag, t, 1) + value
    ifd += struct.pack(order + word, 0)
    mark = b"II" if order == "<" else b"MM"
    top = mark + (struct.pack(order + "HHHQ", 43, 8, 0, ifd_at) if big else struct.pack(order + "HI", 42, ifd_at))
    body = top + (pixels + ifd if ifd_last else ifd + pixels)
    return np.frombuffer(body, np.uint8)


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("typ", [3, 4])
@pytest.mark.parametrize("ifd_last", [False, True])
def test_a_tiff_header_states_its_size(order, big, typ, ifd_last):
    small = _tiff(48, 32, order, big, typ, ifd_last)
    assert header_pixels(small) == 48 * 32
    import cv2

    assert cv2.imdecode(small, cv2.IMREAD_GRAYSCALE).shape == (32, 48)  # a well-formed TIFF
    bomb = _tiff(*HUGE, order, big, typ, ifd_last)
    assert header_pixels(bomb) == HUGE[0] * HUGE[1] > MAX_PIXELS
    with pytest.raises(ImageError, match="289 megapixels, over tledge's 268"):
        decode(bomb, "bomb.tif")


def test_real_tiffs_state_their_size():
    import cv2
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, (30, 50, 3), np.uint8)
    for kw in ({}, {"compression": "tiff_deflate"}, {"big_tiff": True}):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "TIFF", **kw)
        assert header_pixels(np.frombuffer(buf.getvalue(), np.uint8)) == 30 * 50
    ok, enc = cv2.imencode(".tif", rgb)
    assert ok and header_pixels(enc) == 30 * 50


def test_broken_tiff_headers_are_not_sizes():
    assert header_pixels(np.frombuffer(b"II*\x00\xff\xff\xff\x7f" + bytes(40), np.uint8)) is None  # IFD0 past the end
    assert header_pixels(np.frombuffer(b"II\x2b\x00" + bytes(40), np.uint8)) is None  # BigTIFF without its IFD0
    assert header_pixels(_tiff(48, 32)[:8 + 1536 + 2 + 12 + 6]) is None  # cut in its IFD: the height lost


def _jp2(w: int, h: int) -> np.ndarray:
    box = lambda kind, body: struct.pack(">I", 8 + len(body)) + kind + body  # noqa: E731
    ihdr = box(b"ihdr", struct.pack(">IIHBBBB", h, w, 3, 7, 7, 0, 0))
    colr = box(b"colr", struct.pack(">BBBI", 1, 0, 0, 16))
    return np.frombuffer(box(b"jP  ", b"\r\n\x87\n") + box(b"ftyp", b"jp2 " + bytes(4) + b"jp2 ")
                         + box(b"jp2h", ihdr + colr) + box(b"jp2c", b"\xff\x4f\xff\x51"), np.uint8)


def _j2k(w: int, h: int, x0: int = 0, y0: int = 0) -> np.ndarray:
    siz = struct.pack(">HHHIIIIIIIIH", 0xFF51, 47, 0, w, h, x0, y0, w, h, 0, 0, 3) + bytes(9)
    return np.frombuffer(b"\xff\x4f" + siz, np.uint8)


def test_jpeg2000_headers_state_their_size():
    assert header_pixels(_jp2(48, 32)) == 48 * 32
    assert header_pixels(_j2k(48, 32)) == 48 * 32
    assert header_pixels(_j2k(48, 32, 8, 2)) == 40 * 30  # the image area starts at the offsets
    for bomb, name in ((_jp2(*HUGE), "bomb.jp2"), (_j2k(*HUGE), "bomb.bin")):  # not by the suffix
        assert header_pixels(bomb) == HUGE[0] * HUGE[1]
        with pytest.raises(ImageError, match="289 megapixels"):
            decode(bomb, name)


def test_real_jpeg2000_files_state_their_size():
    import cv2
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, (48, 80, 3), np.uint8)  # (OpenJPEG refuses 30 x 50)
    ok, enc = cv2.imencode(".jp2", rgb)
    assert ok and header_pixels(enc) == 48 * 80
    for kw in ({}, {"no_jp2": True}):  # a JP2 file, a raw codestream
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "JPEG2000", **kw)
        assert header_pixels(np.frombuffer(buf.getvalue(), np.uint8)) == 48 * 80
