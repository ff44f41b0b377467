"""What a consumer may trust in an export folder: its manifest read and checked against the files there.

A file is *vouched for* when the manifest (tledge.artifacts) lists it as a model file that passed parity and its
bytes still hash to the recorded sha256; `bundle`, `run`, `info`, `bench` and `parity --golden` on a folder use
only those. A folder without a manifest (interrupted export, or a tledge before 0.1.0's manifest) is refused with
a message saying what to do.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable

from tledge.artifacts import (BY_FILENAME, CONTRACT_FILE, LABELS_FILE, MANIFEST, REJECTED, SIDE_FILES, Entry,
                              Manifest, read, sha256_of)
from tledge.errors import ModelLoadError, TledgeError
from tledge.paths import expand


TRAINED = ("model.keras", "model.h5")  # the Keras files `tledge train` writes into its run folder, preferred first


def trained_model(folder: Path) -> Path | None:
    """The Keras model a `tledge train` run folder holds, for messages that name the file to export."""
    return next((folder / n for n in TRAINED if (folder / n).is_file()), None)


RUNS_FILES = ("tledge run", "tledge info", "tledge bench", "tledge.runtime.load")  # what takes a model file too


def require(folder: str | Path, what: str) -> Manifest:
    """The manifest, or a TledgeError saying why `what` cannot trust this folder."""
    d = Path(folder)
    if not d.is_dir():
        raise TledgeError(f"export folder not found: {d}")
    m = read(d)
    if m is not None:
        return m
    if (d / "bundle.json").is_file() and (d / "model" / MANIFEST).is_file():  # (said "not an export folder")
        raise TledgeError(f"{d} is a deploy bundle: pass its export folder, {d / 'model'}, or run its ./run.sh")
    trained = trained_model(d)
    if trained is not None and not any((d / n).is_file() for n in BY_FILENAME):  # `tledge train`'s folder
        raise TledgeError(f"{d} holds a Keras model ({trained.name}), not exported files: export it first "
                          f"(tledge export {trained}), then pass the export folder")
    if any(d.glob(".tledge-staging-*")):
        from tledge.folderlock import holder  # (here: socket is no cold-start import of `tledge run`)

        busy = holder(d, "export")
        if busy is not None:
            raise TledgeError(f"an export ({busy}) is writing into {d} now: wait for it to finish")
        raise TledgeError(f"{d} has no {MANIFEST}, so {what} cannot trust its files (an export into it was "
                          f"killed): run tledge export again into it")
    if any((d / n).is_file() for n in list(BY_FILENAME) + list(SIDE_FILES)):
        files = sorted(n for n in BY_FILENAME if (d / n).is_file())  # each file carries its contract: it runs as is
        one = f"pass one of its files ({d / files[0]}), which carries its contract, or " \
            if files and what in RUNS_FILES else ""
        raise TledgeError(f"{d} has no {MANIFEST}, so {what} cannot trust it as a folder (written by hand or by a "
                          f"tledge without manifests): {one}run tledge export again into a new folder")
    raise TledgeError(f"{d} is not a tledge export folder (no {MANIFEST}): pass a folder written by tledge "
                      f"export" + (", or a .tflite / .onnx file" if what == "tledge run" else ""))


def problems(folder: Path, entries: Iterable[Entry]) -> list[str]:
    """'<file>: missing' / '<file>: changed since export (...)' for each entry that does not verify."""
    out = []
    for e in entries:
        p = Path(folder) / e.file
        if not p.is_file():
            out.append(f"{e.file}: missing")
        elif p.stat().st_size != e.bytes or sha256_of(p) != e.sha256:
            out.append(f"{e.file}: changed since export " + (_line_endings(p, e) or f"(sha256 differs from {MANIFEST})"))
    return out


def _line_endings(path: Path, entry: Entry) -> str:
    """What changed, when it is only a text file's line endings or a byte-order mark (git's core.autocrlf, an editor on
    Windows): a user on the board cannot export again, but can convert the file back."""
    if path.suffix not in (".json", ".txt") or path.stat().st_size > 1 << 24:
        return ""
    import hashlib

    data = path.read_bytes()
    plain = data.removeprefix(b"\xef\xbb\xbf").replace(b"\r\n", b"\n")
    if plain == data or hashlib.sha256(plain).hexdigest() != entry.sha256:
        return ""
    return f"only by {CRLF}"


CRLF = "CRLF line endings or a byte-order mark (git core.autocrlf?)"


def vouched(folder: str | Path, what: str) -> tuple[Manifest, list[Entry], list[str]]:
    """(manifest, model entries that verify and passed parity, notes about the others).
    A listed file that changed since export (side file or model) is an error naming it: the folder
    is not what the export wrote. A missing model file is only left out (with a note)."""
    d = Path(folder)
    m = require(d, what)
    issues = {e.file: problems(d, [e]) for e in m.files if e.role != "rejected"}
    changed = [i[0] for e in m.files for i in [issues.get(e.file)] if i and (e.role == "side" or "changed" in i[0])]
    if changed:
        fix = "convert them back to LF line endings without a BOM (dos2unix)" if all(CRLF in c for c in changed) \
            else "run tledge export again"
        raise TledgeError(f"{d}: {'; '.join(changed)}: {what} refuses the folder; {fix}")
    ok, notes = [], []
    for e in m.files:
        if e.role != "model":
            continue
        if issues[e.file]:
            notes.append(f"{issues[e.file][0]}: not used")
        elif e.verdict != "pass":
            notes.append(f"{e.file}: failed parity at export: not used")
        else:
            ok.append(e)
    listed = {e.file for e in m.files}
    notes += [f"{n}: not in {MANIFEST}: not used" for n in sorted(BY_FILENAME)
              if (d / n).is_file() and n not in listed]
    return m, ok, notes


def check_file(path: str | Path) -> list[str]:
    """A model file about to be opened: if its folder has a manifest that lists it, it must verify
    (TledgeError naming it otherwise). Returns notes (failed parity, not listed)."""
    p = Path(path)
    # a file the int8 fallback set aside: listed in the export folder's manifest, one level up, as rejected/NAME
    folder, name = (p.parent.parent, f"{REJECTED}/{p.name}") if p.parent.name == REJECTED and \
        (p.parent.parent / MANIFEST).is_file() and not (p.parent / MANIFEST).is_file() else (p.parent, p.name)
    try:
        m = read(folder)
    except TledgeError:
        return [f"{folder / MANIFEST} is unreadable: {p.name} is not vouched for"]
    if m is None:
        return []
    e = m.entry(name)
    if e is None:
        return [f"{p.name} is not listed in {MANIFEST} beside it: not vouched for by the export"]
    bad = problems(folder, [e])
    if bad:
        raise ModelLoadError(f"{p}: changed since export (sha256 differs from {MANIFEST}); refusing to use it: "
                          "run tledge export again")
    if e.role == "rejected":
        return [f"{name} was REJECTED at export: it failed parity and a float file ships instead (see parity.md)"]
    return [] if e.verdict == "pass" else [f"{p.name} FAILED parity at export (see parity.md)"]


def summary(m: Manifest, folder: Path) -> list[dict[str, Any]]:
    """Per file: the entry and its state now (ok / missing / changed)."""
    rows = []
    for e in m.files:
        issue = problems(folder, [e])
        state = "ok" if not issue else ("missing" if issue[0].endswith("missing") else "changed")
        rows.append({**asdict(e), "state": state})
    return rows


def export_files(model) -> list[Path]:
    """The model file and the files it is read with: the contract and labels beside it, and when it is in a tledge
    export (or a bundle's model/) every file its manifest lists and the manifest itself. `--csv exp/model_fp32.onnx`
    beside `run exp/model_int8.tflite` replaced another model, `--csv model/golden.npz` in a bundle its golden outputs,
    and `parity --junit exp/manifest.json` the manifest (the export was then refused). Other files of the folder (an
    earlier run's CSV) are not inputs."""
    p = expand(str(model))
    folder = p if p.is_dir() else p.parent
    files = [] if p.is_dir() else [p, folder / CONTRACT_FILE, folder / LABELS_FILE]
    try:
        m = read(folder)
    except TledgeError:  # a damaged manifest: loading says so
        m = None
    if m is not None:
        files += [folder / MANIFEST] + [folder / e.file for e in m.files]
    elif p.is_dir():  # a SavedModel: anything in it (`--junit sm/saved_model.pb` replaced the model)
        files.append(p)
    return files
