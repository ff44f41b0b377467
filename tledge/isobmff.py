"""HEIC / HEIF and AVIF photos (phones' formats), recognised by their ISO BMFF `ftyp` box: what tledge says about them;
and the display matrix of MP4 / MOV videos that mirror, which OpenCV applies as a rotation.

OpenCV decodes no HEIC, and decodes AVIF without its rotation and mirror boxes (`irot`, `imir`: Pillow and avifenc
write a photo's EXIF orientation there), so a portrait AVIF reached the model sideways, exit 0, where the same
JPEG was upright. Such files are refused with what to do, and folders say how many they skip (they were skipped
without a word: "15 input(s): 15 ok" for a folder of 21 photos).
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Sequence

SUFFIXES = {".heic", ".heif", ".hif", ".avif", ".avifs"}
HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
AVIF_BRANDS = {b"avif", b"avis"}
CONVERT = "convert it to JPEG or PNG (an iPhone: Settings > Camera > Formats > Most Compatible)"


def _boxes(data: bytes, start: int = 0, end: int | None = None):
    """(type, payload start, payload end) of the boxes in data[start:end]."""
    end = len(data) if end is None else end
    at = start
    while at + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, at)
        head = 8
        if size == 1 and at + 16 <= end:
            size, head = struct.unpack_from(">Q", data, at + 8)[0], 16
        elif size == 0:
            size = end - at
        if size < head:
            return
        yield kind, at + head, min(at + size, end)
        at += size


def brands(data: bytes) -> set[bytes]:
    """The major and compatible brands of an ISO BMFF file's leading `ftyp` box (empty for anything else)."""
    if len(data) < 16 or data[4:8] != b"ftyp":
        return set()
    kind, lo, hi = next(_boxes(data, 0, min(len(data), 4096)), (None, 0, 0))
    if kind != b"ftyp":
        return set()
    return {data[lo:lo + 4]} | {data[i:i + 4] for i in range(lo + 8, hi - 3, 4)}


def _transformed(data: bytes) -> bool:
    """Whether the top-level `meta` box holds a rotation or mirror property (irot / imir) in iprp/ipco."""
    for kind, lo, hi in _boxes(data):
        if kind == b"meta":  # a full box: 4 bytes of version and flags first
            for k2, lo2, hi2 in _boxes(data, lo + 4, hi):
                if k2 == b"iprp":
                    for k3, lo3, hi3 in _boxes(data, lo2, hi2):
                        if k3 == b"ipco":
                            return any(k in (b"irot", b"imir") for k, _, _ in _boxes(data, lo3, hi3))
    return False


def refusal(data: bytes) -> str | None:
    """Why tledge does not decode these bytes (a HEIC, a turned or mirrored AVIF), or None."""
    found = brands(data)
    if found & AVIF_BRANDS:
        if _transformed(data):
            return ("an AVIF photo with a rotation or mirror (irot / imir), which OpenCV does not apply (it would "
                    f"reach the model turned): {CONVERT}")
        return None
    if found & HEIF_BRANDS:
        return f"a HEIC / HEIF photo, which OpenCV does not decode: {CONVERT}"
    return None


def skipped(files: Sequence[Path]) -> str | None:
    """What to say of the HEIC / HEIF / AVIF files among `files`, which folders skip (by suffix), or None."""
    mine = [f for f in files if f.suffix.lower() in SUFFIXES]
    if not mine:
        return None
    return (f"{len(mine)} HEIC / HEIF / AVIF photo(s) skipped ({mine[0].name}{', ...' if len(mine) > 1 else ''}): "
            "tledge reads JPEG, PNG, WebP, BMP, GIF and TIFF; convert them to JPEG or PNG")


def warn_skipped(files: Sequence[Path], where) -> None:
    """skipped() as a TledgeWarning naming the folder (export's --val / --calib, parity's --images)."""
    import warnings

    from tledge.errors import TledgeWarning

    note = skipped(files)
    if note:
        warnings.warn(f"{where}: {note}", TledgeWarning, stacklevel=3)


# ---- videos: MP4 / MOV display matrices that mirror -----------------------------------------------------------

MOOV_LIMIT = 64 << 20  # bytes of a `moov` box read (an hour of video has a few MB of sample tables)


