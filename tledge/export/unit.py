"""An export folder written as a unit: a lock, a staging folder, and a swap with the manifest last.

    with ExportFolder(out) as folder:      # lock (a second export into `out` fails: exit 2)
        ... write everything into folder.staging ...
        folder.commit(source, verdicts)    # manifest into staging, then swapped in, manifest last

Swap order: (1) the old manifest is removed, so from here until (4) the folder vouches for nothing;
(2) the previous export's files (the old manifest's list, every name in tledge.artifacts' table,
the side files, rejected/) are removed; (3) the new files are moved in (os.replace, same file
system); (4) the new manifest is moved in. A `kill -9` at any point leaves either the old complete
export, a folder without a manifest (which `bundle`/`run`/`info` refuse), or the new complete one.
The staging folder of a killed export is removed by the next export into the folder.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from tledge import artifacts
from tledge.errors import TledgeError
from tledge.folderlock import FolderLock, lock_name

LOCK = lock_name("export")

STAGING_PREFIX = ".tledge-staging-"


class ExportFolder:
    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.staging = self.out / f"{STAGING_PREFIX}{os.getpid()}"
        self.notes: list[str] = []
        self._created = False
        self._lock: FolderLock | None = None

    def __enter__(self) -> "ExportFolder":
        if self.out.exists() and not self.out.is_dir():
            raise TledgeError(f"--out {self.out} is a file, not a folder")
        self._created = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            self._lock = FolderLock(self.out).acquire()
        except BaseException:
            self._remove_if_created()
            raise
        self.notes += self._lock.notes
        for old in self.out.glob(STAGING_PREFIX + "*"):  # left by a killed export: we hold the lock
            shutil.rmtree(old, ignore_errors=True)
            self.notes.append(f"removed {old.name}, left by an interrupted export")
        self.staging.mkdir()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if isinstance(exc, OSError):  # name the folder the user asked for, not the staging one
            for attr in ("filename", "filename2"):
                if getattr(exc, attr, None):
                    setattr(exc, attr, str(getattr(exc, attr)).replace(str(self.staging), str(self.out)))
        shutil.rmtree(self.staging, ignore_errors=True)
        if self._lock is not None:
            self._lock.release()
        if exc_type is not None:
            self._remove_if_created()

    def _remove_if_created(self) -> None:
        if self._created and self.out.is_dir() and not any(self.out.iterdir()):
            self.out.rmdir()

    def commit(self, source: str | Path, verdicts: dict[str, tuple[bool, dict]],
               derived: dict[str, str] | None = None, inputs: dict[str, dict] | None = None) -> artifacts.Manifest:
        """Write the manifest of the staging folder (last), then swap the staging folder in."""
        manifest = artifacts.build(self.staging, source, verdicts, derived, inputs)
        artifacts.write(self.staging, manifest)
        swap_in(self.staging, self.out, manifest)
        return manifest


def swap_in(staging: Path, out: Path, manifest: artifacts.Manifest) -> None:
    try:
        old = artifacts.read(out)
    except TledgeError:
        old = None
    (out / artifacts.MANIFEST).unlink(missing_ok=True)  # (1) from here on the folder vouches for nothing
    names = artifacts.owned_names() | {e.file for e in (old.files if old else ())}
    for name in sorted(names):  # (2) the previous export's files
        p = out / name
        if p.is_file() or p.is_symlink():
            p.unlink()
    shutil.rmtree(out / artifacts.REJECTED, ignore_errors=True)
    for e in manifest.files:  # (3) the new files
        dst = out / e.file
        dst.parent.mkdir(exist_ok=True)
        os.replace(staging / e.file, dst)
    os.replace(staging / artifacts.MANIFEST, out / artifacts.MANIFEST)  # (4) the manifest, last
