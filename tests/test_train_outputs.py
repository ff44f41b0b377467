"""What a run leaves in OUT: all of a run's files or all of the previous run's, never a mix, and plots that
stay small whatever the class count."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from tledge.contract import Contract


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _model(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax")])


def _metrics():
    return {"history": [{"phase": "head", "epoch": 1, "loss": 0.5, "val_loss": 0.6, "accuracy": 0.7,
                         "val_accuracy": 0.6}], "confusion_matrix": [[3, 1], [0, 4]]}


def test_a_run_that_dies_while_writing_leaves_the_previous_run_whole(tmp_path, monkeypatch):
    """The files were renamed into OUT one by one between seconds of saving and plotting: a run killed there left
    its model.keras beside the previous run's labels.txt and tledge.json (an export then passed parity with every
    bee called an ant)."""
    from tledge.train import report

    x = np.random.default_rng(0).random((2, 4, 4, 3)).astype(np.float32)
    out = tmp_path / "run"
    old = _model(0)
    report.write_all(out, old, Contract(4, 4, labels=("ants", "bees")), _metrics(), x, old.predict_on_batch(x))
    before = _digests(out)
    assert {"model.keras", "labels.txt", "tledge.json", "metrics.json"} <= set(before)

    def dies(*a, **k):
        raise KeyboardInterrupt  # after both models are saved and checked

    monkeypatch.setattr(report, "plot_confusion", dies)
    new = _model(1)
    with pytest.raises(KeyboardInterrupt):
        report.write_all(out, new, Contract(4, 4, labels=("apis", "formicidae")), _metrics(), x, new.predict_on_batch(x))
    assert _digests(out) == before
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # the staging folder is gone too


def test_the_confusion_plot_of_hundreds_of_classes_stays_small(tmp_path):
    """0.6 inch and a number per class: 250 classes took 83 s and 7.9 GB, 400 ran out of memory."""
    pytest.importorskip("matplotlib")
    import cv2

    from tledge.train.report import plot_confusion

    n = 400
    cm = np.random.default_rng(0).integers(0, 5, (n, n))
    assert plot_confusion(cm, [f"class {i}" for i in range(n)], tmp_path / "cm.png")
    h, w = cv2.imread(str(tmp_path / "cm.png")).shape[:2]
    assert max(h, w) <= 2700


def test_checkpoints_remove_the_temporary_files_a_killed_run_left(tmp_path):
    from tledge.train.checkpoint import Checkpoints

    names = ["last-head-002.weights.h5", "last-head-002.optimizer.npz", "best-head-001.weights.h5",
             "last-head-001.weights.h5", ".last-head-003.k2j4x9.weights.h5", ".best-head-003.p0q1.weights.h5",
             "state.json", "notes.txt"]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    Checkpoints(tmp_path)._prune({"last": "last-head-002", "best": "best-head-001"})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["last-head-002.weights.h5", "last-head-002.optimizer.npz", "best-head-001.weights.h5", "state.json",
         "notes.txt"])


def _colour_classes(root, n: int):
    import cv2

    rng = np.random.default_rng(0)
    for name, shade in (("red", (0, 0, 160)), ("blue", (160, 0, 0))):
        (root / name).mkdir(parents=True)
        for i in range(n):
            img = (rng.integers(0, 60, (40, 40, 3)) + np.array(shade)).astype(np.uint8)
            cv2.imwrite(str(root / name / f"{i}.png"), img)
    return root


def test_export_of_a_trained_model_takes_the_runs_images_without_being_told(tmp_path, capsys):
    """`tledge train photos/ --out run` held 0.2 of photos/ out, and `tledge export run/model.keras --int8` then
    needed --calib and --val, which could only name photos/ itself: parity on images the model trained on. The run
    leaves split/train and split/val (links to the images it used); export takes them when given no folders."""
    import json

    from tledge.cli import main

    data, run = _colour_classes(tmp_path / "photos", 10), tmp_path / "run"
    assert main(["train", str(data), "--weights", "none", "--size", "32", "--epochs", "2", "--fine-tune-epochs", "0",
                 "--out", str(run)]) == 0
    assert "split/ (links to the training and held-out images" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    val, train = sorted((run / "split" / "val").rglob("*.png")), sorted((run / "split" / "train").rglob("*.png"))
    assert len(val) == metrics["val_images"] == 4 and len(train) == 16
    assert all(f.is_symlink() and f.resolve().parent.parent == data.resolve() for f in val + train)
    assert {f.resolve() for f in val}.isdisjoint(f.resolve() for f in train)
    assert all(f.parent.name == f.resolve().parent.name for f in val + train)  # each under its own class
    assert main(["train", str(data), "--weights", "none", "--size", "32", "--epochs", "1", "--fine-tune-epochs", "0",
                 "--seed", "1", "--out", str(run)]) == 0  # a second run replaces the folder whole
    again = {f.resolve() for f in (run / "split" / "val").rglob("*.png")}
    assert len(again) == 4 and again != {f.resolve() for f in val}
    capsys.readouterr()
    rc = main(["export", str(run / "model.keras"), "--formats", "tflite", "--out", str(tmp_path / "ex")])
    err = capsys.readouterr().err
    assert rc in (0, 1) and f"--val {run / 'split' / 'val'}" in err, err[-2000:]
    assert json.loads((tmp_path / "ex" / "parity.json").read_text())["images"] == 4
    # --val given, --calib not: calibration on the run's training images, not on the images parity checks
    rc = main(["export", str(run / "model.keras"), "--formats", "tflite", "--int8", "--no-repair", "--val", str(data),
               "--out", str(tmp_path / "ex2")])
    err = capsys.readouterr().err
    assert rc in (0, 1) and f"--calib {run / 'split' / 'train'}, the training run's" in err, err[-2000:]
    assert json.loads((tmp_path / "ex2" / "parity.json").read_text())["images"] == 20


def test_a_split_whose_links_lead_nowhere_is_not_taken(tmp_path):
    """The data moved after training: export must ask for folders, not calibrate on nothing."""
    from tledge.export.imagesets import training_split

    photos = _colour_classes(tmp_path / "photos", 2)
    for part in ("train", "val"):
        (tmp_path / "run" / "split" / part / "red").mkdir(parents=True)
        (tmp_path / "run" / "split" / part / "red" / "0.png").symlink_to(photos / "red" / "0.png")
    model = tmp_path / "run" / "model.keras"
    assert training_split(model) == (str(tmp_path / "run" / "split" / "train"), str(tmp_path / "run" / "split" / "val"))
    import shutil

    shutil.rmtree(photos)
    assert training_split(model) is None
    assert training_split(tmp_path / "elsewhere" / "model.keras") is None


def test_class_names_the_plot_font_cannot_draw_become_indices(tmp_path):
    """Class folders named 猫 / 犬 (or emoji) were empty boxes on confusion.png, with a 'Glyph missing' warning each."""
    pytest.importorskip("matplotlib")
    import warnings

    from tledge.train.report import plot_confusion

    for labels in (("猫", "犬"), ("ants", "bées")):
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            assert plot_confusion(np.array([[3, 1], [0, 4]]), labels, tmp_path / "c.png")
        assert not [w for w in said if "Glyph" in str(w.message)], [str(w.message) for w in said]


def test_the_reload_check_compares_the_file_with_the_model_run_the_same_way(tmp_path):
    """A finished ResNet50 run failed "model.keras reloaded predicts differently (max abs diff 3.11e-05)" and wrote
    no model: the outputs it was held to came from an eager call, 3e-5 from predict_on_batch on identical weights.
    The file is held to the model in memory run the same way; the caller's outputs only within kernel noise."""
    pytest.importorskip("keras")
    from tledge.errors import ExportError
    from tledge.train.report import save_model

    x = np.random.default_rng(0).random((2, 4, 4, 3)).astype(np.float32)
    model = _model(1)
    want = np.asarray(model.predict_on_batch(x))
    assert save_model(model, tmp_path / "a.keras", x, want + 4e-5).is_file()  # eager-vs-graph noise: saved
    with pytest.raises(ExportError, match="reloaded predicts differently"):
        save_model(model, tmp_path / "b.keras", x, want + 0.05)  # not this model's outputs: refused
    assert not (tmp_path / "b.keras").exists()


