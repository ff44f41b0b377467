"""Reading images as people have them: EXIF orientation, gray, RGBA, 16-bit, CMYK, GIF.

Everything returns HxWx3 uint8 RGB. No TensorFlow.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from tledge import imagebytes
from tledge.errors import DataError, ImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
                  ".pbm", ".pnm", ".jp2"}
# folders no one means as data: macOS zips' resource forks, Synology's thumbnails (hidden ones start with "."),
# Windows' hidden folders at a drive's root (a USB stick's): System Volume Information, $RECYCLE.BIN (RECYCLER before
# Vista); macOS's .Trashes starts with "."
SYSTEM_FOLDERS = {"__MACOSX", "@eaDir", "System Volume Information", "$RECYCLE.BIN", "RECYCLER"}
# What `tledge train` leaves in OUT for the export: split/train/<class>/ and split/val/<class>/, symbolic links to the
# images it trained and validated on (tledge.train.report writes it; tledge.export.imagesets reads it).
TRAINING_SPLIT = "split"


def skipped_name(name: str) -> bool:
    """A hidden file or folder (.DS_Store, ._x.jpg, .thumbnails/, .@__thumb/) or a system folder: never data."""
    return name.startswith(".") or name in SYSTEM_FOLDERS


def load(path: str | Path) -> np.ndarray:
    """Decode an image file to HxWx3 uint8 RGB (EXIF orientation applied), or raise ImageError."""
    p = Path(path)
    try:
        data = np.fromfile(p, dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"cannot read image {p}: {exc.strerror or exc}") from None
    except ValueError as exc:  # a NUL in the path (a server's upload name)
        raise ImageError(f"cannot read image {p!r}: {exc}") from None
    if data.size == 0:
        raise ImageError(f"cannot decode image {p}: the file is empty")
    return decode(data, p)


MAX_PIXELS = 1 << 28  # 268 megapixels (805 MB as RGB): a 200-megapixel phone photo decodes, a decompression bomb not


def decode(data: np.ndarray, name) -> np.ndarray:
    """Encoded image bytes (a uint8 array) -> HxWx3 uint8 RGB, as `load` does for a file, or ImageError."""
    import cv2

    if imagebytes.jpeg_truncated(data):  # OpenCV 4 decodes it with grey rows, OpenCV 5 refuses it
        raise ImageError(f"cannot decode image {name}: a truncated JPEG (it ends before its end marker)")
    if data[4:8].tobytes() == b"ftyp":  # ISO BMFF (imported only then: tledge run's cold start)
        from tledge import isobmff

        why = isobmff.refusal(data.tobytes())
        if why:  # a HEIC (no decoder) or a turned AVIF (OpenCV ignores its irot / imir: sideways, exit 0)
            raise ImageError(f"cannot decode image {name}: {why}")
    stated = imagebytes.header_pixels(data)
    if stated is not None and stated > MAX_PIXELS:  # an 873 KB PNG of 30000 x 30000 took 5.3 GB to decode
        raise ImageError(f"cannot decode image {name}: its header says {stated / 1e6:.0f} megapixels, over tledge's "
                         f"{MAX_PIXELS / 1e6:.0f} (a decompression bomb, or a scan too large to decode in memory)")
    alpha = imagebytes.tiff_values(data, 338)  # a TIFF's ExtraSamples: 1 premultiplied alpha, 2 unassociated alpha
    if 2 in alpha:  # libtiff's RGBA reader multiplied the colour by an unassociated alpha: darkened
        data = imagebytes.tiff_alpha_unmarked(data)
    # IMREAD_ANYDEPTH keeps 16-bit data for a correct scale; IMREAD_COLOR applies EXIF orientation.
    try:
        img = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
        img = _unpremultiplied(data, img) if 1 in alpha and img is not None else img
    except cv2.error as exc:  # a header over OpenCV's 2^30-pixel limit (a gigapixel scan, a forged size) raises
        why = "larger than OpenCV decodes (2^30 pixels)" if "MAX_IMAGE_PIXELS" in str(exc) else \
            "too large to decode in the memory there is" if "llocat" in str(exc) else "corrupt"
        raise ImageError(f"cannot decode image {name}: {why}") from None
    if img is None and bytes(data[:4]) == b"GIF8":  # OpenCV < 4.11 decodes no GIF; its video reader does
        img = _gif_first_frame(data)
    if img is None and bytes(data[:4]) in (b"II*\x00", b"MM\x00*"):  # a 1-channel float TIFF: IMREAD_COLOR's
        img = cv2.imdecode(data, cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)  # channel assertion (OpenCV 4 and 5)
    if img is None:
        raise ImageError(f"cannot decode image {name}: not an image or corrupt")
    if img.dtype.kind == "i":  # a signed-integer TIFF (cv2.imwrite's int8/16/32) was clipped to 0..255: white or dark
        raise ImageError(f"cannot decode image {name}: its pixels are signed {img.dtype.itemsize * 8}-bit integers "
                         f"({img.dtype}); tledge reads 8/16-bit unsigned and float images")
    if img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3:  # in place: no second full-size copy
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=img)
    return to_uint8_rgb(img, bgr=True)


def _unpremultiplied(data: np.ndarray, bgr: np.ndarray) -> np.ndarray:
    """The BGR of a TIFF whose colour is premultiplied by its alpha (ExtraSamples 1), divided by that alpha as PIL,
    GIMP and Photoshop show it (it was left darkened); `bgr` as is when the alpha cannot be lined up with it."""
    import cv2

    full = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)  # keeps alpha; oriented by OpenCV 5's TIFF reader, not by all
    if full is None or full.ndim != 3 or full.shape[2] != 4 or full.dtype != bgr.dtype or bgr.dtype.kind != "u":
        return bgr
    o = (imagebytes.tiff_values(data, 274) or (1,))[0]  # TIFF orientation, as IMREAD_COLOR applies it
    turned = np.rot90(full, {3: 2, 4: 2, 5: -1, 6: -1, 7: 1, 8: 1}.get(o, 0))
    for x in (full, turned[:, ::-1] if o in (2, 4, 5, 7) else turned):
        if x.shape[:2] == bgr.shape[:2] and np.array_equal(x[:, :, :3], bgr):  # the same pixels, the same way up
            top = float(np.iinfo(bgr.dtype).max)
            a = np.maximum(x[:, :, 3:].astype(np.float32), 1)
            return np.ascontiguousarray(np.clip(np.round(x[:, :, :3] * (top / a)), 0, top), bgr.dtype)
    return bgr


def _gif_first_frame(data: np.ndarray):
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tledge-gif-") as d:
        f = Path(d) / "image.gif"
        data.tofile(f)
        return _first_gif_frame(f)


def as_rgb(image) -> np.ndarray:
    """Any one image -> HxWx3 uint8 RGB: a path (str or os.PathLike), encoded bytes (a JPEG/PNG... file's
    content, bytes or a binary file object), a PIL image, or an array (`to_uint8_rgb`)."""
    if isinstance(image, (str, os.PathLike)):
        return load(image)
    if _pil(image):  # EXIF orientation applied, as `load` does for the same file (Image.open leaves it)
        from PIL import ImageOps

        try:  # PIL decodes lazily: a truncated upload raised OSError here, a closed image ValueError
            turned = ImageOps.exif_transpose(image)  # (a copy, without the format that picks a CMYK's rounding)
            return to_uint8_rgb(cmyk_as_decoded(turned) if _cmyk_jpeg(image) else turned)
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageError(f"cannot decode PIL image: {exc}") from None
    if callable(getattr(image, "read", None)):  # BytesIO, an open file (whose .mode is "rb")
        image = image.read()
    if isinstance(image, (bytes, bytearray, memoryview)):
        if isinstance(image, memoryview) and not image.c_contiguous:  # (a slice with a step: BufferError)
            image = image.tobytes()
        data = np.frombuffer(image, np.uint8)
        if data.size == 0:
            raise ImageError("cannot decode image bytes: empty")
        return decode(data, f"({data.size} bytes)")
    if image is None:
        raise ImageError("expected an image (a path, encoded bytes, a PIL image or an array), got None")
    return to_uint8_rgb(image)


def _pil(x) -> bool:
    return isinstance(getattr(x, "mode", None), str) and callable(getattr(x, "getexif", None))


def one_image(x) -> bool:
    """Whether `x` is one image for `as_rgb` rather than a sequence of them (an HxW or HxWx{1,3,4} array is one;
    NxHxWxC or a list is several). ImageError for what is neither: None, a number, an array of another shape
    (CHW, HxWx2, 1-D), which iterating would have read as rows of grey images."""
    if isinstance(x, (str, os.PathLike, bytes, bytearray, memoryview)) or _pil(x) or callable(getattr(x, "read", None)):
        return True
    if isinstance(x, np.ndarray):
        if x.ndim == 2 or (x.ndim == 3 and x.shape[2] in (1, 3, 4)):
            return True
        if x.ndim == 4:
            return False
        raise ImageError(f"an array of shape {x.shape} is neither an image (HxW, HxWx1, HxWx3, HxWx4: channels "
                         "last) nor a batch of them (NxHxWxC)")
    if isinstance(x, (list, tuple)) and x and isinstance(x[0], (list, tuple)):
        # nested lists of numbers (a JSON body's image): an array by its shape (each row was read as a grey image)
        try:
            a = np.asarray(x)
        except ValueError as exc:
            raise ImageError(f"nested lists of different lengths are no image: {exc}") from None
        if a.dtype.kind in "uifb":
            return one_image(a)
    if x is None or not hasattr(x, "__iter__") or isinstance(x, Mapping):  # a dict's keys were read as file paths
        raise ImageError(f"expected an image (a path, encoded bytes, a binary file, a PIL image or an array) or a "
                         f"sequence of them, got {type(x).__name__}")
    return False


def _first_gif_frame(p: Path):
    import cv2

    from tledge.paths import utf8_alias

    with utf8_alias(p) as name:  # OpenCV crashed (SIGSEGV) on a name that is not UTF-8
        cap = cv2.VideoCapture(name)
    try:
        ok, frame = cap.read()
    finally:
        cap.release()
    return frame if ok else None


# PIL modes whose arrays to_uint8_rgb reads right (F: 0..1 / 0..255; the I;16 family: 16-bit, either byte order; I:
# 32-bit integers, read as 16-bit when over 255: a 16-bit PGM opened by PIL was clipped to white)
PIL_AS_IS = ("L", "RGB", "RGBA", "I;16", "I;16B", "I;16L", "I;16N", "F", "I")


def _cmyk_jpeg(img) -> bool:
    """A PIL image of a CMYK JPEG (a CMYK TIFF's path is decoded by libtiff, which rounds as PIL's convert does)."""
    return getattr(img, "mode", None) == "CMYK" and getattr(img, "format", None) in ("JPEG", "MPO")


def cmyk_as_decoded(img) -> np.ndarray:
    """A PIL CMYK JPEG as RGB the way its path is decoded (OpenCV: k - ((255 - c) * k >> 8) on the stored, inverted
    values). PIL's convert("RGB") rounds otherwise: 1-2 on 99.9 % of values, 7 of 120 int8 top-1 answers changed."""
    raw = 255 - np.asarray(img, np.int32)
    k = raw[..., 3:4]
    return (k - (((255 - raw[..., :3]) * k) >> 8)).astype(np.uint8)


