"""Disks, limits and broken installs (helpers 131 and 133): a full $TMPDIR during a conversion was recorded as the
model's conversion failure and the export committed without that file (its earlier good one deleted); `ulimit -f`
crashed HDF5 writes; errors without a path said nothing of where; a vanished current folder was "no such file or
folder"; a package that is installed but does not import was "not installed"; tflite-runtime under numpy 2 printed
numpy's banner and a traceback."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import TINY

from tledge.errors import MissingDependency, TledgeError

REPO = Path(__file__).resolve().parents[1]


def test_a_warning_on_a_full_temporary_folder_is_lost_not_the_conversion():
    from tledge.log import Console, _showwarning

    class Full:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        flush = write

    show = _showwarning(Console("export"), Full())
    show("converter's deprecation", DeprecationWarning, "x.py", 1)  # raised OSError into the converter


def test_disk_errors_are_told_from_the_models():
    from tledge.io import raise_if_disk

    full = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise full
        except OSError as exc:
            raise RuntimeError("converter failed") from exc
    except RuntimeError as wrapped:
        with pytest.raises(OSError) as got:
            raise_if_disk(wrapped)
    assert got.value is full
    raise_if_disk(RuntimeError("an op the converter cannot take"))  # the model's: left to the caller
    raise_if_disk(OSError(errno.ENOENT, "no such file"))


@pytest.mark.filterwarnings("ignore")
def test_export_on_a_full_disk_keeps_the_earlier_export(tiny_model, shapes_dataset, tmp_path, monkeypatch):
    """The int8 TFLite conversion hit ENOSPC in $TMPDIR: the export was committed without model_int8.tflite."""
    from tledge.export.pipeline import ExportConfig, export
    from tledge.quant import selective

    cfg = ExportConfig(out=tmp_path / "e", int8=True, formats=("tflite",), repair=False,
                       calib=str(shapes_dataset / "train"), val=str(shapes_dataset / "val"))
    export(tiny_model["keras"], cfg)
    before = {p.name: p.read_bytes() for p in (tmp_path / "e").iterdir() if p.is_file()}
    assert "model_int8.tflite" in before

    def full(*a, **k):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise ValueError("the converter's own wrapping") from exc

    monkeypatch.setattr(selective, "quantize_tflite", full)
    with pytest.raises(OSError, match="No space left"):
        export(tiny_model["keras"], cfg)
    assert {p.name: p.read_bytes() for p in (tmp_path / "e").iterdir() if p.is_file()} == before


def test_hdf5_writes_never_start_past_ulimit_f(tmp_path):
    import resource

    from tledge.io import check_space

    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (500 * 1024, old[1]))
    try:
        with pytest.raises(TledgeError, match=r"at most 0.5 MB \(ulimit -f\)"):
            check_space(tmp_path, 2_000_000, "the model")
        check_space(tmp_path, 100_000, "the model")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)


def test_errors_without_a_path_say_where_they_can(tmp_path):
    from tledge.cli.oserrors import os_error_message

    said = os_error_message(OSError(errno.ENOSPC, "No space left on device"))
    assert said.startswith("no space left on the device (a scratch file? the temporary folder is ")
    gone = tmp_path / "gone"
    gone.mkdir()
    p = subprocess.run([sys.executable, "-m", "tledge", "bundle", str(TINY), "--device", "rpi4"], cwd=gone,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120,
                       preexec_fn=lambda: os.rmdir(gone))
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "tledge bundle: error: no such file or folder (the current folder no longer exists: cd to an existing "
        "folder, or give absolute paths)"], p.stderr


def test_installed_but_broken_is_not_called_missing(tmp_path, monkeypatch, capsys):
    """OpenCV built for numpy 1 under numpy 2: "cv2 is not installed: pip install opencv-python-headless" (which
    changed nothing), after numpy's 30-line banner."""
    from tledge._deps import require

    pkg = tmp_path / "cv2"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('import sys\nsys.stderr.write("A module that was compiled using NumPy 1.x '
                                     'cannot be run in NumPy 2 ...\\n")\n'
                                     'raise ImportError("numpy.core.multiarray failed to import")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "cv2", raising=False)
    with pytest.raises(MissingDependency) as got:
        require("cv2")
    assert "cv2 is installed but does not import: it was built for numpy 1.x and numpy " in str(got.value)
    assert "pip install 'numpy<2'" in str(got.value) and "not installed" not in str(got.value)
    assert capsys.readouterr().err == ""  # numpy's banner: not on the terminal before the one line
    with pytest.raises(MissingDependency, match="nosuchpackage is not installed"):
        require("nosuchpackage")


def test_imports_leave_sys_stderr_alone(tmp_path, monkeypatch):
    """require() swapped sys.stderr for a StringIO around every import: TensorFlow's logging handler, made during
    its import, kept the StringIO for good (its warnings vanished)."""
    from tledge._deps import require

    (tmp_path / "tledge_probe_handler.py").write_text("import logging\nHANDLER = logging.StreamHandler()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert require("tledge_probe_handler").HANDLER.stream is sys.stderr


def test_tflite_runtime_under_numpy_2_is_one_line(monkeypatch):
    import importlib.metadata

    from tledge.runtime import litert

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda n: "2.14.0" if n == "tflite-runtime" else real(n))
    monkeypatch.setattr(litert.np, "__version__", "2.1.0")
    with pytest.raises(MissingDependency, match=r"tflite-runtime 2.14.0 was built for numpy<2 and numpy 2.1.0"):
        litert.numpy1_build()
    monkeypatch.setattr(litert.np, "__version__", "1.26.4")
    litert.numpy1_build()


def test_staging_paths_are_named_as_the_output_and_failed_exports_leave_no_folders(tmp_path):
    from tledge.export.unit import ExportFolder
    from tledge.io import name_outside

    exc = OSError(errno.EFBIG, "File too large", str(tmp_path / "run" / ".tledge-final-9" / "model.keras"))
    name_outside(exc, tmp_path / "run" / ".tledge-final-9", tmp_path / "run")
    assert exc.filename == str(tmp_path / "run" / "model.keras")
    with pytest.raises(RuntimeError):
        with ExportFolder(tmp_path / "new" / "deep" / "out"):
            raise RuntimeError("no space")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_nearly_full_temporary_folder_keeps_the_libraries_off_the_log(tmp_path, monkeypatch, capsys):
    """fd 2 into a log on a full $TMPDIR: LLVM saw its failed write and exited 1 after "parity: PASSED"."""
    from tledge import logfiles
    from tledge.cli import main

    monkeypatch.setattr(logfiles, "room_for_libraries", lambda folder: False)
    assert main(["info", str(TINY / "model_fp32.tflite")]) == 0
    assert "has under 16 MB free: the libraries' own messages are not logged" in capsys.readouterr().err
