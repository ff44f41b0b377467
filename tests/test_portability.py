"""Files and folders carried between machines (helper 145): a data set whose images moved away under its links, a
thresholds file written with Windows paths, a USB stick's system folders."""
from __future__ import annotations

import shutil
import warnings

import pytest

from tledge.errors import DataError, TledgeError, TledgeWarning
from tledge.images import labelled_images

from tiny import IMAGES


def _linked(tmp_path):
    """val/<class>/ of symbolic links to photos in src/<class>/, as `tledge train` leaves split/."""
    for cls, pick in (("a", IMAGES[:3]), ("b", IMAGES[3:6])):
        (tmp_path / "src" / cls).mkdir(parents=True)
        (tmp_path / "val" / cls).mkdir(parents=True)
        for f in pick:
            shutil.copy(f, tmp_path / "src" / cls / f.name)
            (tmp_path / "val" / cls / f.name).symlink_to(tmp_path / "src" / cls / f.name)
    return tmp_path / "val"


def test_a_class_whose_images_all_moved_is_an_error_not_left_out(tmp_path):
    """Its links pointed at a moved folder: the export calibrated and checked parity on the other class, exit 0."""
    val = _linked(tmp_path)
    (tmp_path / "src" / "b").rename(tmp_path / "src" / "b_moved")
    with pytest.raises(DataError, match=r"class folder\(s\) b in .*every image is a symbolic link to a missing file"):
        labelled_images(val)


def test_some_moved_images_are_a_warning_and_a_run_says_so(tmp_path):
    from tledge.runtime.sources import open_source

    val = _linked(tmp_path)
    (tmp_path / "src" / "a" / IMAGES[0].name).unlink()
    with pytest.warns(TledgeWarning, match="ignoring 1 image.* symbolic links to missing files"):
        files, y, _ = labelled_images(val)
    assert len(files) == 5 and list(y) == [0, 0, 1, 1, 1]
    said = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_source(str(val), on_event=said.append)
    assert any("1 image(s) are symbolic links to missing files" in s for s in said), said


def test_a_thresholds_key_that_is_a_path_is_refused():
    """Files are matched by name: `C:\\exp\\model_int8.tflite` never matched, and its budget was never applied."""
    from tledge.thresholds import thresholds_from_dict

    for key in ("C:\\exp\\model_int8.tflite", "exp/model_int8.tflite"):
        with pytest.raises(TledgeError, match="is a path: name the exported file alone .'model_int8.tflite'"):
            thresholds_from_dict({key: {"min_agreement": 1.0}})
    assert "model_int8.tflite" in thresholds_from_dict({"model_int8.tflite": {"min_agreement": 1.0}})


def test_a_usb_sticks_system_folders_are_not_classes(tmp_path):
    for cls in ("ants", "bees"):
        (tmp_path / cls).mkdir()
        shutil.copy(IMAGES[0], tmp_path / cls / IMAGES[0].name)
    for junk in ("System Volume Information", "$RECYCLE.BIN"):
        (tmp_path / junk).mkdir()
        (tmp_path / junk / "IndexerVolumeGuid").write_text("x")
    _, _, names = labelled_images(tmp_path)
    assert names == ("ants", "bees")


def test_two_bundles_of_one_export_are_the_same_bytes_with_source_date_epoch(tmp_path, monkeypatch):
    """Member times were now, the gzip header held the time and the temporary file's hidden name
    (`gunzip -N` made `.tiny-rpi4.tar.gz.xxxx.tmp`), and bundle.json's "created" was now."""
    import gzip
    import tarfile

    from tiny import TINY
    from tledge.devices.bundle import make_bundle

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a = make_bundle(TINY, "rpi4", tmp_path / "a" / "tiny-rpi4.tar.gz").path
    monkeypatch.setattr("time.time", lambda: 1800000000.0)  # a later build: nothing of it may show
    b = make_bundle(TINY, "rpi4", tmp_path / "b" / "tiny-rpi4.tar.gz").path
    assert a.read_bytes() == b.read_bytes()
    head = a.read_bytes()[:10]
    assert not head[3] & 0x08 and int.from_bytes(head[4:8], "little") == 1700000000  # no FNAME; MTIME the epoch
    with tarfile.open(a) as tar:
        assert {m.mtime for m in tar.getmembers()} == {1700000000}
        assert b'"created": "2023-11-14T22:13:20Z"' in tar.extractfile("tiny-rpi4/bundle.json").read()
    assert gzip.decompress(a.read_bytes())[:9] == b"tiny-rpi4"
    for bad in ("yesterday", str(2**32)):
        monkeypatch.setenv("SOURCE_DATE_EPOCH", bad)
        with pytest.raises(TledgeError, match=f"SOURCE_DATE_EPOCH='{bad}' is not a whole number"):
            make_bundle(TINY, "rpi4", tmp_path / "c.tar.gz")
    assert not (tmp_path / "c.tar.gz").exists()


def test_a_folder_whose_text_files_got_crlf_line_endings_says_so(tmp_path):
    """git's core.autocrlf rewrote labels.txt and tledge.json: "changed since export ...; run tledge export again",
    which a board without TensorFlow cannot do."""
    from tiny import TINY
    from tledge.trust import vouched

    d = tmp_path / "e"
    shutil.copytree(TINY, d)
    for name in ("labels.txt", "tledge.json"):
        (d / name).write_bytes((d / name).read_bytes().replace(b"\n", b"\r\n"))
    with pytest.raises(TledgeError, match=r"labels.txt: changed since export only by CRLF line endings.*"
                                          r"convert them back to LF line endings"):
        vouched(d, "tledge run")
    (d / "labels.txt").write_bytes(b"other\n" + (TINY / "labels.txt").read_bytes())
    with pytest.raises(TledgeError, match=r"labels.txt: changed since export \(sha256.*run tledge export again"):
        vouched(d, "tledge run")


def test_a_bundles_top_folder_points_at_its_export_folder_and_a_manifest_bom_is_read(tmp_path):
    """`tledge info BUNDLE` said "not a tledge export folder (no manifest.json)"; a manifest an editor saved with a
    BOM was "not a valid tledge manifest ... re-export"."""
    import tarfile

    from tiny import TINY
    from tledge.artifacts import read
    from tledge.devices.bundle import make_bundle
    from tledge.trust import require

    b = make_bundle(TINY, "rpi4", tmp_path / "tiny-rpi4.tar.gz").path
    with tarfile.open(b) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    with pytest.raises(TledgeError, match=r"is a deploy bundle: pass its export folder, .*tiny-rpi4/model"):
        require(tmp_path / "x" / "tiny-rpi4", "tledge info")
    d = tmp_path / "e"
    shutil.copytree(TINY, d)
    (d / "manifest.json").write_bytes(b"\xef\xbb\xbf" + (d / "manifest.json").read_bytes())
    assert read(d).files == read(TINY).files
