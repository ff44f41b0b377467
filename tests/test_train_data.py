"""tledge train's data path: class folders, splits, bad folders and files (clear errors, warnings, nothing
modified), and the ImageNet download failure that says how to pass a local file. No training here."""
from __future__ import annotations

import hashlib
import shutil
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

from tledge.errors import DataError, TledgeError, TledgeWarning
from tledge.train import TrainConfig, train
from tledge.train import data as td

SIZE = 32


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _classes(root: Path, spec: dict[str, int], size: int = 24) -> Path:
    import cv2

    for name, n in spec.items():
        rng = np.random.default_rng(zlib.crc32(name.encode()))  # each class its own pictures, the same every call
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cv2.imwrite(str(root / name / f"{i}.png"), rng.integers(0, 255, (size, size, 3), np.uint8))
    return root


def test_bad_folders_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        td.plan(tmp_path / "missing")
    with pytest.raises(DataError, match="no class folders"):
        (tmp_path / "flat").mkdir()
        (tmp_path / "flat" / "x.png").write_bytes(b"")
        td.plan(tmp_path / "flat")
    with pytest.raises(DataError, match="without images.*empty"):
        td.plan(_classes(tmp_path / "e", {"cat": 3, "dog": 3, "empty": 0}))
    with pytest.raises(DataError, match="only one class"):
        td.plan(_classes(tmp_path / "one", {"cat": 5}))
    with pytest.raises(DataError, match="at least 2 per class"):
        td.plan(_classes(tmp_path / "tiny", {"cat": 5, "dog": 1}))
    root = _classes(tmp_path / "split", {"train/cat": 3, "train/dog": 3, "val/cat": 2, "val/bird": 1})
    with pytest.raises(DataError, match="bird"):
        td.plan(root)
    with pytest.raises(DataError, match="drop --val-split"):
        td.plan(_classes(tmp_path / "split2", {"train/cat": 3, "train/dog": 3, "val/cat": 1}), val_split=0.5)
    with pytest.raises(TledgeError, match="inside the data folder"):
        train(root, TrainConfig(weights="none", out=root / "runs"))
    for bad in (dict(unfreeze=3, fine_tune_at="conv1"), dict(weights="nope.h5"), dict(class_weights="yes"),
                dict(epochs=0, fine_tune_epochs=0), dict(val_split=1.5), dict(grayscale=True, precision="mixed")):
        with pytest.raises(TledgeError):
            TrainConfig(**bad)


