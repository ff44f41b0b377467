"""Phones' photo formats (a helper hunt): a portrait AVIF (its EXIF orientation written as an `irot` box, which
OpenCV's decoder ignores) was classified sideways, exit 0, where the same JPEG was upright; HEIC / AVIF files in a
folder were skipped without a word ("15 input(s): 15 ok" for 21 photos), and a HEIC file was "not an image or
corrupt"."""
from __future__ import annotations

import struct
import warnings

import numpy as np
import pytest

from tledge import images, isobmff
from tledge.errors import ImageError, TledgeWarning


def box(kind: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def heif(major: bytes, *props: bytes) -> bytes:
    ftyp = box(b"ftyp", major + b"\0\0\0\0" + b"mif1" + major)
    meta = box(b"meta", b"\0\0\0\0" + box(b"hdlr", bytes(24)) + box(b"iprp", box(b"ipco", b"".join(props))))
    return ftyp + meta + box(b"mdat", bytes(16))


def test_brands_and_boxes_are_read():
    assert isobmff.brands(heif(b"heic")) >= {b"heic", b"mif1"}
    assert isobmff.refusal(heif(b"heic")).startswith("a HEIC / HEIF photo")
    assert "irot / imir" in isobmff.refusal(heif(b"avif", box(b"ispe", bytes(12)), box(b"irot", b"\1")))
    assert "irot / imir" in isobmff.refusal(heif(b"avif", box(b"imir", b"\0")))
    assert isobmff.refusal(heif(b"avif", box(b"ispe", bytes(12)))) is None  # decoded as it is
    for other in (b"\xff\xd8\xff\xe0" + bytes(40), b"\0\0\0\x18ftypisom" + bytes(20), b"", box(b"ftyp")):
        assert isobmff.refusal(other) is None
    with pytest.raises(ImageError, match="HEIC / HEIF photo, which OpenCV does not decode"):
        images.decode(np.frombuffer(heif(b"heic"), np.uint8), "IMG_0001.HEIC")


def _avif_pair(tmp_path):
    """The same striped photo as an upright AVIF and as a portrait one (pixels turned, EXIF orientation 6), as a
    phone or Pillow writes it; None where this Pillow writes no AVIF."""
    PIL = pytest.importorskip("PIL.Image")
    from PIL import features

    if not features.check("avif"):
        pytest.skip("this Pillow writes no AVIF")
    rows = np.zeros((64, 48, 3), np.uint8)
    rows[::8] = 255
    upright = PIL.fromarray(rows)
    exif = PIL.Exif()
    exif[274] = 6
    upright.save(tmp_path / "upright.avif", quality=95)
    upright.transpose(PIL.Transpose.ROTATE_90).save(tmp_path / "portrait.avif", quality=95, exif=exif.tobytes())
    return tmp_path / "upright.avif", tmp_path / "portrait.avif"


def test_a_turned_avif_is_refused_and_an_upright_one_read(tmp_path):
    upright, portrait = _avif_pair(tmp_path)
    assert images.load(upright).shape == (64, 48, 3)
    with pytest.raises(ImageError, match="AVIF photo with a rotation or mirror"):
        images.load(portrait)


def test_folders_say_the_photos_they_skip(tmp_path):
    import cv2

    (tmp_path / "a").mkdir()
    cv2.imwrite(str(tmp_path / "a" / "x.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "a" / "IMG_0001.HEIC").write_bytes(heif(b"heic"))
    with pytest.warns(TledgeWarning, match=r"1 HEIC / HEIF / AVIF photo\(s\) skipped \(IMG_0001.HEIC\)"):
        files, y, names = images.labelled_images(tmp_path)
    assert [f.name for f in files] == ["x.png"] and names == ("a",)
    (tmp_path / "a" / "IMG_0001.HEIC").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images.labelled_images(tmp_path)


def test_run_says_the_photos_a_folder_skips(tmp_path, capsys):
    import shutil

    from tiny import IMAGES, TINY

    from tledge.cli import main

    shutil.copy(IMAGES[0], tmp_path / IMAGES[0].name)
    (tmp_path / "IMG_0001.HEIC").write_bytes(heif(b"heic"))
    assert main(["run", str(TINY / "model_fp32.onnx"), "--source", str(tmp_path)]) == 0
    assert "1 HEIC / HEIF / AVIF photo(s) skipped (IMG_0001.HEIC)" in capsys.readouterr().err
    assert main(["run", str(TINY / "model_fp32.onnx"), "--source", str(tmp_path / "*.HEIC")]) == 2
    assert "convert them to JPEG or PNG" in capsys.readouterr().err


def test_a_16_bit_pgm_opened_by_pil_reads_as_by_path(tmp_path):
    """PIL opens a 16-bit PGM as mode I (32-bit integers): converting it to RGB clipped it to white (mean 254.8
    where the path gave 68.5)."""
    import cv2

    PIL = pytest.importorskip("PIL.Image")
    grey = (np.arange(48 * 64).reshape(48, 64) * 21).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "g.pgm"), grey)
    with PIL.open(tmp_path / "g.pgm") as im:
        assert im.mode == "I"
        np.testing.assert_array_equal(images.as_rgb(im), images.load(tmp_path / "g.pgm"))
