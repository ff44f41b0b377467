"""An export folder written as a unit: a lock, a staging folder, and a swap with the manifest last.

    with ExportFolder(out) as folder:      # lock (a second export into `out` fails: exit 2)
        ... write everything into folder.staging ...
        folder.commit(source, verdicts)    # manifest into staging, then swapped in, manifest last

Swap order, with Ctrl-C / SIGTERM / SIGHUP held back until it is done: (1) the old manifest is moved aside, so from here
until (4) the folder vouches for nothing; (2) the previous export's files (the old manifest's list, every name in
tledge.artifacts' table) are moved aside into the staging folder (and back if a rename fails); (3) the new files
are moved in (os.replace, same file system); (4) the new manifest is moved in. A `kill -9` at any point leaves
either the old complete export, a folder without a manifest (which `bundle`/`run`/`info` refuse), or the new
complete one. The staging folder of a killed export is removed by the next export into the folder. A folder
that holds files of the table's names but no manifest (and no staging folder of a killed export) is someone
else's: refused (`not_an_export`), never emptied.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from tledge import artifacts, log
from tledge.errors import TledgeError
from tledge.folderlock import FolderLock, lock_name
from tledge.io import name_outside

LOCK = lock_name("export")

STAGING_PREFIX = ".tledge-staging-"


def not_an_export(out: Path) -> str | None:
    """Why exporting into `out` would replace files no tledge command wrote, or None: names of the table (or a
    non-empty rejected/) in a folder with no sign of tledge (a manifest.json, a killed export's staging folder,
    export's lock or log, a `tledge train` run's metrics.json)."""
    signs = (artifacts.MANIFEST, LOCK, "export.log", "metrics.json")
    if not out.is_dir() or any((out / s).exists() for s in signs) or any(out.glob(STAGING_PREFIX + "*")):
        return None
    theirs = sorted(n for n in artifacts.owned_names() if (out / n).is_file() or (out / n).is_symlink())
    rejected = out / artifacts.REJECTED
    if rejected.is_dir() and any(rejected.iterdir()):
        theirs.append(f"{artifacts.REJECTED}/")
    if not theirs:
        return None
    return (f"--out {out} holds {', '.join(theirs[:4])}{' ...' if len(theirs) > 4 else ''} but no "
            f"{artifacts.MANIFEST}: not a tledge export, and exporting would replace them; choose another --out "
            "or move them away")


def refuse_other_run(out, model_path) -> None:
    """A `tledge train` run folder of another model as --out: the export replaced its tledge.json and labels.txt
    (exit 0), and that run could no longer be exported. Its own model's folder may take the export."""
    if out is None:
        return
    out = Path(out)
    trained = [out / n for n in ("model.keras", "model.h5") if (out / n).is_file()]
    if not trained or not (out / "metrics.json").is_file():
        return
    if any(t.resolve() == Path(model_path).resolve() for t in trained):
        return
    raise TledgeError(f"--out {out} is the tledge train run of another model ({trained[0].name}): exporting there "
                      "would replace its tledge.json and labels.txt; choose another --out")


class ExportFolder:
    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.staging = self.out / f"{STAGING_PREFIX}{os.getpid()}"
        self.notes: list[str] = []
        self._created: list[Path] = []
        self._lock: FolderLock | None = None

    def __enter__(self) -> "ExportFolder":
        if self.out.exists() and not self.out.is_dir():
            raise TledgeError(f"--out {self.out} is a file, not a folder")
        why = not_an_export(self.out)
        if why:
            raise TledgeError(why)
        self._created = [p for p in (self.out, *self.out.parents) if not p.exists()]  # a failed export leaves none
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            self._lock = FolderLock(self.out).acquire().exclude("train")
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
        name_outside(exc, self.staging, self.out)  # the folder the user asked for, not the staging one
        shutil.rmtree(self.staging, ignore_errors=True)
        if self._lock is not None:
            self._lock.release()
        if exc_type is not None:
            self._remove_if_created()

    def _remove_if_created(self) -> None:
        for folder in self._created:  # --out first, then the parents this export made, while each is empty
            if not folder.is_dir() or any(folder.iterdir()):
                return
            folder.rmdir()

    def commit(self, source: str | Path, verdicts: dict[str, tuple[bool, dict]],
               derived: dict[str, str] | None = None, inputs: dict[str, dict] | None = None,
               loading: dict | None = None) -> artifacts.Manifest:
        """Write the manifest of the staging folder (last), then swap the staging folder in. `loading`: how the
        source was loaded (signature, binary_output), recorded for parity to load it the same way."""
        from tledge.signals import stop_if_signalled

        stop_if_signalled()  # a stop that got lost (tledge.signals) swaps in nothing: --out keeps the previous export
        manifest = artifacts.build(self.staging, source, verdicts, derived, inputs, loading)
        artifacts.write(self.staging, manifest)
        swap_in(self.staging, self.out, manifest)
        return manifest


def swap_in(staging: Path, out: Path, manifest: artifacts.Manifest) -> None:
    """The new export in place of the old, with Ctrl-C / SIGTERM / SIGHUP held back (tledge.signals.signals_held): the
    previous export's files (its manifest's list and the table's names, in rejected/ too) are moved aside into the
    staging folder, not deleted, and moved back if a rename fails; other files in rejected/ are left alone."""
    from tledge.signals import signals_held

    try:
        old = artifacts.read(out)
    except TledgeError:
        old = None
    aside = staging / ".previous"
    owned = artifacts.owned_names() | {f"{artifacts.REJECTED}/{n}" for n in artifacts.BY_FILENAME}
    names = [artifacts.MANIFEST] + sorted((owned | {e.file for e in (old.files if old else ())}) - {artifacts.MANIFEST})
    moved: list[str] = []
    placed: list[str] = []
    with signals_held(done=lambda: log.note(f"the new export was in place in {out} when the signal came")):
        try:
            for name in names:  # (1) the old manifest first: from here the folder vouches for nothing; (2) its files
                p = out / name
                if p.is_file() or p.is_symlink():
                    (aside / name).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(p, aside / name)
                    moved.append(name)
            for e in manifest.files:  # (3) the new files
                (out / e.file).parent.mkdir(exist_ok=True)
                os.replace(staging / e.file, out / e.file)
                placed.append(e.file)
            os.replace(staging / artifacts.MANIFEST, out / artifacts.MANIFEST)  # (4) the manifest, last
            log.outputs_written()  # a stop from here on: this export's log goes with its files
        except BaseException:
            for name in placed:
                os.replace(out / name, staging / name)
            for name in reversed(moved):
                os.replace(aside / name, out / name)
            raise
        finally:
            if (out / artifacts.REJECTED).is_dir() and not any((out / artifacts.REJECTED).iterdir()):
                (out / artifacts.REJECTED).rmdir()