def to_uint8_rgb(img: np.ndarray, *, bgr: bool = False) -> np.ndarray:
    """Any HxW, HxWx1, HxWx3 or HxWx4 (RGBA) array, or a PIL image of any mode -> HxWx3 uint8 RGB. uint16 is
    scaled from 0..65535; float is 0..1, or 0..255 when its maximum is over 1.5 (Keras's `img_to_array`, a float
    TIFF); other integers are clipped to 0..255."""
    import cv2

    mode = getattr(img, "mode", None)  # a PIL image: palette, CMYK, YCbCr, LAB, HSV... arrays are not pixels
    if _cmyk_jpeg(img):
        img = cmyk_as_decoded(img)
    elif isinstance(mode, str) and callable(getattr(img, "convert", None)) and mode not in PIL_AS_IS:
        if mode == "La":  # premultiplied: Pillow converts it to LA only
            img = img.convert("LA")
        img = img.convert("RGBA" if mode in ("LA", "La", "PA", "RGBa") or "transparency" in getattr(img, "info", {})
                          else "RGB")
    a = np.asarray(img)
    if mode == "I" and a.size and a.max() > 255:  # PIL's 32-bit integers (a 16-bit PGM): 0..65535, as read by path
        a = np.clip(a, 0, 65535).astype(np.uint16)
    if a.ndim not in (2, 3) or a.size == 0 or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise ImageError(f"expected an HxW or HxWx{{1,3,4}} image, got shape {a.shape}")
    if a.dtype.kind not in "uifb":  # objects, strings, complex numbers: a TypeError from numpy before
        raise ImageError(f"an image array holds numbers, got {a.dtype} values")
    if a.dtype.kind == "b":  # a mask, as PIL's mode "1" converts: 0 / 255
        a = a.astype(np.uint8) * 255
    if a.dtype.kind == "u" and a.dtype.itemsize == 2:  # PIL's I;16B is big-endian
        a = a.astype(np.uint16)
    if a.dtype == np.uint16:
        a = (a.astype(np.uint32) * 255 + 32767) // 65535
        a = a.astype(np.uint8)
    elif a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise ImageError("the image array holds NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        top = 255.0 if hi > 1.5 else 1.0
        # normalised values (-1..1, mean/std: negative, and small for pixels) or 16-bit data were clipped
        # 0..1: a resize's overshoot (-0.07) is clipped, a bright photo normalised to -1..1 (-0.25..1) is not
        if lo < -0.25 * top or hi > 1.25 * top or (top > 1 and lo < 0 and hi < 16) or (top == 1 and lo < -0.1):
            raise ImageError(f"a float image holds {lo:g}..{hi:g}: expected pixels in 0..1 or 0..255 (a resize's "
                             "overshoot is clipped), not normalised or 16-bit values")
        a = np.clip(np.round(a * (255.0 / top)), 0, 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 2 or a.shape[2] == 1:
        return cv2.cvtColor(a.reshape(a.shape[:2]), cv2.COLOR_GRAY2RGB)
    if a.shape[2] == 4:
        return cv2.cvtColor(a, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    return np.ascontiguousarray(a[:, :, ::-1]) if bgr else a


def prepare_all(prepare: Callable[[Path], np.ndarray], files: Sequence[Path], threads: int | None = None):
    """[prepare(f) for f in files] on a few threads (OpenCV's decode and resize release the GIL: about 2x on
    2 cores for a folder of photos), in order; a file `prepare` rejects with a TledgeError gives that error in
    its place instead of stopping the rest."""
    from tledge.errors import TledgeError

    def one(f):
        try:
            return prepare(f)
        except TledgeError as exc:
            return exc
    workers = max(1, min(threads or os.cpu_count() or 1, 8, len(files)))
    if workers == 1:
        return [one(f) for f in files]
    from concurrent.futures import ThreadPoolExecutor  # not on `tledge run`'s cold-start path

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, files))


def data_files(root: str | Path, dangling: list[Path] | None = None) -> list[Path]:
    """Every file under `root`, sorted, without hidden and system files and folders. Symlinked folders are followed
    (a class folder of links to another disk is common; Path.rglob skips them before Python 3.13), each real
    folder once, so a link loop ends. `dangling` gets the symbolic links whose target is missing (an unmounted
    disk): they are no files, and the caller says so."""
    p = Path(root)
    seen, found = set(), []
    for top, dirs, files in os.walk(p, followlinks=True):
        st = os.stat(top)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = [d for d in dirs if not skipped_name(d)]
        for f in files:  # one stat a file (the dangling links were a second pass of stats over every file)
            path = os.path.join(top, f)
            if skipped_name(f):
                continue
            if os.path.isfile(path):
                found.append(Path(path))
            elif dangling is not None and not os.path.exists(path):
                dangling.append(Path(path))
    if dangling is not None:
        dangling.sort()
    return sorted(found)


def check_links(root: Path) -> None:
    """A DataError when an entry of `root` is a symbolic link to nothing (an unmounted disk, a moved folder): as a
    class folder it was dropped without a word, and the model trained (or was checked) without that class."""
    broken = sorted(d.name for d in root.iterdir() if not skipped_name(d.name) and d.is_symlink() and not d.exists())
    if broken:
        target = os.readlink(root / broken[0])
        raise DataError(f"{root / broken[0]} is a symbolic link to {target}, which does not exist"
                        + (f" (and {len(broken) - 1} more such link(s) in {root})" if len(broken) > 1 else "")
                        + ": mount or restore it, or remove the link")


def iter_image_files(root: str | Path, recursive: bool = True, dangling: list[Path] | None = None) -> Iterator[Path]:
    """Image files under `root` in sorted order (by suffix; decoding errors surface later). `dangling` (recursive
    only): filled with the image names there that are symbolic links to nothing."""
    p = Path(root)
    lost: list[Path] = []
    files = data_files(p, lost) if recursive else \
        sorted(f for f in p.glob("*") if f.is_file() and not skipped_name(f.name))
    if dangling is not None:
        dangling += [f for f in lost if f.suffix.lower() in IMAGE_SUFFIXES]
    yield from (f for f in files if f.suffix.lower() in IMAGE_SUFFIXES)


def class_folders(root: str | Path, dangling: dict[str, list[Path]] | None = None) -> list[tuple[str, list[Path]]]:
    """[(class name, [image files])] for a folder of class folders, sorted by name. `dangling`: filled with
    {class name: its images that are symbolic links to nothing} (an unmounted disk, a moved data set)."""
    p = Path(root)
    if not p.is_dir():
        raise DataError(f"not a folder: {p}")
    check_links(p)
    out = []
    for d in sorted(d for d in p.iterdir() if d.is_dir() and not skipped_name(d.name)):
        lost: list[Path] = []
        out.append((d.name, list(iter_image_files(d, dangling=lost))))
        if lost and dangling is not None:
            dangling[d.name] = lost
    return out


def _refuse_lost_classes(root: Path, classes, dangling: dict[str, list[Path]]) -> None:
    """Images that are links to missing files: a class left with none of its images is an error (it was left out of
    calibration and parity without a word, exit 0); fewer images in a class, a warning."""
    if not dangling:
        return
    files = dict(classes)
    gone = [name for name in dangling if not files[name]]
    first = dangling[(gone or list(dangling))[0]][0]
    where = f"{first} is a link to {os.readlink(first)}, which does not exist"
    if gone:
        raise DataError(f"class folder(s) {', '.join(gone)} in {root}: every image is a symbolic link to a missing file "
                        f"({where}): mount or restore the images, or remove the class folder")
    import warnings

    from tledge.errors import TledgeWarning

    warnings.warn(f"ignoring {sum(map(len, dangling.values()))} image(s) in {root} that are symbolic links to missing "
                  f"files ({where})", TledgeWarning, stacklevel=3)


def has_images(root: str | Path) -> bool:
    """Whether `labelled_images(root)` would find any image: one in a class folder or directly in `root` (by suffix,
    nothing decoded). For checking a folder option before anything is loaded."""
    p = Path(root)
    return any(files for _, files in class_folders(p)) or next(iter_image_files(p, recursive=False), None) is not None


def labelled_images(root: str | Path, labels: tuple[str, ...] | None = None):
    """Files and integer labels from class folders. Returns (files, y or None, class names).

    With `labels` (the model's, in output order) each folder is mapped to its label by name (see
    `match_labels`), so a folder holding a subset of the classes, in any order, gives correct y.
    A folder without class sub-folders gives its images with y=None.
    """
    p = Path(root)
    if not p.is_dir():
        raise DataError(f"image folder not found: {p}")
    dangling: dict[str, list[Path]] = {}
    classes = class_folders(p, dangling)
    _refuse_lost_classes(p, classes, dangling)
    from tledge.isobmff import warn_skipped

    warn_skipped(data_files(p), p)  # HEIC / AVIF: skipped without a word
    if not classes or not any(files for _, files in classes):
        files = list(iter_image_files(p, recursive=False))
        if not files:
            raise DataError(f"no images found in {p}")
        return files, None, ()
    names = tuple(n for n, _ in classes)
    from tledge.labels import match_labels

    index = match_labels([n for n, fs in classes if fs], labels, where=p) if labels else \
        {n: i for i, n in enumerate(names)}
    files, ys = [], []
    for name, fs in classes:
        if fs:
            files += fs
            ys += [index[name]] * len(fs)
    return files, np.asarray(ys, np.int64), names
