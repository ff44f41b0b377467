"""Checks of paths and options that every subcommand runs before loading anything (OS errors turned into one clear
line: tledge.cli.oserrors). No TensorFlow, no model code: only the standard library.

Each check raises TledgeError (exit code 2) naming the option and the value it refused.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Sequence

from tledge.cli.oserrors import OS_REASONS, os_error_message
from tledge.errors import TledgeError
from tledge.paths import expand

MIN_FREE_BYTES = 1 << 20  # an output folder on a device with less free space than this is full
PSEUDO_FS = ("/proc", "/sys", "/dev")  # never write outputs here

def _label(flag: str, path) -> str:
    return f"{flag} {path}" if flag else str(path)


# ---- inputs ------------------------------------------------------------------------------------------

def input_file(path, flag: str, *, suffixes: Sequence[str] | None = None, what: str = "file") -> Path:
    """An existing, readable, non-empty regular file (with one of `suffixes`, case-insensitive)."""
    p = expand(str(path))
    if not p.exists():
        raise TledgeError(f"{_label(flag, p)}: {what} not found")
    if p.is_dir():
        raise TledgeError(f"{_label(flag, p)} is a folder; expected a {what}")
    if not p.is_file():
        raise TledgeError(f"{_label(flag, p)} is not a regular file")
    if suffixes and p.suffix.lower() not in suffixes:
        raise TledgeError(f"{_label(flag, p)}: unsupported file type {p.suffix or '(none)'!r}; "
                          f"expected {', '.join(suffixes)}")
    try:
        with open(p, "rb") as fh:
            empty = not fh.read(1)
    except OSError as exc:
        raise TledgeError(os_error_message(exc, flag or None)) from None
    if empty:
        raise TledgeError(f"{_label(flag, p)} is empty (0 bytes)")
    return p


def input_dir(path, flag: str, *, what: str = "folder") -> Path:
    p = expand(str(path))
    if not p.exists():
        raise TledgeError(f"{_label(flag, p)}: {what} not found")
    if not p.is_dir():
        raise TledgeError(f"{_label(flag, p)} is a file; expected a {what}")
    if not os.access(p, os.R_OK | os.X_OK):
        raise TledgeError(f"{_label(flag, p)}: permission denied")
    return p


def image_dir(path, flag: str) -> Path:
    """A readable folder with at least one image in it or in its class folders (what the export reads), checked by
    file name before anything is loaded."""
    from tledge.images import IMAGE_SUFFIXES, has_images

    p = input_dir(path, flag)
    if not has_images(p):
        raise TledgeError(f"{_label(flag, p)}: no images in it or in its class folders "
                          f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    return p


def keras_model(path, flag: str = "MODEL") -> Path:
    """A .keras / .h5 / .hdf5 file (any case) or a SavedModel folder, checked without loading it."""
    p = expand(str(path))
    if p.is_dir():
        if not ((p / "saved_model.pb").is_file() or (p / "saved_model.pbtxt").is_file()):
            from tledge.trust import trained_model

            inside = trained_model(p)
            raise TledgeError(f"{_label(flag, p)} is a folder but not a SavedModel (no saved_model.pb)"
                              + (f"; it holds {inside.name}: pass {inside}" if inside else ""))
        return p
    p = input_file(p, flag, suffixes=(".keras", ".h5", ".hdf5"), what="model file")
    if p.suffix.lower() == ".keras":
        _check_zip(p, flag)
    elif _head(p, 8) != b"\x89HDF\r\n\x1a\n":
        raise TledgeError(f"{_label(flag, p)} is not an HDF5 file (wrong file type or corrupt)")
    return p


def _head(p: Path, n: int) -> bytes:
    with open(p, "rb") as fh:
        return fh.read(n)


def _check_zip(p: Path, flag: str) -> None:
    """A .keras file is a zip archive: a truncated one has no central directory."""
    import zipfile

    try:
        with zipfile.ZipFile(p) as zf:
            names = set(zf.namelist())
    except zipfile.BadZipFile:
        head = _head(p, 8)
        if head == b"\x89HDF\r\n\x1a\n":  # TensorFlow 2.12 and older saved `model.save("x.keras")` as HDF5
            raise TledgeError(f"{_label(flag, p)} is an HDF5 Keras file under a .keras name (TensorFlow 2.12 and "
                              "older wrote .keras that way): copy or rename it to .h5 and pass that") from None
        what = "truncated or corrupt" if head[:4] == b"PK\x03\x04" else "not a .keras (zip) archive"
        raise TledgeError(f"{_label(flag, p)} is {what}: cannot read it as a .keras archive") from None
    if "config.json" not in names:
        raise TledgeError(f"{_label(flag, p)} is a zip archive without config.json: not a .keras model")


def edge_model(path, flag: str = "MODEL") -> Path:
    """A .tflite / .onnx file (any case), checked without opening it."""
    return input_file(path, flag, suffixes=(".tflite", ".onnx"), what="model file")


def edge_model_or_export(path, flag: str = "MODEL", what: str = "tledge run") -> Path:
    """A .tflite / .onnx file, or an export folder with its manifest (checked without loading anything)."""
    p = expand(str(path))
    if p.is_dir():
        from tledge import trust

        trust.require(p, what)
        return p
    return edge_model(p, flag)


def edge_models(paths: Sequence, flag: str = "MODEL") -> list[Path]:
    """Files or export folders holding .tflite / .onnx files."""
    out = []
    for path in paths:
        p = expand(str(path))
        if p.is_dir():
            if not any(f.suffix.lower() in (".tflite", ".onnx") for f in p.iterdir() if f.is_file()):
                raise TledgeError(f"{_label(flag, p)}: no .tflite or .onnx files in this folder")
            out.append(p)
        else:
            out.append(edge_model(p, flag))
    return out


def keras_weights(path, flag: str, suffixes: Sequence[str]) -> Path:
    """A local weights file (.h5 / .keras): an HDF5 file or a .keras archive, checked without TensorFlow (a
    text file renamed .h5 otherwise fails only once the data is read and the backbone is being built)."""
    p = input_file(path, flag, suffixes=suffixes, what="weights file")
    if p.suffix.lower() == ".keras":
        _check_zip(p, flag)
    elif _head(p, 8) != b"\x89HDF\r\n\x1a\n":
        raise TledgeError(f"{_label(flag, p)} is not an HDF5 file (wrong file type or corrupt)")
    return p


def delegates(libs: Sequence[str], flag: str = "--delegate") -> None:
    """Each TFLite delegate library opens and has the external-delegate entry point, checked before any model
    is loaded: the interpreter's own loader fails on them with a traceback (and another as it is collected)."""
    from tledge._deps import open_library

    for lib in libs or ():
        handle, reason = open_library(lib)
        if handle is None:
            raise TledgeError(f"{flag} {lib}: cannot be loaded ({reason})")
        if not hasattr(handle, "tflite_plugin_create_delegate"):
            raise TledgeError(f"{flag} {lib}: not a TFLite delegate library (no tflite_plugin_create_delegate)")


