"""Atomic writes: a temporary file in the same folder, then os.replace."""
from __future__ import annotations

import errno
import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    """The process's umask, read without changing it where the OS says it (Linux): setting and restoring it races
    with other threads creating files."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


_UMASK = _umask()


@contextmanager
def atomic_path(path: str | Path, *, same_suffix: bool = False):
    """Yield a temporary path next to `path`; it replaces `path` only if the block succeeds.
    same_suffix: the temporary name keeps `path`'s suffixes (Keras checks them) and does not exist
    yet (writers that create the file themselves)."""
    dst = Path(path)  # a symbolic link is replaced, never written through: it may point at an input (a model)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if same_suffix:
        fd, tmp = tempfile.mkstemp(prefix=f".{_short(dst.name.split('.')[0])}.", suffix=_short("".join(dst.suffixes)),
                                   dir=dst.parent)
    else:
        fd, tmp = tempfile.mkstemp(prefix=f".{_short(dst.name)}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    if same_suffix:
        os.unlink(tmp)
    try:
        yield Path(tmp)
        if os.path.exists(tmp):  # mkstemp makes 0600 files: the mode of the file replaced (a 0600 CSV stayed
            os.chmod(tmp, _mode_of(dst))  # private), else the usual umask permissions
        os.replace(tmp, dst)
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:  # a failed write (a full disk) names no file
            raise OSError(exc.errno, exc.strerror, str(dst)) from exc
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _mode_of(dst: Path) -> int:
    """The permission bits `dst` has when it is a regular file (not through a link: a link is replaced), else those
    a new file gets under the umask."""
    try:
        st = os.lstat(dst)
    except OSError:
        return 0o666 & ~_UMASK
    import stat

    return stat.S_IMODE(st.st_mode) & 0o777 if stat.S_ISREG(st.st_mode) else 0o666 & ~_UMASK


def _short(name: str, limit: int = 100) -> str:
    """`name` cut to `limit` bytes for a temporary name beside it: a legal name of 242-255 bytes plus the temporary
    part was over the file system's 255 and every atomic write of it failed ("file name too long")."""
    while len(os.fsencode(name)) > limit:
        name = name[:-1]
    return name


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    # a path that is not UTF-8 (its bytes as surrogates) is written as the bytes it has on disk
    return atomic_write_bytes(path, text.encode("utf-8", errors="surrogateescape"))


DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


def raise_if_disk(exc: BaseException) -> None:
    """Raise the OSError of a full, read-only or failing disk (or `ulimit -f`) that `exc` is or was caused by: the
    disk's failure, not the model's. A converter's `except Exception` made a full $TMPDIR "int8 conversion failed",
    and the export was committed without that file (its earlier good one deleted)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            raise exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__


def name_outside(exc: BaseException | None, staging: Path, out: Path) -> None:
    """An OSError raised inside `staging` (a folder in `out` that a command writes before it swaps it in) named as
    the `out` path the user asked for: `run/.tledge-final-15904/model.keras` was gone by the time it was read."""
    if isinstance(exc, OSError):
        for attr in ("filename", "filename2"):
            if getattr(exc, attr, None):
                setattr(exc, attr, str(getattr(exc, attr)).replace(str(staging), str(out)))


def check_space(folder: str | Path, nbytes: int, what: str,
                hint: str = "free some space, or pass another --out") -> None:
    """Raise TledgeError when `folder`'s file system has less than `nbytes` (+10 % and 256 kB: HDF5's own) free.
    HDF5 writers (Keras .h5, .keras, weight checkpoints) that hit a full disk leave a half-closed file object
    behind that prints tracebacks when collected and crashes the interpreter at exit: they never start without room."""
    from tledge.errors import TledgeError

    need = int(nbytes * 1.1) + (1 << 18)
    try:
        free = free_bytes(folder)
    except OSError:
        return  # unknown (a FUSE or network mount that does not say): the write itself will tell
    if free < need:
        raise TledgeError(f"{folder}: no space left on the device: {what} needs about {need / 1e6:.1f} MB, "
                          f"{free / 1e6:.1f} MB free ({hint})")
    limit = file_size_limit()
    if limit is not None and limit < need:  # HDF5 past `ulimit -f`: dozens of tracebacks, then a segfault
        raise TledgeError(f"{folder}: {what} needs about {need / 1e6:.1f} MB and this process may write files of "
                          f"at most {limit / 1e6:.1f} MB (ulimit -f): raise the limit")


def file_size_limit() -> int | None:
    """The largest file this process may write (`ulimit -f`, RLIMIT_FSIZE) in bytes, None when unlimited."""
    try:
        import resource
    except ImportError:  # (not on Windows)
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else int(soft)


def free_bytes(folder: str | Path) -> int:
    """Bytes free to this user on `folder`'s file system (its nearest existing parent's)."""
    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize


_SHAPE_SCRATCH_LOCK = threading.Lock()


@contextmanager
def shape_inference_scratch():
    """onnxruntime's symbolic shape inference, when it gives up, saves `sym_shape_infer_temp.onnx` and a .data
    file of every weight (111 MB for ConvNeXt-Tiny) into the working directory, the user's. Inside this block that
    save goes to a scratch folder, removed after. The process's working directory is not changed: a library
    export chdir'ed the whole process, and another thread's relative writes went to the removed folder."""
    try:
        import onnx
        from onnxruntime.tools import symbolic_shape_infer as ssi
    except ImportError:
        yield
        return
    if getattr(ssi, "onnx", None) is not onnx:  # another onnxruntime layout: nothing to redirect
        yield
        return
    with _SHAPE_SCRATCH_LOCK, tempfile.TemporaryDirectory(prefix="tledge-scratch-") as scratch:
        class _Redirected:
            def __getattr__(self, name):
                return getattr(onnx, name)

            @staticmethod
            def save_model(proto, f, *args, **kwargs):
                if isinstance(f, (str, os.PathLike)) and not os.path.isabs(f):
                    f = os.path.join(scratch, f)
                return onnx.save_model(proto, f, *args, **kwargs)

        ssi.onnx = _Redirected()
        try:
            yield
        finally:
            ssi.onnx = onnx
