"""One decode for every path, whatever OpenCV or the caller hands over: truncated JPEGs (OpenCV 4 fills them with
grey rows, OpenCV 5 refuses them), 16-bit PIL images of either byte order, PIL's premultiplied LA, arrays of
non-numbers, and the netpbm suffixes OpenCV reads."""
from __future__ import annotations

import io

import numpy as np
import pytest

from tledge.errors import ImageError
from tledge.imagebytes import jpeg_truncated
from tledge.images import IMAGE_SUFFIXES, as_rgb, decode


def _photo(progressive: bool = False, exif_thumbnail: bool = False) -> np.ndarray:
    from PIL import Image

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8))
    kw: dict = {"quality": 90, "progressive": progressive}
    if exif_thumbnail:  # an APP1 holding a whole JPEG (its own end marker) before the main image
        thumb = io.BytesIO()
        img.resize((16, 12)).save(thumb, "JPEG")
        kw["exif"] = b"Exif\x00\x00" + b"\xff\xd8" + thumb.getvalue()[2:]
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return np.frombuffer(buf.getvalue(), np.uint8)


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("thumb", [False, True])
def test_truncated_jpeg_is_refused_and_a_complete_one_is_not(progressive, thumb):
    data = _photo(progressive, thumb)
    assert not jpeg_truncated(data)
    assert decode(data, "x").shape == (64, 80, 3)
    for cut in (data[: data.size // 2], data[:-2], data[: int(data.size * 0.95)]):
        assert jpeg_truncated(cut)
        with pytest.raises(ImageError, match="truncated JPEG"):
            decode(cut, "x")


def test_a_file_cut_in_its_header_is_the_decoders_to_refuse():
    data = _photo()
    assert not jpeg_truncated(data[:40])  # no scan yet: "not an image or corrupt", as before
    with pytest.raises(ImageError, match="not an image or corrupt"):
        decode(data[:40], "x")


def test_bytes_after_the_end_marker_are_not_the_image():
    """A Motion Photo carries its video after the JPEG's end marker: markers in it mean nothing."""
    data = _photo()
    tail = np.random.default_rng(1).integers(0, 256, 20000).astype(np.uint8)
    tail[10:12] = (0xFF, 0xDA)  # a start-of-scan pattern in the video bytes
    assert not jpeg_truncated(np.concatenate([data, tail]))


def test_sixteen_bit_pil_images_of_either_byte_order_read_as_the_array_does():
    from PIL import Image

    g16 = (np.arange(8 * 64).reshape(8, 64) * 120).astype(np.uint16)
    big = Image.fromarray(g16.astype(">u2"))
    assert big.mode == "I;16B"
    np.testing.assert_array_equal(as_rgb(big), as_rgb(g16))  # was clipped to 255 by convert("RGB")
    assert as_rgb(g16)[0, -1, 0] < 255


def test_premultiplied_la_and_masks():
    from PIL import Image

    assert as_rgb(Image.new("La", (8, 6))).shape == (6, 8, 3)  # Pillow: "conversion from La to L not supported"
    np.testing.assert_array_equal(as_rgb(np.eye(3, dtype=bool))[..., 0], np.eye(3, dtype=np.uint8) * 255)


@pytest.mark.parametrize("bad", [np.empty((4, 4, 3), object), np.array([["a"]]), np.zeros((4, 4), complex)])
def test_arrays_of_non_numbers_are_an_image_error(bad):
    with pytest.raises(ImageError, match="holds numbers"):
        as_rgb(bad)


def test_netpbm_suffixes_are_images():
    assert {".pbm", ".pgm", ".ppm", ".pnm"} <= IMAGE_SUFFIXES


def test_gif_bytes_read_where_opencv_decodes_no_gif(monkeypatch):
    """OpenCV < 4.11 (what boards install: Pi OS's picamera2 needs it) decodes no GIF from bytes: a GIF URL
    failed there, "not an image or corrupt", while a GIF file was read through the video reader."""
    import cv2
    from PIL import Image

    rgb = np.random.default_rng(2).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("P").save(buf, "GIF")
    want = as_rgb(buf.getvalue())
    real = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda d, f: None if bytes(d[:4]) == b"GIF8" else real(d, f))
    np.testing.assert_array_equal(as_rgb(buf.getvalue()), want)


def test_a_one_channel_float_tiff_decodes_by_path_and_turned(tmp_path):
    """OpenCV's IMREAD_COLOR asserts on a 1-channel float TIFF (`ncn == img.channels()`): the file was refused as
    "not an image or corrupt" by path and as bytes, while the same image as a PIL image or an array was read."""
    from PIL import Image

    from tledge import images

    a = np.zeros((20, 30), np.float32)
    a[:5] = 1.0  # the top rows bright; EXIF orientation 6 turns them to the right
    Image.fromarray(a, mode="F").save(tmp_path / "f.tif", tiffinfo={274: 6})
    for x in (images.load(tmp_path / "f.tif"), images.as_rgb((tmp_path / "f.tif").read_bytes())):
        assert x.shape == (30, 20, 3) and x.dtype == np.uint8
        assert (x[:, -5:] == 255).all() and (x[:, :-5] == 0).all()


def test_an_os2_bitmap_is_not_taken_for_a_decompression_bomb():
    """An OS/2 1.x BMP (12-byte core header: 16-bit width and height) was read as 32-bit sizes: 12369765 megapixels,
    refused."""
    from tledge.imagebytes import header_pixels

    w, h = 160, 120
    row = (w * 3 + 3) // 4 * 4
    head = b"BM" + (26 + row * h).to_bytes(4, "little") + bytes(4) + (26).to_bytes(4, "little")
    core = (12).to_bytes(4, "little") + w.to_bytes(2, "little") + h.to_bytes(2, "little") + (1).to_bytes(2, "little") \
        + (24).to_bytes(2, "little")
    data = np.frombuffer(head + core + bytes(row * h), np.uint8)
    assert header_pixels(data) == w * h
    rgb = decode(data, "os2.bmp")
    assert rgb.shape == (h, w, 3)