def _top_box(f, want: bytes) -> bytes | None:
    """The payload of the first top-level box `want` of an open ISO BMFF file, seeking past the others (a `moov`
    after hours of `mdat` is common), or None (not such a file, none, or too big)."""
    at = 0
    for _ in range(4096):
        f.seek(at)
        head = f.read(16)
        if len(head) < 8 or not head[4:8].isalnum():
            return None
        size, kind = struct.unpack_from(">I4s", head)
        start = 8
        if size == 1 and len(head) == 16:
            size, start = struct.unpack_from(">Q", head, 8)[0], 16
        if kind == want:  # (size 0: the box runs to the end of the file)
            f.seek(at + start)
            data = f.read(size - start if start <= size <= MOOV_LIMIT else MOOV_LIMIT + 1)
            return data if len(data) <= MOOV_LIMIT else None
        if size < start:
            return None
        at += size
    return None


def _matrix(data: bytes, at: int, end: int) -> tuple[float, float, float, float] | None:
    """(a, b, c, d) of the 3x3 matrix of a tkhd / mvhd box at data[at:] (16.16 fixed point), or None."""
    if at + 36 > end:
        return None
    v = struct.unpack_from(">9i", data, at)
    return v[0] / 65536, v[1] / 65536, v[3] / 65536, v[4] / 65536


def _signs(m: tuple[float, float, float, float]) -> tuple[int, int, int, int] | None:
    """A matrix as the turn or mirror it makes (each entry -1, 0 or 1, one non-zero per row and column), whatever
    its scale; None for a shear or any other angle (left to OpenCV)."""
    big = max(abs(x) for x in m)
    if big == 0:
        return None
    s = tuple(0 if abs(x) < 1e-3 * big else (1 if x > 0 else -1) for x in m)
    a, b, c, d = s
    return s if (a and d and not b and not c) or (b and c and not a and not d) else None  # type: ignore[return-value]


def _times(t, m) -> tuple[float, float, float, float]:
    """The track matrix followed by the movie's, as FFmpeg combines them (row vectors: [x y] T M)."""
    return (t[0] * m[0] + t[1] * m[2], t[0] * m[1] + t[1] * m[3], t[2] * m[0] + t[3] * m[2], t[2] * m[1] + t[3] * m[3])


def video_mirror(path_or_file) -> tuple[int, int, int, int] | None:
    """(a, b, c, d), each -1, 0 or 1, of the display matrix of an MP4 / MOV file's video track (its tkhd matrix
    followed by the movie's mvhd matrix, as FFmpeg combines them, at any scale) when it mirrors (determinant below
    0), else None. OpenCV (FFmpeg's rotation angle) applies such a matrix as a rotation: a video tagged with a
    horizontal mirror was read turned 180 degrees. `path_or_file`: a path, or a binary file object (seek / read)."""
    try:
        if hasattr(path_or_file, "read"):
            moov = _top_box(path_or_file, b"moov")
        else:
            with open(path_or_file, "rb") as f:
                moov = _top_box(f, b"moov")
    except OSError:
        return None
    moov = moov or b""
    movie = (1.0, 0.0, 0.0, 1.0)
    for kind, lo, hi in _boxes(moov):  # mvhd: a full box; version 1 has 64-bit times, the matrix 12 bytes later
        if kind == b"mvhd" and hi > lo:
            movie = _matrix(moov, lo + (48 if moov[lo] == 1 else 36), hi) or movie
    for kind, lo, hi in _boxes(moov):
        if kind != b"trak":
            continue
        matrix, video = None, False
        for k2, lo2, hi2 in _boxes(moov, lo, hi):
            if k2 == b"tkhd" and hi2 > lo2:  # full box; version 1 has 64-bit times: the matrix is 12 bytes later
                matrix = _matrix(moov, lo2 + (52 if moov[lo2] == 1 else 40), hi2)
            elif k2 == b"mdia":  # hdlr: version and flags, pre_defined, then the handler type
                video = any(k3 == b"hdlr" and moov[lo3 + 8:lo3 + 12] == b"vide" for k3, lo3, _ in _boxes(moov, lo2, hi2))
        if video:
            shown = _signs(_times(matrix, movie)) if matrix is not None else None
            if shown is None or shown[0] * shown[3] - shown[1] * shown[2] >= 0:
                return None
            return shown
    return None


def displayed(img, matrix: tuple[int, int, int, int]):
    """A decoded frame (rows x columns [x channels]) as the display matrix (a, b, c, d) shows it: column p and row q
    go to (a p + c q, b p + d q), moved into the picture."""
    a, b, c, d = matrix
    rows, cols = (d, a) if a else (b, c)
    if not a:  # a quarter turn: rows and columns swap
        img = img.swapaxes(0, 1)
    return img[::-1 if rows < 0 else 1, ::-1 if cols < 0 else 1].copy()
