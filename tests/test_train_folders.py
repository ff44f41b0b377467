"""Where `tledge train` reads and writes, as users lay out their folders: a data folder named split/ under --out,
a split/ holding the user's files, a class named train, a val/ split folder put beside the class folders. Refused
before anything is loaded (exit 2, one line), nothing deleted."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tledge.cli import main
from tledge.errors import DataError, TledgeError
from tledge.train import data as td
from tledge.train.api import check_out


def _images(folder: Path, n: int = 3) -> None:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(sum(str(folder).encode()))  # other pixels in every folder: no duplicates
    for i in range(n):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))


def test_data_folder_under_out_split_is_refused_and_kept(tmp_path, capsys):
    """`cd proj && tledge train split --out .` replaced the photos in split/ with links to themselves."""
    proj = tmp_path / "proj"
    for c in ("ants", "bees"):
        _images(proj / "split" / "train" / c)
        _images(proj / "split" / "val" / c)
    before = sorted(p for p in (proj / "split").rglob("*.png"))
    cwd = os.getcwd()
    os.chdir(proj)
    try:
        rc = main(["train", "split", "--out", ".", "--epochs", "1"])
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "replaces with links" in err, err
    assert sorted(p for p in (proj / "split").rglob("*.png")) == before
    assert not any(p.is_symlink() for p in before) and not (proj / "train.log").exists()


def test_split_folder_with_the_users_files_is_refused(tmp_path):
    data = tmp_path / "data"
    for c in ("a", "b"):
        _images(data / c)
    out = tmp_path / "run"
    (out / "split").mkdir(parents=True)
    (out / "split" / "notes.txt").write_text("mine")
    with pytest.raises(TledgeError, match=r"holds notes\.txt, a file tledge train did not write"):
        check_out(out, data, None)
    (out / "split" / "notes.txt").unlink()  # a split/ of links (what an earlier run wrote) is replaced as before
    (out / "split" / "train" / "a").mkdir(parents=True)
    (out / "split" / "train" / "a" / "0.png").symlink_to(data / "a" / "0.png")
    check_out(out, data, None)
    with pytest.raises(TledgeError, match="inside the data folder"):
        check_out(data / "run", data, None)


def test_a_class_named_train_is_a_class(tmp_path):
    """Classes train/ (bus, car, train) and other/: "training folder .../train has no class folders"."""
    for c in ("bus", "train"):
        _images(tmp_path / c)
    plan = td.plan(tmp_path, val_split=0.34)
    assert plan.classes == ("bus", "train")


def test_a_val_split_beside_the_class_folders_is_refused(tmp_path):
    """ants/, bees/ and val/{ants,bees}/: a 3-class model with labels ants, bees, val."""
    for c in ("ants", "bees"):
        _images(tmp_path / c)
        _images(tmp_path / "val" / c)
    with pytest.raises(DataError, match=r"val holds folders named like the classes beside it"):
        td.plan(tmp_path)
    _images(tmp_path / "train" / "ants")  # with train/ beside it, it is the split layout it looks like
    _images(tmp_path / "train" / "bees")
    with pytest.warns(Warning, match="ignoring"):
        plan = td.plan(tmp_path)
    assert plan.classes == ("ants", "bees") and plan.source


def test_ordinary_layouts_the_new_rules_must_not_refuse(tmp_path):
    """A loose preview.jpg in train/ made train/ a class and val/ "a split folder beside the class folders"; a class
    named test with its images in batch folders was refused; a .DS_Store in a run's split/ refused the run folder."""
    d = tmp_path / "d"
    for part in ("train", "val"):
        for c in ("ants", "bees"):
            _images(d / part / c)
    _images(tmp_path / "stray")
    (tmp_path / "stray" / "0.png").rename(d / "train" / "preview.png")
    with pytest.warns(Warning, match="ignoring 1 file"):
        assert td.plan(d).classes == ("ants", "bees")
    e = tmp_path / "e"
    _images(e / "cats")
    _images(e / "test" / "batch1")  # a class named test, images in a sub-folder
    assert td.plan(e, val_split=0.34).classes == ("cats", "test")
    out = tmp_path / "run"
    (out / "split" / "train" / "ants").mkdir(parents=True)
    (out / "split" / "train" / "ants" / ".DS_Store").write_bytes(b"junk")
    check_out(out, d, None)


