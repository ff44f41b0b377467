"""The images an int8 export calibrates and checks on, as users give them: what parity.md says was used, the
calibration images also being the parity images, unreadable files under --calib-limit, class folders that name
no label, too few images for a rung."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from tledge.contract import Contract
from tledge.errors import TledgeWarning
from tledge.export import imagesets
from tledge.export.pipeline import ExportConfig

CONTRACT = Contract(height=8, width=8, labels=("ants", "bees"))


def _folder(root: Path, classes=("ants", "bees"), n: int = 3, bad: int = 0) -> Path:
    rng = np.random.default_rng(len(str(root)))
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cv2.imwrite(str(root / c / f"{i}.png"), rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
        for i in range(bad):
            (root / c / f"bad{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return root


def test_a_limit_counts_readable_images_and_unreadable_ones_are_replaced(tmp_path, capsys):
    """--calib-limit 10 said "10 of its 34 images used" and calibrated on 8: unreadable files were sampled and not
    replaced; the warning named 3 of 4 skipped files without saying there were more."""
    d = _folder(tmp_path / "d", n=6, bad=3)
    with pytest.warns(TledgeWarning, match=r"skipped \d+ unreadable image\(s\) in .*\(and \d+ more\)"):
        x, y, files = imagesets.load_images(d, CONTRACT, 10, CONTRACT.labels)
    assert len(x) == len(files) == 10 and all(f.suffix == ".png" for f in files)
    assert list(y) == sorted(y)  # in the folder's order, classes together
    assert set(y) == {0, 1}
    with pytest.warns(TledgeWarning, match="skipped 6 unreadable"):
        x2, _, files2 = imagesets.load_images(d, CONTRACT, 100)  # no limit reached: every readable one
    assert len(files2) == 12


def test_parity_on_the_calibration_images_is_said_and_what_calibrated_is_recorded(tmp_path):
    """--calib DIR --val DIR (the same folder), or --calib without --val: the repair loop fitted the int8 file to
    the images parity then checked it on (0.980 there, 0.971 on other photos), exit 0, and nothing said; parity.md
    never said what the int8 files were calibrated on."""
    from tledge.export.pipeline import calibration_notes

    d = _folder(tmp_path / "d")
    files = sorted(d.rglob("*.png"))
    other = sorted(_folder(tmp_path / "val").rglob("*.png"))
    cfg = ExportConfig(int8=True, calib=str(d), val=str(d))
    notes = calibration_notes(cfg, np.zeros((6, 8, 8, 3)), files, files)
    assert notes[1].startswith("6 of the 6 parity images are calibration images")
    assert notes[0] == f"int8 calibrated on 6 image(s) of {d}" and "optimistic" in notes[1]
    linked = tmp_path / "link"  # the same images through a symbolic link are the same images
    linked.symlink_to(d)
    assert "calibration images" in calibration_notes(cfg, np.zeros((6, 8, 8, 3)), files,
                                                     sorted(linked.rglob("*.png")))[1]
    assert calibration_notes(ExportConfig(int8=True, calib=str(d), val=str(tmp_path / "val")),
                             np.zeros((6, 8, 8, 3)), files, other) == [f"int8 calibrated on 6 image(s) of {d}"]
    assert calibration_notes(ExportConfig(int8=True, calib="random"), np.zeros((32, 8, 8, 3)), None, other) == [
        "int8 calibrated on random noise (--calib random)"]
    assert calibration_notes(ExportConfig(), None, None, other) == []


def test_calibration_class_folders_need_not_name_labels(tmp_path):
    """--calib of day/ and night/ (no labels needed to calibrate) was refused: 'class folder(s) day, night match
    none of the model's 2 labels'."""
    from tledge.export.pipeline import _calib_images

    d = _folder(tmp_path / "daynight", classes=("day", "night"))
    cfg = ExportConfig(int8=True, calib=str(d), val=str(tmp_path / "val"))
    with pytest.warns(TledgeWarning, match="only 6 image"):
        calib, files = _calib_images(cfg, CONTRACT, [SimpleNamespace(precision="int8")])
    assert calib.shape == (6, 8, 8, 3) and calib.dtype == np.float32 and len(files) == 6


def test_labels_are_credited_to_the_folder_they_came_from(tmp_path):
    """A flat --val (no class folders) and class folders in --calib: parity.md said the labels came from --val's."""
    from tledge.export.contracting import labels_folder

    calib = _folder(tmp_path / "calib")
    flat = tmp_path / "flat"
    flat.mkdir()
    cv2.imwrite(str(flat / "a.png"), np.zeros((8, 8, 3), np.uint8))
    lm = SimpleNamespace(num_outputs=2)
    assert labels_folder(ExportConfig(calib=str(calib), val=str(flat)), lm) == (str(calib), ("ants", "bees"))
    assert labels_folder(ExportConfig(calib=str(flat), val=str(calib)), lm) == (str(calib), ("ants", "bees"))
    assert labels_folder(ExportConfig(calib=str(flat), val=str(flat)), lm) == (None, ())


def test_sensitivity_rungs_need_held_out_calibration_images():
    """With 1 or 2 calibration images the sensitivity rungs held out none and raised ("need at least one array to
    concatenate"), reported as a tledge bug."""
    from tledge.export import fidelity

    mixed = [r for r in fidelity.LADDER if r.mixed]
    plain = SimpleNamespace(format="onnx", precision="int8", file="model_int8.onnx")
    for n, applies in ((2, False), (fidelity.MIN_SENSITIVITY_IMAGES, True)):
        ctx = SimpleNamespace(calib=np.zeros((n, 8, 8, 3)), int8_only=False)
        assert [fidelity._applies(r, plain, ctx, object()) for r in mixed if not r.keras_free] == \
            [applies] * len([r for r in mixed if not r.keras_free])


def test_an_unreadable_sampled_image_is_replaced_from_its_own_class(tmp_path):
    """Four classes of five images, one unreadable in the last class, limit 4: class a's second image filled class
    d's place (the replacement came from the start of the folder)."""
    d = _folder(tmp_path / "d", classes=("a", "b", "c", "d"), n=5)
    (d / "d" / "4.png").write_bytes(b"not a png at all")
    (d / "d" / "3.png").write_bytes(b"not a png either")
    contract = Contract(height=8, width=8, labels=("a", "b", "c", "d"))
    with pytest.warns(TledgeWarning, match="skipped"):
        x, y, files = imagesets.load_images(d, contract, 4, contract.labels)
    assert sorted(y.tolist()) == [0, 1, 2, 3] and len(x) == 4, [f.relative_to(d).as_posix() for f in files]
