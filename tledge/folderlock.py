"""An exclusive lock on an output folder, so that two commands never write into one folder at once (`tledge export`
and `tledge train` each hold one for their whole run)."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from tledge.errors import TledgeError


def lock_name(verb: str) -> str:
    return f".tledge-{verb}.lock"


class FolderLock:
    """An exclusive lock on a folder: flock on POSIX (released by the kernel when the holder dies),
    O_EXCL with a pid check elsewhere. A lock left by a dead process is taken over with a note."""

    def __init__(self, folder: Path, verb: str = "export"):
        self.path, self.fd, self.notes, self.verb = Path(folder) / lock_name(verb), None, [], verb

    def acquire(self) -> "FolderLock":
        try:
            import fcntl
        except ImportError:  # Windows
            return self._acquire_excl()
        while True:
            try:  # 0o666 under the umask: a group-writable umask lets a group-mate take over a dead holder's lock
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except PermissionError:  # another user's lock file: flock works on a read-only descriptor too
                if self._replace_foreign(fcntl):
                    continue
                raise
            try:
                _flock_briefly(fcntl, fd)
            except OSError:
                holder = os.read(fd, 200).decode(errors="replace").strip()
                os.close(fd)
                raise self._busy(holder) from None
            try:  # the file may have been unlinked by its previous holder between open and flock
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            self._take(fd, os.read(fd, 200).decode(errors="replace").strip())
            return self

    def _replace_foreign(self, fcntl) -> bool:
        """Another user's lock file that this user cannot write: busy if its holder still runs, else it is removed
        (the folder is writable) so that the next turn creates this user's own. False: it cannot be removed."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return False
        try:
            holder = os.read(fd, 200).decode(errors="replace").strip()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise self._busy(holder) from None
            try:
                os.unlink(self.path)  # holders check that the file they locked is still the one at the path
            except OSError:
                return False
            if holder:
                self.notes.append(f"took over the {self.verb} lock another user's pid {holder.split(' ')[0]} left "
                                  f"(no longer running; its {self.verb} was interrupted)")
            return True
        finally:
            os.close(fd)

    def _acquire_excl(self) -> "FolderLock":
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                holder = self.path.read_text(errors="replace").strip() if self.path.exists() else ""
                pid = holder.split(" ")[0]
                if pid.isascii() and pid.isdigit() and _alive(int(pid)):
                    raise self._busy(holder) from None
                self.path.unlink(missing_ok=True)
                self.notes.append(f"took over the {self.verb} lock of pid {pid or '?'}, which is no longer running")
                continue
            self._take(fd, "")
            return self
        raise self._busy("")

    def _take(self, fd: int, previous: str) -> None:
        if previous:  # written by a holder that died without releasing (kill -9)
            self.notes.append(f"took over the {self.verb} lock left by pid {previous.split(' ')[0]} "
                              f"(no longer running; its {self.verb} was interrupted)")
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()} {socket.gethostname()} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n"
                 .encode())
        self.fd = fd

    def _busy(self, holder: str) -> TledgeError:
        return TledgeError(f"another tledge {self.verb} ({_who(holder)}) is writing into {self.path.parent}: wait for "
                           f"it to finish or choose another --out")

    def exclude(self, other: str) -> "FolderLock":
        """Held, refuse the folder while the `other` verb's lock on it is held too (released first)."""
        who = holder(self.path.parent, other)
        if who is not None:
            self.release()
            raise TledgeError(f"a tledge {other} ({who}) is writing into {self.path.parent}: wait for it to finish "
                              "or choose another --out")
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding it: see the samestat check
        finally:
            os.close(self.fd)
            self.fd = None


def _flock_briefly(fcntl, fd: int) -> None:
    """LOCK_EX without waiting for a holder, but through a reader's moment (`holder` takes LOCK_SH to look: an
    export that met one was refused, "another tledge export is writing", with nobody exporting)."""
    for _ in range(10):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(0.01)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def holder(folder: Path, verb: str) -> str | None:
    """Who holds `verb`'s lock on `folder` right now ("pid N on HOST, started T"), None when nobody does: export and
    train lock their folders each under its own name, and one checks the other's (a train's final save replaced an
    export's tledge.json after its manifest vouched for it; both exited 0)."""
    path = Path(folder) / lock_name(verb)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        text = os.read(fd, 200).decode(errors="replace").strip()
        try:
            import fcntl
        except ImportError:  # Windows: the pid in the file, if it still runs
            pid = text.split(" ")[0]
            return _who(text) if pid.isascii() and pid.isdigit() and _alive(int(pid)) else None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _who(text)
        return None  # a dead holder's file (kill -9): free
    finally:
        os.close(fd)


def _who(holder: str) -> str:
    parts = holder.split(" ")
    return f"pid {parts[0]} on {parts[1]}, started {parts[2]}" if len(parts) >= 3 else "another process"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
