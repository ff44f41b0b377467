"""The export's swap under the interruptions a user causes (Ctrl-C, SIGTERM from `timeout` or systemd) and the
failures a disk causes, and export into a folder that was never an export. (The kill -9 case, where nothing can be
restored: tests/test_manifest.py.)"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from test_manifest import _placeholder_export, _stage_new, _state

from tledge import artifacts
from tledge.cli import main
from tledge.errors import TledgeError
from tledge.export import unit


def _snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and unit.STAGING_PREFIX not in str(p)}


def test_a_failed_rename_puts_the_old_export_back(tmp_path, monkeypatch):
    """An OSError at any rename of the swap (a full disk, a permission): the previous export, whole, as it was."""
    k = 0
    while True:
        out = tmp_path / f"out{k}"
        _placeholder_export(out, "a")
        (out / "rejected").mkdir()
        (out / "rejected" / "notes.txt").write_text("mine")
        before = _snapshot(out)
        new = _stage_new(out)
        calls, real = [0], os.replace

        def failing(*a, **kw):
            calls[0] += 1
            if calls[0] == k + 1:
                raise OSError(28, "No space left on device")
            return real(*a, **kw)

        monkeypatch.setattr(unit.os, "replace", failing)
        try:
            unit.swap_in(out / (unit.STAGING_PREFIX + "1"), out, new)
        except OSError:
            monkeypatch.undo()
            assert _state(out) == "old" and _snapshot(out) == before, k
            k += 1
            continue
        monkeypatch.undo()
        break
    assert k > 8 and _state(out) == "new" and (out / "rejected" / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
@pytest.mark.parametrize("sig, exc", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, SystemExit)])
def test_ctrl_c_or_sigterm_during_the_swap_waits_for_it(sig, exc, tmp_path, monkeypatch):
    """A signal between two renames left the old manifest's files gone and the new ones not in: the README says the
    export writes atomically. Held back, it arrives once the new export is whole."""
    def stop(*_):
        raise SystemExit(143)

    # as tledge's CLI has them (SIGTERM) and a terminal (SIGINT: CI starts background jobs with it ignored)
    previous = signal.signal(sig, stop if sig == signal.SIGTERM else signal.default_int_handler)
    out = tmp_path / "out"
    _placeholder_export(out, "a")
    new = _stage_new(out)
    calls, real = [0], os.replace

    def interrupted(*a, **kw):
        calls[0] += 1
        if calls[0] == 3:
            os.kill(os.getpid(), sig)
        return real(*a, **kw)

    monkeypatch.setattr(unit.os, "replace", interrupted)
    said = []
    monkeypatch.setattr(unit.log, "note", said.append)
    try:
        with pytest.raises(exc):
            unit.swap_in(out / (unit.STAGING_PREFIX + "1"), out, new)
    finally:
        signal.signal(sig, previous)
    assert calls[0] > 3 and _state(out) == "new"
    assert said == [f"the new export was in place in {out} when the signal came"]  # exit 143 said nothing of it


def test_export_into_someone_elses_folder_is_refused(tiny_model, shapes_dataset, tmp_path, capsys):
    """A folder with a model_fp32.tflite and rejected/my_notes.txt of the user's, no manifest.json: export deleted
    both (its swap removed every name of its table and rejected/)."""
    out = tmp_path / "mine"
    (out / "rejected").mkdir(parents=True)
    (out / "rejected" / "my_notes.txt").write_text("keep")
    (out / "model_fp32.tflite").write_text("mine")
    rc = main(["export", str(tiny_model["keras"]), "--out", str(out), "--formats", "onnx",
               "--val", str(shapes_dataset / "val")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "not a tledge export" in err, err
    assert (out / "model_fp32.tflite").read_text() == "mine" and (out / "rejected" / "my_notes.txt").exists()
    with pytest.raises(TledgeError, match="not a tledge export"):
        unit.ExportFolder(out).__enter__()
    (out / (unit.STAGING_PREFIX + "99")).mkdir()  # a killed export's staging folder: its leftovers may be replaced
    assert unit.not_an_export(out) is None
    assert unit.not_an_export(tmp_path / "new") is None and unit.not_an_export(tmp_path) is None
    _placeholder_export(tmp_path / "earlier", "a")  # an earlier export (its manifest): exported into again
    assert unit.not_an_export(tmp_path / "earlier") is None
    assert artifacts.read(tmp_path / "earlier") is not None


def test_folders_tledge_wrote_are_exported_into(tmp_path):
    """A folder whose killed export's staging folder was deleted by hand (its lock and export.log remain), and a
    `tledge train` run folder (its labels.txt, tledge.json and metrics.json): tledge's own, not refused."""
    for signs in ((unit.LOCK, "export.log"), ("metrics.json",)):
        out = tmp_path / signs[0].strip(".")
        out.mkdir()
        for name in ("labels.txt", "tledge.json", "model_fp32.onnx"):
            (out / name).write_text("x")
        assert unit.not_an_export(out) is not None
        for s in signs:
            (out / s).write_text("")
        assert unit.not_an_export(out) is None, signs