def test_split_links_never_collide_and_a_run_without_links_leaves_no_old_split(tmp_path, monkeypatch):
    """ants/a/2-x.png, ants/a/x.png, ants/b/x.png: the third link was named 2-x.png too (its index), os.symlink
    failed, and the rerun kept the previous run's split/, on which export then calibrated and checked parity."""
    import os
    from types import SimpleNamespace

    from tledge.train import report

    files = []
    for sub, name in (("a", "2-x.png"), ("a", "x.png"), ("b", "x.png"), ("c", "1-x.png")):
        (tmp_path / "d" / "ants" / sub).mkdir(parents=True, exist_ok=True)
        files.append(tmp_path / "d" / "ants" / sub / name)
        files[-1].write_bytes(name.encode() + sub.encode())
    part = SimpleNamespace(files=files, y=np.zeros(len(files), int), classes=("ants",))
    plan = SimpleNamespace(train=part, val=SimpleNamespace(files=[], y=np.zeros(0, int), classes=("ants",)))
    stage = tmp_path / "stage"
    assert report.link_split(stage, plan) == "split"
    links = sorted((stage / "split" / "train" / "ants").iterdir())
    assert sorted(p.resolve() for p in links) == sorted(f.resolve() for f in files)

    x = np.random.default_rng(0).random((2, 4, 4, 3)).astype(np.float32)
    out, model = tmp_path / "run", _model(0)
    report.write_all(out, model, Contract(4, 4, labels=("ants", "bees")), _metrics(), x, model.predict_on_batch(x),
                     split=plan)
    assert len(list((out / "split" / "train" / "ants").iterdir())) == 4

    def no_links(*a, **k):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "symlink", no_links)  # a file system without symbolic links
    report.write_all(out, model, Contract(4, 4, labels=("ants", "bees")), _metrics(), x, model.predict_on_batch(x),
                     split=plan)
    assert not (out / "split").exists() and (out / "model.keras").is_file()


def test_resume_on_a_finished_run_keeps_its_train_log(tmp_path, capsys):
    """`train --resume` on a finished run (a scheduler's restart) replaced OUT/train.log by the one line "the run in
    OUT is complete: nothing to resume": the finished run's log was lost. That line now comes after it."""
    from tledge.cli import main

    data, run = _colour_classes(tmp_path / "photos", 10), tmp_path / "run"
    argv = ["train", str(data), "--weights", "none", "--size", "32", "--epochs", "1", "--fine-tune-epochs", "0",
            "--out", str(run)]
    assert main(argv) == 0
    first = (run / "train.log").read_text()
    assert first.strip()
    assert main([*argv, "--resume"]) == 0
    assert "nothing to resume" in capsys.readouterr().err
    after = (run / "train.log").read_text()
    assert after.startswith(first) and "nothing to resume" in after[len(first):], after
