"""Reading images as people have them: EXIF orientation, gray, RGBA, 16-bit, CMYK, GIF.

Everything returns HxWx3 uint8 RGB. No TensorFlow.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from tledge.errors import DataError, ImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".jp2"}


def load(path: str | Path) -> np.ndarray:
    """Decode an image file to HxWx3 uint8 RGB (EXIF orientation applied), or raise ImageError."""
    import cv2

    p = Path(path)
    try:
        data = np.fromfile(p, dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"cannot read image {p}: {exc.strerror or exc}") from None
    if data.size == 0:
        raise ImageError(f"cannot decode image {p}: the file is empty")
    # IMREAD_ANYDEPTH keeps 16-bit data for a correct scale; IMREAD_COLOR applies EXIF orientation.
    img = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if img is None and p.suffix.lower() == ".gif":
        img = _first_gif_frame(p)
    if img is None:
        raise ImageError(f"cannot decode image {p}: not an image or corrupt")
    return to_uint8_rgb(img, bgr=True)


def _first_gif_frame(p: Path):
    import cv2

    cap = cv2.VideoCapture(str(p))
    try:
        ok, frame = cap.read()
    finally:
        cap.release()
    return frame if ok else None


def to_uint8_rgb(img: np.ndarray, *, bgr: bool = False) -> np.ndarray:
    """Any HxW, HxWx1, HxWx3 or HxWx4 array (uint8, uint16 or float in [0,1]) -> HxWx3 uint8 RGB."""
    import cv2

    a = np.asarray(img)
    if a.ndim not in (2, 3) or a.size == 0 or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise ImageError(f"expected an HxW or HxWx{{1,3,4}} image, got shape {a.shape}")
    if a.dtype == np.uint16:
        a = (a.astype(np.uint32) * 255 + 32767) // 65535
        a = a.astype(np.uint8)
    elif a.dtype.kind == "f":
        a = np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 2 or a.shape[2] == 1:
        return cv2.cvtColor(a.reshape(a.shape[:2]), cv2.COLOR_GRAY2RGB)
    if a.shape[2] == 4:
        return cv2.cvtColor(a, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    return np.ascontiguousarray(a[:, :, ::-1]) if bgr else a


def iter_image_files(root: str | Path, recursive: bool = True) -> Iterator[Path]:
    """Image files under `root` in sorted order (by suffix; decoding errors surface later)."""
    p = Path(root)
    it = p.rglob("*") if recursive else p.glob("*")
    for f in sorted(it):
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."):
            yield f


def class_folders(root: str | Path) -> list[tuple[str, list[Path]]]:
    """[(class name, [image files])] for a folder of class folders, sorted by name."""
    p = Path(root)
    if not p.is_dir():
        raise DataError(f"not a folder: {p}")
    classes = sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
    return [(d.name, list(iter_image_files(d))) for d in classes]


def labelled_images(root: str | Path, labels: tuple[str, ...] | None = None):
    """Files and integer labels from class folders. Returns (files, y or None, class names).

    A folder without class sub-folders gives its images with y=None.
    """
    p = Path(root)
    if not p.is_dir():
        raise DataError(f"image folder not found: {p}")
    classes = class_folders(p)
    if not classes or not any(files for _, files in classes):
        files = list(iter_image_files(p, recursive=False))
        if not files:
            raise DataError(f"no images found in {p}")
        return files, None, ()
    names = tuple(n for n, _ in classes)
    index = {n: i for i, n in enumerate(labels or names)}
    files, ys = [], []
    for name, fs in classes:
        if name not in index:
            raise DataError(f"class folder {name!r} in {p} is not among the model's labels {list(labels)}")
        files += fs
        ys += [index[name]] * len(fs)
    return files, np.asarray(ys, np.int64), names