def test_bad_files_warn_are_skipped_and_left_alone(tmp_path):
    from tledge.train.api import make_contract

    root = _classes(tmp_path / "d", {"cat": 3, "dog": 3})
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "dog" / "notes.txt").write_text("hello")
    (root / "readme.md").write_text("loose file")
    before = _digest(root)
    with pytest.warns(TledgeWarning) as got:
        plan = td.plan(root, val_split=0.34)
    msgs = " | ".join(str(w.message) for w in got)
    assert "notes.txt" in msgs and "readme.md" in msgs
    contract = make_contract(TrainConfig(weights="none", size=SIZE), plan.classes)
    split = plan.train if any(f.name == "broken.jpg" for f in plan.train.files) else plan.val
    with pytest.warns(TledgeWarning, match="broken.jpg"):
        x, y, kept = td.load(split, contract)
    assert len(kept.files) == len(split.files) - 1 and len(x) == len(y) == len(kept.files)
    assert _digest(root) == before  # nothing deleted, moved or rewritten

    for f in (root / "dog").glob("*.png"):
        f.write_bytes(b"garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TledgeWarning)
        plan = td.plan(root, val_split=0.34)
        with pytest.raises(DataError, match="no readable training images left for class.*dog"):
            td.load(plan.train, contract)


def test_cli_reports_bad_data_with_exit_code_2(tmp_path, capsys):
    from tledge.cli import main

    root = _classes(tmp_path / "d", {"cat": 4})
    assert main(["train", str(root), "--weights", "none", "--out", str(tmp_path / "o")]) == 2
    assert "only one class" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_imagenet_download_failure_says_how_to_pass_a_file(monkeypatch):
    import keras.src.utils.file_utils as fu

    from tledge import backbones

    def offline(*a, **k):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(fu, "get_file", offline)
    with pytest.raises(TledgeError, match="--weights PATH"):
        backbones.build("mobilenet", (SIZE, SIZE, 3), weights="imagenet", alpha=0.25)


def test_train_offline_imagenet_stops_before_the_images_load(tmp_path, monkeypatch, capsys):
    import keras.src.utils.file_utils as fu

    from tledge.cli import main

    def offline(*a, **k):
        raise Exception("URL fetch failure: no network")

    def loading(*a, **k):
        raise AssertionError("the images were loaded before the weights were fetched")

    monkeypatch.setattr(fu, "get_file", offline)
    monkeypatch.setattr(td, "load", loading)
    root = _classes(tmp_path / "d", {"cat": 3, "dog": 3})
    assert main(["train", str(root), "--weights", "imagenet", "--size", str(SIZE), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--weights PATH" in err and "AssertionError" not in err


def test_resume_refuses_a_run_whose_images_or_split_changed(tmp_path):
    """Images added to a held-out split (or another --seed) moved 30 of 49 validation images into training on
    --resume, without a word."""
    from tledge.train.resume import resume_differences

    root = _classes(tmp_path / "d", {"cat": 10, "dog": 10})
    cfg = TrainConfig(out=tmp_path / "o", weights="none", size=SIZE, val_split=0.3)
    before = td.fingerprint(td.plan(root, val_split=0.3, seed=0))
    state = {"config": cfg.to_dict(), "labels": ["cat", "dog"], "phase": "head", "phases_done": [], "data": before}
    assert resume_differences(state, cfg, ("cat", "dog"), td.fingerprint(td.plan(root, val_split=0.3, seed=0))) == []
    assert resume_differences(state, cfg, ("cat", "dog"), td.fingerprint(td.plan(root, val_split=0.3, seed=1))) == [
        "the training / validation images (same counts, other files, contents or split)"]
    # a checkpoint of an older tledge (no "bytes" in its fingerprint) still resumes
    older = {**state, "data": {k: v for k, v in before.items() if k != "bytes"}}
    assert resume_differences(older, cfg, ("cat", "dog"), td.fingerprint(td.plan(root, val_split=0.3, seed=0))) == []
    # the same names with other pictures (another data set's 0.png ...) resumed on them without a word
    other = _classes(tmp_path / "other", {"cat": 10, "dog": 10}, size=32)
    assert resume_differences(state, cfg, ("cat", "dog"), td.fingerprint(td.plan(other, val_split=0.3, seed=0))) == [
        "the training / validation images (same counts, other files, contents or split)"]
    _classes(root, {"cat": 14})  # 4 more cats
    assert resume_differences(state, cfg, ("cat", "dog"), td.fingerprint(td.plan(root, val_split=0.3, seed=0))) == [
        "images 14 training / 6 validation -> 17 / 7"]
    assert resume_differences(state, cfg.replace(seed=3), ("cat", "dog")) == ["seed 0 -> 3"]


def test_validation_images_that_are_copies_of_training_images_are_said(tmp_path):
    root = _classes(tmp_path / "d", {"cat": 4, "dog": 4})
    val = tmp_path / "v"
    shutil.copytree(root, val)
    for f in list((val / "dog").iterdir())[1:]:
        f.write_bytes(f.read_bytes() + b"\0")  # other bytes, same picture: not a copy
    with pytest.warns(TledgeWarning, match=r"5 of the 8 validation images are copies of training images \(.*cat"):
        td.plan(root, val)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        td.plan(root, val_split=0.25)  # distinct files: nothing said


def test_a_class_left_with_a_single_training_image_is_said(tmp_path):
    root = _classes(tmp_path / "d", {"cat": 2, "dog": 12, "eel": 2})
    with pytest.warns(TledgeWarning, match=r"2 class\(es\) train on a single image: cat \(1\), eel \(1\)"):
        found = td.plan(root, val_split=0.2)  # a 2-image class gives one image to validation
    assert found.train.counts() == [1, 10, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        td.plan(_classes(tmp_path / "e", {"cat": 3, "dog": 3}), val_split=0.25)  # 2 training images each: nothing said


def test_a_model_no_better_than_its_largest_class_is_said():
    """192 ants / 10 bees: "val accuracy 0.950" from a model that answers ants for everything, with no word."""
    from tledge.train.api import warn_if_no_better_than_the_largest_class as check

    m = {"val_counts": [38, 2], "val_images": 40, "val_accuracy": 0.95, "classes": ["ants", "bees"],
         "per_class_accuracy": {"ants": 1.0, "bees": 0.0}, "config": {"class_weights": "none"}}
    with pytest.warns(TledgeWarning, match=r"no better than always answering 'ants' \(38 of 40.*bees 0.00; "
                                           r"--class-weights auto"):
        check(m)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check({**m, "val_accuracy": 0.975, "per_class_accuracy": {"ants": 1.0, "bees": 0.5}})


def test_a_second_train_into_the_same_out_is_refused_while_the_first_runs(tmp_path):
    """Two trains into one --out each deleted the other's checkpoints and both said they wrote it."""
    from tledge.folderlock import FolderLock

    root = _classes(tmp_path / "d", {"cat": 3, "dog": 3})
    out = tmp_path / "o"
    out.mkdir()
    first = FolderLock(out, "train").acquire()  # what a running train holds
    try:
        with pytest.raises(TledgeError, match="another tledge train .* is writing into"):
            train(root, TrainConfig(out=out, weights="none", size=SIZE))
    finally:
        first.release()
    assert list(out.iterdir()) == []


def test_split_layout_and_held_out_split_are_stratified(tmp_path):
    root = _classes(tmp_path / "flat", {"a": 10, "b": 5})
    p1, p2 = td.plan(root, val_split=0.2, seed=3), td.plan(root, val_split=0.2, seed=3)
    assert p1.val.files == p2.val.files  # deterministic
    assert p1.val.counts() == [2, 1] and p1.train.counts() == [8, 4]
    assert not set(p1.val.files) & set(p1.train.files)
    split = _classes(tmp_path / "s", {"train/a": 3, "train/b": 3, "validation/a": 2, "validation/b": 2})
    p = td.plan(split)
    assert p.classes == ("a", "b") and len(p.val.files) == 4 and "validation" in p.source
    shutil.rmtree(split / "validation")
    assert len(td.plan(split).val.files) == 2  # train/ only: held out from it


def test_resume_takes_a_default_given_explicitly(tmp_path):
    """A run made without --val-split / --fine-tune-lr, resumed with them at the values it used (0.2, LR/300), was
    refused: "val_split None -> 0.2" (helper 152). Another value is still a difference."""
    from tledge.train.resume import resume_differences

    made = TrainConfig(out=tmp_path / "o", weights="none", size=SIZE, lr=3e-3)
    state = {"config": made.to_dict(), "labels": ["cat", "dog"], "phase": "head", "phases_done": []}
    same = TrainConfig(out=tmp_path / "o", weights="none", size=SIZE, lr=3e-3, val_split=0.2, fine_tune_lr=1e-5)
    assert resume_differences(state, same, ("cat", "dog")) == []
    other = TrainConfig(out=tmp_path / "o", weights="none", size=SIZE, lr=3e-3, val_split=0.3, fine_tune_lr=1e-4)
    assert resume_differences(state, other, ("cat", "dog")) == ["val_split None -> 0.3", "fine_tune_lr None -> 0.0001"]
