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


def glob_paths(pattern: str | Path) -> list[Path]:
    """glob.glob(pattern, recursive=True), sorted as a folder's files are (by path), except that where `**` walks, a
    folder is not entered again below itself: a symbolic link back up the tree (`a/b/up -> ..`) repeated every photo
    40 times, and two such links made the walk exponential (no end). Links to folders elsewhere are followed, as
    glob does (a folder reached by two names is listed under both)."""
    import glob
    import re

    text = os.fspath(pattern)
    if "**" not in text:
        return sorted(Path(m) for m in glob.glob(text, recursive=True))
    parts = Path(text).parts
    fixed = 0
    while fixed < len(parts) and not glob.has_magic(parts[fixed]):
        fixed += 1
    base = Path(*parts[:fixed]) if fixed else Path(".")
    rest = parts[fixed:]
    if ".." in rest:  # `a/*/../**`: the walk never lists `..`; glob's own (rare)
        return sorted(Path(m) for m in glob.glob(text, recursive=True))
    rx = re.compile("/".join(_component(c, last=i == len(rest) - 1) for i, c in enumerate(rest))
                    .replace(_ANY_FOLDERS + "/", _ANY_FOLDERS))  # `**/x`: x at any depth, the top one included
    hidden = any(c.startswith(".") for c in rest)  # a pattern naming hidden folders walks into them
    found = []
    for top, dirs, files in os.walk(base, followlinks=True):
        chain = _ancestors(Path(top), base)
        dirs[:] = sorted(d for d in dirs if (hidden or not d.startswith("."))
                         and _identity(Path(top) / d) not in chain)
        rel = Path(top).relative_to(base)
        found += [Path(top) / n for n in dirs + files if rx.fullmatch((rel / n).as_posix())]
    if text.endswith(("/", os.sep)):  # `photos/**/`: folders only, as glob gives them
        found = [f for f in found if f.is_dir()]
    return sorted(found)


_ANY_FOLDERS = r"(?:(?!\.)[^/]+/)*"  # `**` before more of the pattern: any depth of folders not hidden


def _identity(path: Path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _ancestors(top: Path, base: Path) -> set:
    """The (device, inode) of `top` and of each folder above it up to `base`, by name: the folders a link must not
    lead back into."""
    out, q = set(), top
    while True:
        out.add(_identity(q))
        if q == base or q == q.parent:
            return out
        q = q.parent


def _component(part: str, last: bool) -> str:
    """One path component of a glob pattern as a regular expression over `/`-separated relative paths; a wildcard
    at its start does not match a leading dot (glob's hidden names), and a class is read as fnmatch reads it."""
    import re

    if part == "**":
        return r"(?:(?!\.)[^/]+(?:/(?!\.)[^/]+)*)?" if last else _ANY_FOLDERS
    out, i = "(?!\\.)" if part[:1] in ("*", "?", "[") else "", 0
    while i < len(part):
        c = part[i]
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            j = i + 1 + (part[i + 1:i + 2] == "!")
            j = part.find("]", j + (part[j:j + 1] == "]"))  # `[]a]`: a class holding `]`
            if j < 0:
                out += "\\["
            else:
                out += _char_class(part[i:j + 1])
                i = j
        else:
            out += re.escape(c)
        i += 1
    return out


def _char_class(text: str) -> str:
    """A glob character class (`[a-c]`, `[!x]`, `[z-ax]`) as fnmatch reads it (empty ranges dropped, an empty class
    matching nothing), never matching `/` (a negated class would have crossed into the next folder)."""
    import fnmatch

    rx = fnmatch.translate(text)
    rx = rx[rx.index(":") + 1:rx.rindex(")")]  # fnmatch's `(?s:...)\Z` taken off
    if rx == ".":  # `[!z-a]`: any one character
        return "[^/]"
    if rx.startswith("[^"):
        body = rx[2:-1]
        return "[^" + ("]/" + body[1:] if body.startswith("]") else "/" + body) + "]"
    return rx
