"""HEIC / HEIF and AVIF photos (phones' formats), recognised by their ISO BMFF `ftyp` box: what tledge says about them.

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
