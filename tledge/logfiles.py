"""The log file of a running command and where fd 2 goes: the os-level pieces of tledge.log (os only: on `tledge
run`'s cold-start path)."""
from __future__ import annotations

import os

LOG_ROOM = 16 << 20  # free bytes the temporary folder needs for the libraries' messages to go into the log


def room_for_libraries(folder: str) -> bool:
    """Whether `folder` has LOG_ROOM free (unknown: yes)."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # (no statvfs on Windows)
        return True
    return st.f_bavail * st.f_frsize >= LOG_ROOM


def to_null(fd: int) -> None:
    """`fd` onto /dev/null: writes to it never fail."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


def temp_log(prefix: str) -> tuple[int, str]:
    """tempfile.mkstemp(prefix=prefix, suffix=".log"), done directly in $TMPDIR or /tmp on POSIX: importing
    tempfile (with shutil and random) is milliseconds of every command's start (`tledge run`'s cold start).
    Anything unusual (no such folder, not writable) is left to tempfile itself."""
    folder = os.path.abspath(os.environ.get("TMPDIR") or "/tmp")
    if os.name == "posix" and os.path.isdir(folder):
        for _ in range(10):
            name = os.path.join(folder, f"{prefix}{os.urandom(6).hex()}.log")
            try:  # mkstemp's flags; os.open makes the descriptor non-inheritable, as mkstemp's is
                return os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_APPEND, 0o600), name
            except FileExistsError:
                continue
            except OSError:
                break
    import tempfile

    return tempfile.mkstemp(prefix=prefix, suffix=".log")


def is_fd2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, ValueError, OSError):
        return False
