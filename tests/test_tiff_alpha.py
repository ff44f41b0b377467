"""TIFF alpha: OpenCV reads 8-bit TIFFs through libtiff's RGBA interface, which multiplied the colour of an
unassociated alpha (ExtraSamples 2: what PIL, GIMP and Photoshop write) by that alpha: a photo saved half-transparent
decoded half as bright (mean 60.7 instead of 120.9), and labels changed. Alpha is dropped, as for PNG."""
from __future__ import annotations

import io

import numpy as np
import pytest

from tledge.images import as_rgb, decode

_RNG = np.random.default_rng(7)
_RGB = _RNG.integers(0, 256, (24, 32, 3), np.uint8)
_ALPHAS = {"half": np.full((24, 32), 128, np.uint8), "varying": _RNG.integers(0, 256, (24, 32), np.uint8)}


def _encoded(img, fmt: str, **kw) -> np.ndarray:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return np.frombuffer(buf.getvalue(), np.uint8)


def _set_short(data: np.ndarray, tag: int, value: int) -> np.ndarray:
    """A little-endian classic TIFF with its IFD0's `tag` (one inline SHORT) set to `value`."""
    b = bytearray(data.tobytes())
    assert b[:4] == b"II*\x00"
    off = int.from_bytes(b[4:8], "little")
    for e in range(off + 2, off + 2 + 12 * int.from_bytes(b[off:off + 2], "little"), 12):
        if int.from_bytes(b[e:e + 2], "little") == tag:
            b[e + 8:e + 10] = value.to_bytes(2, "little")
            return np.frombuffer(bytes(b), np.uint8)
    raise AssertionError(f"no tag {tag}")


@pytest.mark.parametrize("alpha", sorted(_ALPHAS))
@pytest.mark.parametrize("compression", [None, "tiff_deflate"])
def test_unassociated_alpha_tiff_decodes_as_the_same_png(alpha, compression):
    from PIL import Image

    im = Image.fromarray(np.dstack([_RGB, _ALPHAS[alpha]]), "RGBA")
    tif = _encoded(im, "TIFF", compression=compression)
    assert Image.open(io.BytesIO(tif.tobytes())).tag_v2.get(338) == (2,)  # unassociated, as PIL writes it
    png = decode(_encoded(im, "PNG"), "x.png")
    np.testing.assert_array_equal(png, _RGB)
    got = decode(tif, "x.tif")
    assert np.abs(got.astype(int) - png).max() <= 1


def test_unassociated_gray_alpha_and_turned_tiff():
    from PIL import Image

    gray = _RGB[:, :, 1]
    la = decode(_encoded(Image.fromarray(np.dstack([gray, _ALPHAS["varying"]]), "LA"), "TIFF"), "la.tif")
    assert np.abs(la.astype(int) - gray[:, :, None]).max() <= 1
    im = Image.fromarray(np.dstack([_RGB, _ALPHAS["varying"]]), "RGBA")
    turned = decode(_encoded(im, "TIFF", tiffinfo={274: 6}), "turned.tif")  # orientation 6: a quarter turn clockwise
    assert np.abs(turned.astype(int) - np.rot90(_RGB, -1)).max() <= 1


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("unturned", [False, True])
def test_associated_alpha_tiff_reads_as_pil_shows_it(orientation, unturned, monkeypatch):
    """ExtraSamples 1: the colour is stored premultiplied; PIL (and GIMP) divide it by alpha. It was decoded
    premultiplied (dark) by path, and as PIL shows it from a PIL image. `unturned`: an OpenCV whose IMREAD_UNCHANGED
    leaves the TIFF orientation (OpenCV 5.1's TIFF reader applies it)."""
    import cv2
    from PIL import Image

    real = cv2.imdecode
    if unturned:
        monkeypatch.setattr(cv2, "imdecode", lambda d, f: real(_set_short(d, 274, 1) if f == cv2.IMREAD_UNCHANGED
                                                               else d, f))

    a = _ALPHAS["varying"]
    pre = ((_RGB.astype(int) * a[:, :, None] + 127) // 255).astype(np.uint8)
    tif = _set_short(_encoded(Image.fromarray(np.dstack([pre, a]), "RGBA"), "TIFF", tiffinfo={274: orientation}),
                     338, 1)
    pil = as_rgb(Image.open(io.BytesIO(tif.tobytes())))  # EXIF orientation applied, as by path
    got = decode(tif, "assoc.tif")
    assert got.shape == pil.shape and np.abs(got.astype(int) - pil).max() <= 1
    if orientation == 1:
        seen = a > 16  # where alpha keeps enough of the colour to get it back
        assert np.abs(got.astype(int) - _RGB)[seen].max() <= 8


def test_alpha_that_was_already_dropped_still_is():
    """An OpenCV-written RGBA TIFF (no ExtraSamples) and a 16-bit RGBA TIFF (not read through the RGBA interface)."""
    import cv2

    a = _ALPHAS["varying"]
    ok, enc = cv2.imencode(".tif", np.dstack([_RGB[:, :, ::-1], a]))
    assert ok
    np.testing.assert_array_equal(decode(enc, "cv.tif"), _RGB)
    ok, enc = cv2.imencode(".tif", np.dstack([_RGB[:, :, ::-1], a]).astype(np.uint16) * 257)
    assert ok
    np.testing.assert_array_equal(decode(enc, "16.tif"), _RGB)
