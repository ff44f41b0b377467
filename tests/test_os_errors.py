"""Output paths the OS refuses (issue 10, part 4): read-only file systems, a full disk, files where
folders are expected, errors half way through an export. Exit 2, one line naming the path, nothing
half-written; exit 1 stays for parity failures and lost live sources only.

Read-only and full file systems are real: a small tmpfs mounted for the test when this process may
mount (root in a container); otherwise a folder without write permission stands for the read-only
case and the full-disk case is skipped.
"""
from __future__ import annotations

import re

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_bad_inputs import bundle, h5, images, snapshot, tfl

from tledge.cli import main


def _mount_tmpfs(where: Path, options: str) -> bool:
    where.mkdir()
    if os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tledge-test", str(where)], capture_output=True)
    return r.returncode == 0


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder nothing can be created in: a read-only tmpfs, or (not root) a 0555 folder."""
    ro = tmp_path / "ro"
    if _mount_tmpfs(ro, "ro,size=64k"):
        yield ro, "read-only file system"
        _umount(ro)
        return
    if os.geteuid() == 0:
        pytest.skip("root without mount permission: cannot build a read-only folder")
    ro.chmod(0o555)
    yield ro, "permission denied"
    ro.chmod(0o755)


@pytest.fixture
def full_dir(tmp_path):
    """A tmpfs of 256 KiB filled to the last byte."""
    full = tmp_path / "full"
    if not _mount_tmpfs(full, "size=256k"):
        pytest.skip("cannot mount a small tmpfs here (needs root): no real full disk to test with")
    try:
        with open(full / "filler", "wb") as fh:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    yield full
    _umount(full)


def _argv(kind: str, t: Path, target: Path) -> list[str]:
    return {
        "export --out": lambda: ["export", h5(t), "--val", images(t), "--out", str(target / "out")],
        "run --csv": lambda: ["run", tfl(t), "--source", images(t), "--csv", str(target / "r.csv")],
        "run --save folder": lambda: ["run", tfl(t), "--source", images(t), "--save", str(target / "frames")],
        "run --save video": lambda: ["run", tfl(t), "--source", images(t), "--save", str(target / "v.mp4")],
        "parity --junit": lambda: ["parity", h5(t), tfl(t), "--images", images(t), "--junit", str(target / "j.xml")],
        "bundle --out": lambda: bundle(t, "--device", "rpi4", "--out", str(target / "b.tar.gz")),
        "train --out": lambda: ["train", images(t), "--out", str(target / "run")],
        "demo --out": lambda: ["demo", "--out", str(target / "demo")],
    }[kind]()


KINDS = ["export --out", "run --csv", "run --save folder", "run --save video", "parity --junit", "bundle --out",
         "train --out", "demo --out"]


def _one_error_line(capsys, verb: str) -> str:
    cap = capsys.readouterr()
    lines = [ln for ln in cap.err.splitlines() if ln.strip() and not re.match(r"\[\d+/\d+\] ", ln)]  # not progress
    assert "Traceback" not in cap.err and len(lines) == 1, cap.err
    assert lines[0].startswith(f"tledge {verb}: error: ")
    return lines[0]


@pytest.mark.parametrize("kind", KINDS)
def test_read_only_output_location(kind, readonly_dir, tmp_path, capsys):
    ro, reason = readonly_dir
    argv = _argv(kind, tmp_path, ro)
    before = snapshot(tmp_path)
    assert main(argv) == 2
    line = _one_error_line(capsys, argv[0])
    assert reason in line and str(ro) in line, line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", KINDS)
def test_full_disk_is_refused_before_loading(kind, full_dir, tmp_path, capsys):
    argv = _argv(kind, tmp_path, full_dir)
    before = snapshot(tmp_path)
    assert main(argv) == 2
    line = _one_error_line(capsys, argv[0])
    assert "no space left on the device" in line and str(full_dir) in line, line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["export --out", "run --csv", "parity --junit", "bundle --out"])
def test_output_under_proc_is_refused(kind, tmp_path, capsys):
    argv = _argv(kind, tmp_path, Path("/proc/tledge-test"))
    assert main(argv) == 2
    assert "is under /proc" in _one_error_line(capsys, argv[0])


def test_an_os_error_escaping_a_verb_is_one_line_exit_2(monkeypatch, capsys):
    """Whatever OSError gets past the checks (a disk failing later) is mapped, never a traceback."""
    import tledge.cli.info as info

    def boom(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/model_fp32.tflite")

    monkeypatch.setattr(info, "run", boom)
    assert main(["info", "whatever.tflite"]) == 2
    line = _one_error_line(capsys, "info")
    assert line == "tledge info: error: /data/out/model_fp32.tflite: no space left on the device"


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EISDIR])
def test_disk_failing_half_way_through_an_export_leaves_no_half_folder(error, tiny_model, shapes_dataset, tmp_path,
                                                                     monkeypatch, capsys):
    """The files are converted, then writing parity.md fails as on a disk that just filled up."""
    pytest.importorskip("tensorflow")
    from tledge.export.parity import ParityReport

    def fail(self, folder):
        (Path(folder) / "parity.json").write_text("{")  # a first byte made it to disk
        raise OSError(error, os.strerror(error), str(Path(folder) / "parity.md"))

    monkeypatch.setattr(ParityReport, "write", fail)
    out = tmp_path / "exp"
    (tmp_path / "labels.txt").write_text("circle\nhstripes\nvstripes\n")
    before = snapshot(tmp_path)
    rc = main(["export", str(tiny_model["keras"]), "--formats", "tflite", "--val", str(shapes_dataset / "val"),
               "--labels", str(tmp_path / "labels.txt"), "--out", str(out)])
    assert rc == 2
    line = _one_error_line(capsys, "export")
    reason = {errno.ENOSPC: "no space left on the device", errno.EROFS: "read-only file system",
              errno.EACCES: "permission denied", errno.EISDIR: "is a folder, not a file"}[error]
    assert line == f"tledge export: error: {out / 'parity.md'}: {reason}"
    assert not out.exists()
    assert snapshot(tmp_path) == before  # no staging folder left either


def test_export_into_an_existing_folder_keeps_other_files_and_replaces_its_own(tiny_model, shapes_dataset, tmp_path):
    pytest.importorskip("tensorflow")
    out = tmp_path / "exp"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "model_fp32.tflite").write_bytes(b"stale")
    argv = ["export", str(tiny_model["keras"]), "--formats", "tflite", "--val", str(shapes_dataset / "val"),
            "--out", str(out)]
    assert main(argv) == 2  # a file of an export's name but no manifest.json: not ours to replace (tests/test_export_swap.py)
    assert (out / "model_fp32.tflite").read_bytes() == b"stale"
    (out / "model_fp32.tflite").unlink()
    rc = main(argv)
    assert rc == 0
    (out / "model_fp32.tflite").write_bytes(b"stale")  # beside a manifest: an earlier export's, replaced
    assert main(argv) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "model_fp32.tflite").read_bytes()[4:8] == b"TFL3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # the staging folder is gone


def test_disk_filling_up_during_training_is_one_line_exit_2(tmp_path):
    """A disk with room for the data but not for a checkpoint: exit 2 with one line and no traceback. Keras' HDF5
    writer hitting ENOSPC left a half-closed file behind: h5py tracebacks when collected, a segfault (exit 139) at
    exit."""
    import cv2
    import numpy as np

    small = tmp_path / "small"
    if not _mount_tmpfs(small, "size=2m"):
        pytest.skip("cannot mount a small tmpfs here (needs root): no real full disk to test with")
    try:
        rng = np.random.default_rng(0)
        for c, shade in (("red", (0, 0, 100)), ("blue", (100, 0, 0))):
            (tmp_path / "data" / c).mkdir(parents=True)
            for i in range(6):
                img = (rng.integers(0, 80, (40, 40, 3)) + np.array(shade)).astype(np.uint8)
                cv2.imwrite(str(tmp_path / "data" / c / f"{i}.png"), img)
        r = subprocess.run([sys.executable, "-m", "tledge", "train", str(tmp_path / "data"), "--weights", "none",
                            "--size", "32", "--epochs", "1", "--fine-tune-epochs", "1", "--out", str(small / "run")],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, r.stderr[-3000:]
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("tledge train: error: ") and "no space left on the device" in last, r.stderr[-2000:]
        assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr[-3000:]
        assert not [f for f in small.rglob(".*") if f.is_file()], "temporary files left behind"
    finally:
        _umount(small)


def test_a_disk_filling_up_under_a_saved_video_stops_the_run(tmp_path):
    """OpenCV's video writer fails silently: a disk that filled up during `run --save v.mp4` was said only when the
    input ended (a camera's run went on for ever with the disk full). The run stops soon after, exit 2 and one
    line; the CSV so far is kept and no partial video is left."""
    import cv2
    import numpy as np
    from tiny import TINY

    small = tmp_path / "small"
    if not _mount_tmpfs(small, "size=1m"):
        pytest.skip("cannot mount a small tmpfs here (needs root): no real full disk to test with")
    try:
        frames, src = 400, tmp_path / "noise.avi"  # noise: frames that do not compress, the disk fills quickly
        w = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (160, 120))
        rng = np.random.default_rng(0)
        for _ in range(frames):
            w.write(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
        w.release()
        r = subprocess.run([sys.executable, "-m", "tledge", "run", str(TINY / "model_int8.tflite"), "--source", str(src),
                            "--json", "--csv", str(tmp_path / "r.csv"), "--save", str(small / "v.mp4")],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
        printed = len(r.stdout.splitlines())
        assert 0 < printed < frames, (printed, r.stderr[-2000:])  # stopped, not at the input's end
        assert r.returncode == 2, r.stderr[-3000:]
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith(f"tledge run: error: cannot write video {small / 'v.mp4'}: the disk is full"), last
        assert "Traceback" not in r.stderr
        assert len((tmp_path / "r.csv").read_text().splitlines()) - 1 in (printed, printed + 1)
        assert [f.name for f in small.iterdir()] == [], "a partial video left behind"
    finally:
        _umount(small)



def test_a_video_that_fits_is_not_called_a_full_disk_on_a_nearly_full_one(tmp_path):
    """FFmpeg's writer grows the file in 256 KiB steps, so a video of small or still frames stands still for many
    growth checks: with 1 MiB free taken as 'full', a 470 KB video on a disk with 1.2 MiB free stopped the run (exit
    2) and was removed. It is written whole."""
    import cv2
    import numpy as np
    from tiny import TINY

    small = tmp_path / "small"
    if not _mount_tmpfs(small, "size=3m"):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        (small / "filler").write_bytes(bytes(3072 * 1024 - 1024 * 1024 - 200 * 1024))  # about 1.2 MiB left free
        src, rng = tmp_path / "still.avi", np.random.default_rng(0)
        w = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (160, 160))
        for i in range(300):  # some noise, then a still grey scene that compresses to almost nothing
            w.write(rng.integers(0, 256, (160, 160, 3), dtype=np.uint8) if i < 60 else np.full((160, 160, 3), 128,
                                                                                             np.uint8))
        w.release()
        r = subprocess.run([sys.executable, "-m", "tledge", "run", str(TINY / "model_int8.tflite"), "--source", str(src),
                            "-q", "--save", str(small / "v.mp4")], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        assert cv2.VideoCapture(str(small / "v.mp4")).get(cv2.CAP_PROP_FRAME_COUNT) == 300
    finally:
        _umount(small)

def test_symbolic_links_as_outputs(tmp_path, capsys):
    """A link given as --csv is replaced, never written through (it may point at an input: a model); a dangling
    link given as a folder said "already exists"."""
    from tiny import TINY, images_of, CLASSES

    model, img = str(TINY / "model_int8.tflite"), str(images_of(CLASSES[0])[0])
    (tmp_path / "target.bin").write_bytes(b"keep me")
    (tmp_path / "link.csv").symlink_to(tmp_path / "target.bin")
    assert main(["run", model, "--source", img, "--csv", str(tmp_path / "link.csv"), "-q"]) == 0
    assert (tmp_path / "target.bin").read_bytes() == b"keep me" and not (tmp_path / "link.csv").is_symlink()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert main(["run", model, "--source", img, "--save", str(tmp_path / "dangling"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"a symbolic link to {tmp_path / 'nowhere'}, which does not exist") and \
        len(err.splitlines()) == 1, err


def test_an_output_name_near_the_file_systems_limit_is_written(tmp_path):
    """A legal 255-byte name: the temporary name beside it (".NAME.XXXXXXXX.tmp") was over the limit, and every
    atomic writer refused it ("file name too long")."""
    from tiny import TINY, images_of, CLASSES

    csv = tmp_path / ("b" * 251 + ".csv")
    assert main(["run", str(TINY / "model_int8.tflite"), "--source", str(images_of(CLASSES[0])[0]), "--csv", str(csv),
                 "-q"]) == 0
    assert csv.read_text().count("\n") == 2 and [p.name for p in tmp_path.iterdir()] == [csv.name]


def test_a_write_that_fails_names_its_file(tmp_path, monkeypatch, capsys):
    """A full disk fails the write, and a write's OSError names no file: "error: no space left on the device"."""
    from tiny import TINY, images_of, CLASSES

    from tledge.io import atomic_write_bytes

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(OSError) as exc:
        atomic_write_bytes(tmp_path / "out.bin", b"x")
    assert exc.value.errno == errno.ENOSPC and exc.value.filename == str(tmp_path / "out.bin")
    monkeypatch.undo()
    import tledge.runtime.outputs as outputs

    monkeypatch.setattr(outputs.CsvSink, "_row", lambda self, r: full(None, b""))
    csv = tmp_path / "r.csv"
    assert main(["run", str(TINY / "model_int8.tflite"), "--source", str(images_of(CLASSES[0])[0]), "--csv",
                 str(csv), "-q"]) == 2
    assert _one_error_line(capsys, "run") == f"tledge run: error: {csv}: no space left on the device"


def test_a_replaced_file_keeps_its_permissions(tmp_path):
    """`chmod 600 results.csv` then `tledge run --csv results.csv`: the CSV came back 0644 (readable by others); a new
    file still gets the umask's permissions."""
    from tledge.io import atomic_write_text

    private = tmp_path / "r.csv"
    private.write_text("old")
    private.chmod(0o600)
    atomic_write_text(private, "new")
    assert private.read_text() == "new" and (private.stat().st_mode & 0o777) == 0o600
    umask = os.umask(0o022)
    os.umask(umask)
    atomic_write_text(tmp_path / "n.csv", "x")
    assert (tmp_path / "n.csv").stat().st_mode & 0o777 == 0o666 & ~umask
