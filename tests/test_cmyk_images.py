"""A CMYK image given as a PIL image gives the pixels its file's path gives: a CMYK JPEG's path is decoded by
OpenCV, whose rounding differs from PIL's convert("RGB"); a CMYK TIFF's by libtiff, which rounds as PIL does."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("PIL")


def test_a_cmyk_jpeg_gives_the_same_pixels_as_a_pil_image_as_by_its_path(tmp_path):
    """PIL's convert("RGB") rounds CMYK otherwise than the path's decoding: the same photo given as a PIL image
    differed by 1-2 on 99.9 % of its values (7 of 120 int8 top-1 answers changed)."""
    from PIL import Image

    from tledge.contract import Contract
    from tledge.images import load, to_uint8_rgb

    rng = np.random.default_rng(0)
    photo = np.clip(rng.normal(128, 60, (40, 56, 3)), 0, 255).astype(np.uint8)
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(photo).convert("CMYK").save(path, quality=95)
    with Image.open(path) as img:
        assert img.mode == "CMYK"
        np.testing.assert_array_equal(to_uint8_rgb(img), load(path))
        c = Contract(24, 24)
        np.testing.assert_array_equal(c.prepare(img), c.prepare(path))


def test_a_cmyk_tiff_gives_the_same_pixels_as_a_pil_image_as_by_its_path(tmp_path):
    """Its path is decoded by libtiff, which rounds as PIL's convert does: only a CMYK JPEG takes OpenCV's rounding
    (applied to every PIL CMYK image, a TIFF differed by 1 on 99.6 % of its values)."""
    from PIL import Image

    from tledge.images import load, to_uint8_rgb

    rng = np.random.default_rng(1)
    path = tmp_path / "cmyk.tif"
    Image.fromarray(np.clip(rng.normal(128, 60, (40, 56, 3)), 0, 255).astype(np.uint8)).convert("CMYK").save(path)
    with Image.open(path) as img:
        assert img.mode == "CMYK"
        np.testing.assert_array_equal(to_uint8_rgb(img), load(path))
