"""The output-folder lock between users: a group-mate takes over a dead holder's lock (it was 0644 whatever the umask,
and "permission denied" was all the next user got), and is told who holds a live one."""
from __future__ import annotations

import os

import pytest

from tledge.errors import TledgeError
from tledge.folderlock import FolderLock, lock_name

fcntl = pytest.importorskip("fcntl")


def test_the_lock_file_follows_the_umask(tmp_path):
    old = os.umask(0o002)  # a shared group folder
    try:
        lock = FolderLock(tmp_path).acquire()
        mode = os.stat(tmp_path / lock_name("export")).st_mode & 0o777
        lock.release()
    finally:
        os.umask(old)
    assert mode == 0o664


def _as_another_user(monkeypatch, path):
    """os.open of the lock file for writing is refused, as for a lock file another user made 0644 (root, who runs
    these tests in CI, is never refused)."""
    import tledge.folderlock as fl

    real = os.open

    def refusing(p, flags, *a):
        if os.fspath(p) == os.fspath(path) and flags & os.O_RDWR and os.path.exists(path):
            raise PermissionError(13, "Permission denied", os.fspath(p))
        return real(p, flags, *a)

    monkeypatch.setattr(fl.os, "open", refusing)


def test_another_user_s_dead_lock_is_taken_over(tmp_path, monkeypatch):
    path = tmp_path / lock_name("export")
    path.write_text("999999 host 2026-01-01T00:00:00Z\n")
    _as_another_user(monkeypatch, path)
    lock = FolderLock(tmp_path).acquire()
    assert len(lock.notes) == 1 and "another user's pid 999999" in lock.notes[0]
    assert path.read_text().split()[0] == str(os.getpid())
    lock.release()


def test_another_user_s_live_lock_names_its_holder(tmp_path, monkeypatch):
    path = tmp_path / lock_name("export")
    path.write_text("4242 board 2026-01-01T00:00:00Z\n")
    held = os.open(path, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the other user's export, still running
    try:
        _as_another_user(monkeypatch, path)
        with pytest.raises(TledgeError, match=r"another tledge export \(pid 4242 on board"):
            FolderLock(tmp_path).acquire()
    finally:
        os.close(held)
    assert path.exists()
