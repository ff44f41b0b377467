"""Path names as the native libraries take them (imported on `tledge run`'s path: os only, the rest inside
functions). A name that is not UTF-8 (a Latin-1 name on a Linux disk: Python holds its bytes as surrogates) made
LiteRT's and onnxruntime's loaders raise a TypeError and OpenCV's VideoCapture, VideoWriter and readNetFromONNX
crash the process (SIGSEGV)."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


def expand(path) -> Path:
    """`path` with a leading `~` or `~user` expanded where there is such a home, else as given: Path.expanduser
    raised RuntimeError ("Could not determine home directory") for `~backup.jpg`, a name bash passes on unchanged."""
    return Path(os.path.expanduser(os.fspath(path) if isinstance(path, os.PathLike) else str(path)))


def utf8_name(path: str | Path) -> bool:
    """Is `path` UTF-8 (no undecodable bytes)? OpenCV's and LiteRT's bindings take only such names: OpenCV's
    VideoCapture, VideoWriter and readNetFromONNX crashed (SIGSEGV) on the others."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@contextmanager
def utf8_alias(path: str | Path):
    """`path` under a name OpenCV can open: itself, or a symbolic link to it in a temporary folder."""
    if utf8_name(path):
        yield str(path)
        return
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="tledge-alias-")
    try:
        alias = os.path.join(folder, "file" + "".join(c for c in Path(path).suffix if c.isascii()))
        os.symlink(os.path.abspath(path), alias)
        yield alias
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def loadable(path: str | Path) -> str | bytes:
    """`path` as LiteRT's and onnxruntime's loaders take it: its name, or the file's bytes when the name is not UTF-8
    (their C++ bindings refused it with a TypeError, and `tledge parity --golden` called a good export FAILED)."""
    return str(path) if utf8_name(path) else Path(path).read_bytes()