def device(name: str | None) -> None:
    """A known device profile name (or auto), checked before a source, model or worker process is opened."""
    if name is None or str(name).lower() == "auto":
        return
    from tledge.devices.profiles import get_profile

    get_profile(name)


def labels_file(path, flag: str = "--labels") -> tuple[str, ...]:
    from tledge.labels import read_labels

    input_file(path, flag, what="labels file")
    try:
        return read_labels(path)
    except TledgeError as exc:
        raise TledgeError(f"{flag}: {exc}") from None


# ---- outputs -----------------------------------------------------------------------------------------

def _existing_ancestor(p: Path) -> Path:
    q = p
    while not q.exists():
        if q.parent == q:
            break
        q = q.parent
    return q


def _refuse_pseudo(p: Path, flag: str) -> None:
    resolved = p.resolve()
    for root in PSEUDO_FS:
        if resolved == Path(root) or Path(root) in resolved.parents:
            raise TledgeError(f"{_label(flag, p)} is under {root}, a system pseudo file system: "
                              "choose a normal folder")


def _probe(folder: Path, flag: str, target: Path) -> None:
    """Can files be created in the nearest existing folder? Read-only file systems, permissions and a
    full disk show up now, without writing anything."""
    try:
        st = os.statvfs(folder)
    except OSError as exc:
        exc.filename = str(target)
        raise TledgeError(os_error_message(exc, flag or None)) from None
    if st.f_flag & os.ST_RDONLY:
        raise TledgeError(f"{_label(flag, target)}: {OS_REASONS[errno.EROFS]} ({folder})")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise TledgeError(f"{_label(flag, target)}: {OS_REASONS[errno.EACCES]} (cannot create files in {folder})")
    if st.f_bavail * st.f_frsize < MIN_FREE_BYTES:
        raise TledgeError(f"{_label(flag, target)}: {OS_REASONS[errno.ENOSPC]} "
                          f"({st.f_bavail * st.f_frsize} bytes free in {folder})")


def _writable_parent(p: Path, flag: str) -> None:
    _refuse_pseudo(p, flag)
    anc = _existing_ancestor(p.parent)
    if not anc.is_dir():
        raise TledgeError(f"{_label(flag, p)}: {anc} is a file, not a folder")
    _probe(anc, flag, p)


def output_file(path, flag: str, *, suffixes: Sequence[str] | None = None) -> Path:
    """A file to write (atomically): not a folder, not a device or pipe, in a writable folder."""
    p = expand(str(path))
    if str(path).endswith(("/", os.sep)) or p.is_dir():
        raise TledgeError(f"{_label(flag, p)} is a folder; expected a file name")
    if p.exists() and not p.is_file():
        raise TledgeError(f"{_label(flag, p)} exists and is not a regular file")
    if suffixes and not p.name.lower().endswith(tuple(suffixes)):
        raise TledgeError(f"{_label(flag, p)}: expected a name ending in {', '.join(suffixes)}")
    _writable_parent(p, flag)
    return p


