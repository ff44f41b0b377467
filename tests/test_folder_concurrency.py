"""Two commands on one folder, and a CI job's warning filters (helper 132): `tledge train` and `tledge export` into
one folder each took only its own lock, both exited 0 and the export's manifest vouched for a tledge.json the train
had replaced; readers during an export said it "was killed"; under PYTHONWARNINGS=error a finished training raised its
own note before writing anything and TensorFlow's UserWarning was "int8 conversion failed"."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from tiny import TINY

from tledge.errors import TledgeError, TledgeWarning, warnings_not_errors
from tledge.export.unit import ExportFolder
from tledge.folderlock import FolderLock

REPO = Path(__file__).resolve().parents[1]


def test_an_export_and_a_train_exclude_each_other(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    train = FolderLock(out, "train").acquire()
    try:
        with pytest.raises(TledgeError, match=r"a tledge train \(pid \d+ on .*\) is writing into .*run"):
            with ExportFolder(out):
                pass
        assert not any(out.glob(".tledge-staging-*")) and not (out / ".tledge-export.lock").exists()
    finally:
        train.release()
    with ExportFolder(out):
        with pytest.raises(TledgeError, match=r"a tledge export \(pid \d+ .*\) is writing into"):
            FolderLock(out, "train").acquire().exclude("export")
        assert not (out / ".tledge-train.lock").exists()
    FolderLock(out, "train").acquire().exclude("export").release()  # nobody holds the export lock now


def test_readers_during_an_export_are_told_to_wait_not_that_it_was_killed(tmp_path):
    from tledge import trust

    out = tmp_path / "e"
    with ExportFolder(out):
        with pytest.raises(TledgeError, match=r"an export \(pid \d+ .*\) is writing into .* now: wait for it"):
            trust.require(out, "tledge run")
    (out / ".tledge-staging-999999").mkdir()  # a killed export's (its lock is free)
    with pytest.raises(TledgeError, match="was killed"):
        trust.require(out, "tledge run")


def test_error_filters_are_default_inside_and_the_callers_after():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message="left alone")
        with warnings_not_errors():
            with warnings.catch_warnings(record=True) as seen:
                warnings.warn("a note", TledgeWarning)  # raised before
            assert [str(w.message) for w in seen] == ["a note"]
            warnings.warn("left alone", UserWarning)
        with pytest.raises(TledgeWarning):
            warnings.warn("a note", TledgeWarning)


def test_a_command_under_pythonwarnings_error_warns_and_works(tmp_path):
    """A foreign file's info under PYTHONWARNINGS=error: a traceback at its inferred-contract note (exit 1)."""
    p = subprocess.run([sys.executable, "-m", "tledge", "info", str(TINY / "foreign" / "model_fp32.onnx")],
                       env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "error"}, capture_output=True,
                       text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
