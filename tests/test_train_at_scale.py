"""tledge train with many classes: metrics.json's confusion grows with the images, not the classes squared; every
class too thin to split is named at once; long class lists in one line are cut; folder matching and the copy
check give the same answers as before (they were quadratic). No training here."""
from __future__ import annotations

import shutil
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

from tledge.errors import DataError, TledgeWarning
from tledge.train import data as td
from tledge.train.report import DENSE_CONFUSION_MAX, PLOT_CONFUSION_MAX, confusion, confusion_fields, confusion_of


def _classes(root: Path, spec: dict[str, int], size: int = 8) -> Path:
    import cv2

    for name, n in spec.items():
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cv2.imwrite(str(root / name / f"{i}.png"), rng.integers(0, 255, (size, size, 3), np.uint8))
    return root


def test_metrics_hold_the_nonzero_cells_above_the_dense_limit():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5000, 300)
    pred = np.where(rng.random(300) < 0.7, y, rng.integers(0, 5000, 300))
    big = confusion_fields(y, pred, 5000)
    assert big["confusion_matrix"] is None and len(big["confusion_cells"]) <= 300
    assert sum(c for _, _, c in big["confusion_cells"]) == 300
    assert confusion_of(big, 5000) is None  # no picture (nor an n x n array) above the plot limit
    n = PLOT_CONFUSION_MAX
    mid = confusion_fields(y % n, pred % n, n)
    np.testing.assert_array_equal(confusion_of(mid, n), confusion(y % n, pred % n, n))
    small = confusion_fields(y % 7, pred % 7, 7)
    assert 7 <= DENSE_CONFUSION_MAX and small["confusion_matrix"] == confusion(y % 7, pred % 7, 7).tolist()


def test_every_class_too_thin_to_split_is_named_at_once(tmp_path):
    root = _classes(tmp_path / "d", {"a": 3, "b": 1, "c": 1, "d": 4})
    with pytest.raises(DataError, match=r"2 class\(es\) with fewer than 2 images: 'b' \(1\), 'c' \(1\)"):
        td.plan(root)


def test_long_class_lists_in_one_line_are_cut(tmp_path):
    names = {f"class_{i:03d}": 1 for i in range(30)}
    train = _classes(tmp_path / "train", {k: 2 for k in names})
    val = _classes(tmp_path / "val", {"class_000": 1, "class_001": 1})
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", TledgeWarning)
        td.plan(train, val)
    missing = [str(w.message) for w in seen if "no validation images" in str(w.message)]
    assert missing and "28 class(es)" in missing[0] and "(and 23 more)" in missing[0], missing
    assert "class_029" not in missing[0]
    _classes(val, {"stranger": 1})
    with pytest.raises(DataError, match=r"training data lacks: stranger \(training classes: .*\(and 25 more\)\)"):
        td.plan(train, val)


def test_folders_that_differ_in_case_merge_into_their_class(tmp_path):
    train = _classes(tmp_path / "train", {"cat": 2, "dog": 2, "owl": 2})
    val = _classes(tmp_path / "val", {"CAT": 2, "Dog": 1, "dog": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TledgeWarning)
        p = td.plan(train, val)
    assert p.val.counts() == [2, 2, 0] and len(p.val.files) == 4


def test_copies_of_training_images_are_found_among_files_of_one_size(tmp_path):
    train = _classes(tmp_path / "train", {"a": 4, "b": 4})  # every file the same size (8 x 8 PNG of noise)
    val = tmp_path / "val"
    for c in ("a", "b"):
        (val / c).mkdir(parents=True)
    shutil.copy(train / "b" / "2.png", val / "a" / "copy.png")
    _classes(tmp_path / "other", {"x": 1, "y": 1})  # new pictures of the same size
    for c, o in (("a", "x"), ("b", "y")):
        shutil.copy(tmp_path / "other" / o / "0.png", val / c / "new.png")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", TledgeWarning)
        td.plan(train, val)
    said = [str(w.message) for w in seen if "copies of training images" in str(w.message)]
    assert len(said) == 1 and said[0].startswith("1 of the 3 validation images") and "b/2.png" in said[0], said