def not_an_input(path, flag: str, inputs: Sequence, *, replaces: bytes = b"") -> None:
    """An output file must not be one of the command's inputs (a model, an exported file, a file anywhere in an input
    folder: a bundle's model/golden.npz, an image): written atomically, it would replace it whole (`--junit
    model.keras` left 198 bytes of XML where the model was). An existing file that starts with `replaces` (an earlier
    report of the same kind) may be replaced."""
    out = expand(str(path))
    if not out.is_file():
        return
    if replaces:
        with open(out, "rb") as fh:
            if replaces in fh.read(512):
                return
    real = out.resolve()
    for q in (expand(str(given)).resolve() for given in inputs):
        if real == q or (q.is_dir() and real.is_relative_to(q)):
            raise TledgeError(f"{_label(flag, out)} is {'in ' if real != q else ''}{q}, an input of this command: it "
                              "would be overwritten; write it elsewhere")


def output_dir(path, flag: str) -> Path:
    """A folder to create or fill: not a file, in a writable place with some free space."""
    p = expand(str(path))
    if p.exists() and not p.is_dir():
        raise TledgeError(f"{_label(flag, p)} is a file; expected a folder")
    _refuse_pseudo(p, flag)
    anc = _existing_ancestor(p)
    if not anc.is_dir():
        raise TledgeError(f"{_label(flag, p)}: {anc} is a file, not a folder")
    _probe(anc, flag, p)
    return p


# ---- numbers -----------------------------------------------------------------------------------------

def _num(v) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"


def in_range(value, flag: str, lo=None, hi=None, *, lo_open: bool = False):
    """`value` (when given) within [lo, hi] (lo excluded with lo_open); returns it."""
    if value is None:
        return None
    low_bad = lo is not None and (value <= lo if lo_open else value < lo)
    if low_bad or (hi is not None and value > hi) or value != value:  # NaN
        if lo is not None and hi is not None:
            want = f"in {'(' if lo_open else '['}{_num(lo)}, {_num(hi)}]"
        elif lo is not None:
            want = f"{'>' if lo_open else '>='} {_num(lo)}"
        else:
            want = f"<= {_num(hi)}"
        raise TledgeError(f"{flag} must be {want}, got {_num(value)}")
    return value


def geometry(fit: str | None, crop: float | None) -> None:
    """--crop FRACTION in (0, 1], and not with a --fit other than crop (it means fit=crop)."""
    in_range(crop, "--crop", 0.0, 1.0, lo_open=True)
    if crop is not None and fit not in (None, "crop"):
        raise TledgeError(f"--crop {_num(crop)} centre-crops: it cannot go with --fit {fit} (drop one)")


MAX_SIDE = 4096  # larger inputs are a typo, not a classifier


def input_size(text: str, flag: str = "--input-size") -> tuple[int, int]:
    """'HxW' or 'N' -> (h, w), each 1..MAX_SIDE."""
    parts = str(text).lower().replace(",", "x").split("x")
    try:
        if len(parts) > 2:
            raise ValueError
        h, w = int(parts[0]), int(parts[-1])
    except ValueError:
        raise TledgeError(f"{flag} wants HxW or N, got {text!r}") from None
    if min(h, w) < 1 or max(h, w) > MAX_SIDE:
        raise TledgeError(f"{flag} {text}: each side must be 1..{MAX_SIDE} pixels")
    return h, w


def size(text: str | None, flag: str = "--input-size") -> tuple[int, int] | None:
    """input_size(), and None stays None."""
    return None if text is None else input_size(text, flag)


def numbers(text: str | None, flag: str, *, positive: bool = False) -> tuple[float, ...] | None:
    """'1,2,3' or '1 2 3' -> floats (1 or 3 values)."""
    if text is None:
        return None
    try:
        vals = tuple(float(x) for x in str(text).replace(",", " ").split())
    except ValueError:
        raise TledgeError(f"{flag} wants 1 or 3 numbers, got {text!r}") from None
    if len(vals) not in (1, 3) or any(v != v or abs(v) == float("inf") for v in vals):
        raise TledgeError(f"{flag} wants 1 or 3 finite numbers, got {text!r}")
    if positive and any(v <= 0 for v in vals):
        raise TledgeError(f"{flag} values must be > 0, got {text!r}")
    return vals


def preprocess(name: str | None, flag: str = "--preprocess", *, allow_auto: bool = False) -> str | None:
    if name is None or (allow_auto and name == "auto"):
        return name
    from tledge.backbones import preprocess_mode_for

    try:
        preprocess_mode_for(name)
    except TledgeError as exc:
        raise TledgeError(f"{flag}: {str(exc).split('. ')[0]}") from None
    return name
