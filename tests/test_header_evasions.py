"""Image headers that libjpeg / libtiff decode but the size check did not read (helper 151's fuzzing): a stray byte
between JPEG segments, TIFF sizes as signed integers, a TIFF size tag given twice; and golden files damaged inside
their zip members (a traceback, exit 1: what `parity --golden` gives a board that disagrees)."""
from __future__ import annotations

import shutil
import struct
import zipfile

import numpy as np
import pytest

from tledge.errors import ImageError, TledgeError
from tledge.imagebytes import header_pixels
from tledge.images import decode

from tiny import TINY, need


def _jpeg_claiming(w: int, h: int, junk: bytes = b"") -> np.ndarray:
    """A 16 x 16 JPEG whose frame header is patched to say w x h, with `junk` before its first segment after APP0."""
    import cv2

    ok, enc = cv2.imencode(".jpg", np.zeros((16, 16), np.uint8))
    data = bytearray(enc.tobytes())
    sof = next(i for i in range(2, len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC2))
    struct.pack_into(">HH", data, sof + 5, h, w)
    app0_end = 4 + struct.unpack_from(">H", data, 4)[0]
    return np.frombuffer(bytes(data[:app0_end]) + junk + bytes(data[app0_end:]), np.uint8)


def test_a_stray_byte_between_jpeg_segments_does_not_hide_the_size():
    assert header_pixels(_jpeg_claiming(20000, 20000)) == 400_000_000
    stray = _jpeg_claiming(20000, 20000, b"\x00")  # libjpeg: "1 extraneous bytes before marker", then decodes
    assert header_pixels(stray) == 400_000_000
    with pytest.raises(ImageError, match="400 megapixels"):
        decode(stray, "bomb.jpg")
    assert header_pixels(_jpeg_claiming(16, 16, b"\x00\x17")) == 256


def _tiff(entries) -> np.ndarray:
    """A little-endian classic TIFF: IFD0 of (tag, type, value) entries, 4-byte values, then 64 bytes of pixels."""
    ifd = struct.pack("<H", len(entries))
    for tag, typ, value in entries:
        ifd += struct.pack("<HHI", tag, typ, 1) + struct.pack("<i" if typ in (8, 9) else "<I", value)
    ifd += struct.pack("<I", 0)
    return np.frombuffer(b"II" + struct.pack("<HI", 42, 8) + ifd + bytes(64), np.uint8)


def test_signed_and_repeated_tiff_size_tags_are_read_as_libtiff_reads_them():
    base = [(258, 3, 8), (259, 3, 1), (262, 3, 1), (277, 3, 1)]
    assert header_pixels(_tiff([(256, 9, 20000), (257, 9, 20000)] + base)) == 400_000_000  # SLONG
    assert header_pixels(_tiff([(256, 8, 20000), (257, 8, 20000)] + base)) == 400_000_000  # SSHORT
    twice = _tiff([(256, 4, 20000), (257, 4, 20000)] + base + [(256, 4, 1), (257, 4, 1)])
    assert header_pixels(twice) == 400_000_000  # the first entry, as libtiff (the last said 1 x 1)


@pytest.mark.parametrize("damage", ["deflate", "method", "encrypted"])
def test_a_golden_file_damaged_inside_is_a_one_line_error(tmp_path, damage):
    from tledge.runtime import golden

    need("golden.npz")
    p = tmp_path / "golden.npz"
    shutil.copy(TINY / "golden.npz", p)
    data = bytearray(p.read_bytes())
    with zipfile.ZipFile(p) as zf:
        info, start_dir = zf.getinfo("pixels.npy"), zf.start_dir
    if damage == "deflate" and info.compress_type != zipfile.ZIP_DEFLATED:
        pytest.skip("the committed golden file is stored, not deflated")
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    if damage == "deflate":
        data[info.header_offset + 30 + name_len + extra_len] = 0xFF  # an invalid deflate block type
    elif damage == "method":
        data[info.header_offset + 8] = data[start_dir + 10] = 99
    else:
        data[start_dir + 8] |= 1
    p.write_bytes(bytes(data))
    with pytest.raises(TledgeError, match="is not a readable tledge golden file"):
        golden.read(p)
