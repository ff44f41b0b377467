"""Signed-integer TIFFs (cv2.imwrite of int8, int16, int32 arrays): OpenCV decodes them as signed arrays, which were
clipped to 0..255 as "other integers": a white or dark image classified with exit 0. PIL refuses these files;
tledge does too, in one line. Arrays a library caller passes are still clipped, as documented."""
from __future__ import annotations

import numpy as np
import pytest

from tledge.errors import ImageError
from tledge.images import as_rgb, decode, load


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32])
@pytest.mark.parametrize("channels", [1, 3])
def test_signed_integer_tiffs_are_refused(dtype, channels, tmp_path):
    import cv2

    rng = np.random.default_rng(0)
    a = rng.integers(0, np.iinfo(dtype).max, (16, 20, channels)).astype(dtype)
    ok, enc = cv2.imencode(".tif", a[:, :, 0] if channels == 1 else a)
    assert ok
    (tmp_path / "s.tif").write_bytes(enc.tobytes())
    bits = np.dtype(dtype).itemsize * 8
    for read in (lambda: decode(enc, "s.tif"), lambda: load(tmp_path / "s.tif"), lambda: as_rgb(enc.tobytes())):
        with pytest.raises(ImageError, match=f"signed {bits}-bit integers.*8/16-bit unsigned and float"):
            read()


def test_unsigned_and_float_tiffs_still_decode():
    import cv2

    g = np.arange(16 * 20).reshape(16, 20) / (16 * 20 - 1)
    for a in ((g * 65535).astype(np.uint16), g.astype(np.float32)):
        ok, enc = cv2.imencode(".tif", np.dstack([a, a, a]))
        assert ok
        assert decode(enc, "u.tif")[-1, -1].tolist() == [255, 255, 255]


def test_signed_arrays_from_a_caller_are_clipped_as_before():
    np.testing.assert_array_equal(as_rgb(np.array([[-5, 300], [7, 8]], np.int32))[..., 0], [[0, 255], [7, 8]])
