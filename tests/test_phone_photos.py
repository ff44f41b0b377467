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


def _tagged_video(path, matrix, movie=(1, 0, 0, 1), scale: int = 1) -> np.ndarray:
    """An MP4 (OpenCV's writer) of one asymmetric frame, its video track's display matrix set to (a, b, c, d) times
    `scale`, and the movie's (mvhd) to `movie`."""
    import cv2

    frame = np.zeros((48, 64, 3), np.uint8)
    frame[:16, :16] = (0, 0, 255)  # a red corner and a green strip on the right (BGR)
    frame[:, -8:] = (0, 255, 0)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    for _ in range(3):
        w.write(frame)
    w.release()
    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd") + 4
    at += 52 if data[at] == 1 else 40
    a, b, c, d = (x * scale for x in matrix)
    data[at:at + 36] = struct.pack(">9i", a << 16, b << 16, 0, c << 16, d << 16, 0, 0, 0, 1 << 30)
    at = data.find(b"mvhd") + 4
    at += 48 if data[at] == 1 else 36
    a, b, c, d = movie
    data[at:at + 36] = struct.pack(">9i", a << 16, b << 16, 0, c << 16, d << 16, 0, 0, 0, 1 << 30)
    path.write_bytes(bytes(data))
    return frame


def _shown(frame: np.ndarray, matrix) -> np.ndarray:
    """The frame as ISO BMFF's display matrix defines it: column p, row q go to (a p + c q, b p + d q)."""
    a, b, c, d = matrix
    q, p = np.mgrid[0:frame.shape[0], 0:frame.shape[1]]
    x, y = a * p + c * q, b * p + d * q
    out = np.zeros((y.max() - y.min() + 1, x.max() - x.min() + 1, 3), frame.dtype)
    out[y - y.min(), x - x.min()] = frame[q, p]
    return out


@pytest.mark.parametrize("matrix", [(-1, 0, 0, 1), (1, 0, 0, -1), (0, 1, 1, 0), (0, -1, -1, 0),  # mirrors
                                    (0, 1, -1, 0), (-1, 0, 0, -1)])  # turns (OpenCV's own rotation)
def test_a_video_is_read_as_its_display_matrix_shows_it(tmp_path, matrix):
    """A video tagged with a horizontal mirror was read turned 180 degrees (OpenCV applies FFmpeg's rotation angle
    of the matrix); a turned video stays as OpenCV reads it."""
    from tledge.runtime.sources import open_source

    frame = _tagged_video(tmp_path / "v.mp4", matrix)
    got = [f.image for f in open_source(tmp_path / "v.mp4", on_event=None).frames()]
    want = _shown(frame, matrix)
    assert len(got) == 3 and got[0].shape == want.shape
    assert np.abs(got[0].astype(int) - want).max() < 40  # (mp4v is lossy; a wrong turn is 255 off)
    mirrors = matrix[0] * matrix[3] - matrix[1] * matrix[2] < 0
    assert (isobmff.video_mirror(tmp_path / "v.mp4") == matrix) if mirrors else \
        isobmff.video_mirror(tmp_path / "v.mp4") is None
    assert isobmff.video_mirror(tmp_path / "missing.mp4") is None
    assert isobmff.video_mirror(__file__) is None  # not ISO BMFF


@pytest.mark.parametrize("track, movie, scale, shown", [
    ((1, 0, 0, 1), (-1, 0, 0, 1), 1, (-1, 0, 0, 1)),  # the mirror in the movie's matrix (read turned 180 degrees)
    ((-1, 0, 0, 1), (1, 0, 0, 1), 2, (-1, 0, 0, 1)),  # a mirror at twice the size (read turned 180 degrees)
    ((-1, 0, 0, 1), (1, 0, 0, -1), 1, (-1, 0, 0, -1)),  # two mirrors make a half turn (read mirrored)
])
def test_a_video_is_read_as_its_track_and_movie_matrices_show_it(tmp_path, track, movie, scale, shown):
    """FFmpeg shows a video by its track matrix followed by the movie's, at any scale: tledge read only the track's,
    and only with entries of exactly 1, so these three were read turned or mirrored wrongly, exit 0."""
    from tledge.runtime.sources import open_source

    frame = _tagged_video(tmp_path / "v.mp4", track, movie, scale)
    got = next(open_source(tmp_path / "v.mp4", on_event=None).frames()).image
    want = _shown(frame, shown)
    assert got.shape == want.shape and np.abs(got.astype(int) - want).max() < 40


def _server(folder, ranges: bool):
    """http://127.0.0.1:PORT/ serving `folder`, honouring Range headers when `ranges` (http.server does not)."""
    import http.server
    import threading

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a):
            super().__init__(*a, directory=str(folder))

        def log_message(self, *a):
            pass

        def do_GET(self):
            asked = self.headers.get("Range", "")
            path = folder / self.path.lstrip("/")
            if not (ranges and asked.startswith("bytes=") and path.is_file()):
                return super().do_GET()
            lo, hi = asked[6:].split("-")
            data = path.read_bytes()[int(lo):int(hi) + 1 if hi else None]  # (FFmpeg asks for `bytes=0-`)
            self.send_response(206)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("ranges", [True, False])
def test_a_mirrored_video_over_http_is_read_mirrored(tmp_path, ranges):
    """An http(s) MP4 was left to OpenCV, which turned a mirrored one 180 degrees, exit 0: its moov is now read by
    byte ranges (or from the start, from a server that sends none); an address whose moov cannot be read is said."""
    from tledge.runtime.sources import open_source

    frame = _tagged_video(tmp_path / "v.mp4", (-1, 0, 0, 1))
    server = _server(tmp_path, ranges)
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        events = []
        got = next(open_source(f"{base}/v.mp4", on_event=events.append).frames()).image
        want = _shown(frame, (-1, 0, 0, 1))
        assert np.abs(got.astype(int) - want).max() < 40 and not events, events
        from tledge.runtime.url_image import RangeReader

        reader = RangeReader(f"{base}/missing.mp4")
        assert isobmff.video_mirror(reader) is None and "404" in str(reader.failed)
    finally:
        server.shutdown()