def test_hand_made_model_in_out_is_refused_and_kept(tmp_path, capsys):
    """A run replaces model.keras, labels.txt, ... in --out: a rerun's job, but a hand-made model.keras in a
    folder no run wrote was replaced without a word."""
    data = tmp_path / "data"
    for c in ("a", "b"):
        _images(data / c)
    out = tmp_path / "proj"
    out.mkdir()
    (out / "model.keras").write_bytes(b"my own model")
    rc = main(["train", str(data), "--out", str(out), "--epochs", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "model.keras, which tledge train did not write" in err, err
    assert (out / "model.keras").read_bytes() == b"my own model" and not (out / "train.log").exists()
    (out / "tledge.json").write_text('{"extra": {"trained_by": "tledge train"}}')  # an earlier run's folder
    check_out(out, data, None)
    (out / "tledge.json").unlink()
    from tledge.train.checkpoint import Checkpoints

    state = Checkpoints(out / "checkpoints").state_path
    state.parent.mkdir()
    state.write_text("{}")
    check_out(out, data, None)


def test_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "run").write_text("x")
    with pytest.raises(TledgeError, match="is a file: the run writes a folder there"):
        check_out(tmp_path / "run", tmp_path / "data", None)


def test_a_class_folder_linked_to_a_missing_disk_is_refused(tmp_path):
    """A class folder (or val/) that is a symbolic link to an unmounted disk was dropped without a word: the model
    trained without that class (or held out 20% of train/ instead of val/), exit 0."""
    d = tmp_path / "d"
    for c in ("ants", "bees"):
        _images(d / c)
    (d / "hornets").symlink_to(tmp_path / "unmounted" / "hornets")
    with pytest.raises(DataError, match=r"hornets is a symbolic link to .*unmounted/hornets, which does not exist"):
        td.plan(d, val_split=0.34)
    from tledge.images import class_folders  # export's --val / --calib too

    with pytest.raises(DataError, match="hornets is a symbolic link"):
        class_folders(d)
    s = tmp_path / "s"
    for c in ("ants", "bees"):
        _images(s / "train" / c)
    (s / "val").symlink_to(tmp_path / "unmounted" / "val")
    with pytest.raises(DataError, match="val is a symbolic link"):
        td.plan(s)


def test_image_links_to_missing_files_are_said(tmp_path):
    d = tmp_path / "d"
    for c in ("ants", "bees"):
        _images(d / c)
    for i in range(3):
        (d / "bees" / f"link{i}.jpg").symlink_to(tmp_path / "gone" / f"x{i}.jpg")
    with pytest.warns(Warning, match=r"ignoring 3 symbolic link\(s\) to missing files in .*link0.jpg"):
        plan = td.plan(d, val_split=0.34)
    assert plan.classes == ("ants", "bees")


def test_a_train_class_with_sub_folders_beside_classes_of_images_is_refused(tmp_path):
    """car/, bus/ of images and a class train/ of 2019/, 2020/: read as a train/val split, the model was trained on
    the classes 2019 and 2020, exit 0."""
    for c in ("car", "bus"):
        _images(tmp_path / c)
    for c in ("2019", "2020"):
        _images(tmp_path / "train" / c)
    with pytest.raises(DataError, match=r"train/ folder of sub-folders .* beside folders of images \(bus/, car/"):
        td.plan(tmp_path)
    _images(tmp_path / "test")  # a flat test/ of unlabelled images beside a split is no class
    (tmp_path / "car").rename(tmp_path / "car_old")
    (tmp_path / "bus").rename(tmp_path / "bus_old")
    _images(tmp_path / "val" / "2019")
    _images(tmp_path / "val" / "2020")
    with pytest.warns(Warning, match="ignoring"):
        assert td.plan(tmp_path).classes == ("2019", "2020")


def test_one_folder_of_unlabelled_images_beside_a_train_split_is_no_class(tmp_path):
    """train/{ants,bees}/ and a flat test1/ (or Intel's seg_pred/): trained on train/ before, then refused as
    ambiguous; one flat folder beside a split is its unlabelled images, said and ignored."""
    for c in ("ants", "bees"):
        _images(tmp_path / "train" / c)
    for flat in ("test1", "seg_pred"):
        _images(tmp_path / flat)
        with pytest.warns(Warning, match=f"ignoring .*{flat}/"):
            assert td.plan(tmp_path).classes == ("ants", "bees")
    _images(tmp_path / "pred_2024")  # folders named for predictions never count as classes
    with pytest.warns(Warning, match="ignoring"):
        assert td.plan(tmp_path).classes == ("ants", "bees")
