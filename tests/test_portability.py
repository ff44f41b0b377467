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
