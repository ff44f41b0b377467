"""What an image file's bytes say without decoding it: the size its header states (a decompression bomb is refused
before OpenCV allocates it), whether a JPEG ends before its end marker, a TIFF's first-page tags. numpy only."""
from __future__ import annotations

import numpy as np


def header_pixels(data: np.ndarray) -> int | None:
    """Width x height as a PNG, JPEG, GIF, BMP, WebP, TIFF or JPEG 2000 header states it (nothing decoded), or None.
    (TIFF and JPEG 2000 were not read: a 453 KB deflate TIFF of 17000 x 17000 was decoded, 1.76 GB.)"""
    b = data[:40].tobytes()

    def num(i, n, order="big"):
        return int.from_bytes(b[i:i + n], order)
    if b[:8] == b"\x89PNG\r\n\x1a\n" and b[12:16] == b"IHDR":
        return num(16, 4) * num(20, 4)
    if b[:6] in (b"GIF87a", b"GIF89a"):
        return num(6, 2, "little") * num(8, 2, "little")
    if b[:2] == b"BM" and len(b) >= 26:
        if num(14, 4, "little") == 12:  # OS/2 1.x BITMAPCOREHEADER: 16-bit width and height
            return num(18, 2, "little") * num(20, 2, "little")
        return abs(int.from_bytes(b[18:22], "little", signed=True) * int.from_bytes(b[22:26], "little", signed=True))
    if b[:4] == b"RIFF" and b[8:12] == b"WEBP":
        if b[12:16] == b"VP8X":
            return (num(24, 3, "little") + 1) * (num(27, 3, "little") + 1)
        if b[12:16] == b"VP8L":
            v = num(21, 4, "little")
            return ((v & 0x3FFF) + 1) * (((v >> 14) & 0x3FFF) + 1)
        return None
    if b[:2] in (b"II", b"MM"):
        w, h = tiff_values(data, 256)[:1], tiff_values(data, 257)[:1]
        return abs(w[0] * h[0]) if w and h else None
    if b[:4] == b"\xff\x4f\xff\x51" and len(b) >= 24:  # a JPEG 2000 codestream (.j2k): SOC, then SIZ
        return max(0, num(8, 4) - num(16, 4)) * max(0, num(12, 4) - num(20, 4))
    if b[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n":  # a JP2 file: its jp2h box holds ihdr (height, width)
        return _jp2_pixels(data)
    return _jpeg_pixels(data) if _is_jpeg(data) else None


def _jp2_pixels(data: np.ndarray) -> int | None:
    """Height x width of a JP2 file's ihdr box, walking the boxes (into the jp2h super-box that holds it)."""
    def num(i, n):
        return int.from_bytes(data[i:i + n].tobytes(), "big")
    pos, n = 0, int(data.size)
    for _ in range(64):
        if pos + 16 > n:
            return None
        length, kind, head = num(pos, 4), data[pos + 4:pos + 8].tobytes(), 8
        if kind == b"ihdr":
            return num(pos + 8, 4) * num(pos + 12, 4)
        if length == 1:  # a 64-bit length follows
            length, head = num(pos + 8, 8), 16
        if kind == b"jp2h":  # a super-box: its first child follows its header
            length = head
        if length < head:  # 0: the box runs to the end of the file (or a corrupt length)
            return None
        pos += length
    return None


# ---- TIFF: the first image file directory (IFD0, the page OpenCV decodes) -----------------------------------
# the integer types of the tags read here: SHORT, LONG, LONG8 (BigTIFF) and the signed SSHORT, SLONG, SLONG8, which
# libtiff takes for a width too (a 20000 x 20000 bomb with SLONG sizes was decoded: the check did not see them)
_TIFF_SIZES = {3: 2, 4: 4, 16: 8, 8: 2, 9: 4, 17: 8}
_TIFF_SIGNED = {8, 9, 17}


def _tiff_entries(data: np.ndarray) -> tuple[str, dict[int, tuple[int, int, int, bool]]]:
    """(byte order, {tag: (value size, count, offset of the values, signed)}) of a TIFF's IFD0, classic or BigTIFF,
    for its integer tags; {} when `data` is no TIFF. A tag given twice is its first entry's, as libtiff reads it."""
    order = {b"II": "little", b"MM": "big"}.get(data[:2].tobytes())
    if order is None or data.size < 16:
        return "little", {}

    def num(i, k):
        return int.from_bytes(data[i:i + k].tobytes(), order)
    magic = num(2, 2)
    if magic not in (42, 43):
        return order, {}
    big = magic == 43
    off, cnt, step, word = (num(8, 8), 8, 20, 8) if big else (num(4, 4), 2, 12, 4)
    if off + cnt > data.size:
        return order, {}
    first = off + cnt
    out = {}
    for e in range(first, min(first + min(num(off, cnt), 1000) * step, int(data.size) - step + 1), step):
        kind = num(e + 2, 2)
        size, count = _TIFF_SIZES.get(kind, 0), num(e + 4, word)
        where = e + 4 + word if size * count <= word else num(e + 4 + word, word)
        if size and where + size * count <= data.size and num(e, 2) not in out:
            out[num(e, 2)] = (size, count, where, kind in _TIFF_SIGNED)
    return order, out


def tiff_values(data: np.ndarray, tag: int) -> tuple[int, ...]:
    """The values (the first 64) of an integer tag in a TIFF's IFD0: () when `data` is no TIFF or lacks the tag."""
    order, entries = _tiff_entries(data)
    if tag not in entries:
        return ()
    size, count, where, signed = entries[tag]
    return tuple(int.from_bytes(data[where + i * size:where + (i + 1) * size].tobytes(), order, signed=signed)
                 for i in range(min(count, 64)))


def tiff_alpha_unmarked(data: np.ndarray) -> np.ndarray:
    """A copy of a TIFF with its IFD0's ExtraSamples (338) marks set to 0, unspecified. libtiff's RGBA interface
    (OpenCV reads 8-bit TIFFs through it) multiplies the colour by an unassociated alpha (2, what PIL, GIMP and
    Photoshop write): a half-transparent photo decoded half as bright. Unspecified extra samples are dropped."""
    order, entries = _tiff_entries(data)
    out = data.copy()
    if 338 in entries:
        size, count, where, _ = entries[338]
        out[where:where + size * min(count, 64)] = 0
    return out


def _jpeg_pixels(data: np.ndarray) -> int | None:
    """Height x width of a JPEG's frame header (SOF0-15 but DHT, JPG, DAC), walking the header segments. Bytes between
    segments are skipped as libjpeg skips them ("extraneous bytes before marker"): one stray byte ended the walk, and
    a 400-megapixel frame went past the size check."""
    raw = data.tobytes()
    n, pos = len(raw), 2
    for _ in range(100_000):
        pos = raw.find(b"\xff", pos)
        if pos < 0 or pos + 8 >= n:
            return None
        kind = raw[pos + 1]
        if kind == 0xFF or kind == 0 or kind in _STANDALONE:  # a fill byte, a stuffed zero, a marker alone
            pos += 1 if kind == 0xFF else 2
            continue
        if kind == _SOS:
            return None
        if 0xC0 <= kind <= 0xCF and kind not in (0xC4, 0xC8, 0xCC):
            return (raw[pos + 5] << 8 | raw[pos + 6]) * (raw[pos + 7] << 8 | raw[pos + 8])
        pos += 2 + (raw[pos + 2] << 8 | raw[pos + 3])
    return None


# ---- JPEG completeness (no decoding) ----------------------------------------------------------------
_SOI, _EOI, _SOS = 0xD8, 0xD9, 0xDA
_STANDALONE = set(range(0xD0, 0xD8)) | {0x01, _SOI}  # RSTn, TEM, SOI: markers without a length


def _is_jpeg(data: np.ndarray) -> bool:
    return data.size >= 3 and data[0] == 0xFF and data[1] == _SOI and data[2] == 0xFF


def jpeg_truncated(data: np.ndarray) -> bool:
    """True when the JPEG in `data` (uint8 array) has image data (a scan) but ends before its end-of-image marker.
    OpenCV 5 refuses such a file; OpenCV 4 (boards: Pi OS's picamera2 needs opencv-python-headless < 4.11) decodes
    it with the missing rows grey: refused here on every OpenCV. Header segments are skipped by their lengths;
    inside the entropy-coded data a marker is 0xFF followed by a byte that is not 0x00 (stuffing), 0xFF (fill) or
    RSTn, so the scans of a progressive file are walked marker to marker. Bytes after the end marker (a Motion
    Photo's video, a camera's trailer) are not the image. A file cut before its first scan is the decoder's to
    refuse as corrupt."""
    if not _is_jpeg(data):
        return False
    n, pos, scanned = int(data.size), 2, False
    ff = np.flatnonzero(data[:-1] == 0xFF)  # candidate marker positions, for the entropy-coded data
    nxt = data[ff + 1]
    markers = ff[(nxt != 0x00) & (nxt != 0xFF) & ((nxt < 0xD0) | (nxt > 0xD7))]
    while True:
        if pos + 1 >= n:
            return scanned
        if data[pos] != 0xFF:
            return False  # not a marker where one must be: corrupt, not truncated (the decoder says so)
        kind = int(data[pos + 1])
        if kind == 0xFF:  # fill bytes before a marker
            pos += 1
            continue
        if kind == _EOI:
            return False
        if kind in _STANDALONE:
            pos += 2
            continue
        if pos + 3 >= n:
            return scanned
        end = pos + 2 + (int(data[pos + 2]) << 8 | int(data[pos + 3]))
        if end > n:
            return scanned
        if kind != _SOS:
            pos = end
            continue
        scanned = True
        later = markers[np.searchsorted(markers, end):]  # the scan's data runs to the next marker
        if later.size == 0:
            return True
        pos = int(later[0])
