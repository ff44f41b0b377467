"""OS errors turned into one clear line ('PATH: reason'), for every command's disk, permission and path problems.
Only the standard library (and tledge.io for free space)."""
from __future__ import annotations

import errno
import os

# errno -> what it means for the user (the path is added by os_error_message)
OS_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "is a folder, not a file",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENOENT: "no such file or folder",
    errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "file name too long",
    errno.ELOOP: "too many levels of symbolic links",
    errno.EFBIG: "file too large for this file system or for the process's file size limit (ulimit -f)",
    errno.EMFILE: "too many open files",
    errno.EIO: "input/output error (failing disk or network file system?)",
    errno.ENXIO: "no such device",
}


def os_error_message(exc: OSError, what: str | None = None) -> str:
    """'WHAT PATH: reason' for an OSError, without the Python decoration."""
    reason = OS_REASONS.get(exc.errno) or (exc.strerror or str(exc)).strip()
    where = exc.filename if exc.filename is not None else ""
    if exc.errno == errno.EEXIST and where and os.path.islink(where) and not os.path.exists(where):
        reason = f"a symbolic link to {os.readlink(where)}, which does not exist"  # not "already exists"
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    head = " ".join(str(s) for s in (what, where) if s)
    if not head:
        reason += _unnamed(exc)
    return f"{head}: {reason}" if head else reason


def _unnamed(exc: OSError) -> str:
    """What an OSError without a path can still say: a full disk without a name is most often the temporary folder
    (converters' scratch files), whose free space is known; a vanished current folder makes every relative path
    fail ("no such file or folder" of nothing)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        import tempfile

        from tledge.io import free_bytes

        tmp = tempfile.gettempdir()
        try:
            free = f", {free_bytes(tmp) / 1e6:.1f} MB free"
        except OSError:
            free = ""
        return f" (a scratch file? the temporary folder is {tmp}{free}: set TMPDIR to a folder with room)"
    if exc.errno == errno.ENOENT:
        try:
            os.getcwd()
        except FileNotFoundError:
            return " (the current folder no longer exists: cd to an existing folder, or give absolute paths)"
    return ""
