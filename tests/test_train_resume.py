"""tledge train --resume: a run killed mid-phase continues bit for bit, refuses what it would silently change, keeps
an early stop made before the kill, and on a finished run prints its result. Split from test_train.py (its fixtures)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from test_train import backbone_weights, cfg, r_labels, weights  # noqa: F401  (weights: the module's fixture)

from tledge.errors import TledgeError, TledgeWarning
from tledge.train import train


def _killed_in_fine_tuning(data, config, monkeypatch):
    """The run of `config`, stopped by Ctrl-C at the start of its third fine-tuning epoch; its --out."""
    from tledge.train import finetune

    real_epoch = finetune._epoch

    def crash(run, net, x, phase, epoch, augment):
        if phase == 1 and epoch == 2:
            raise KeyboardInterrupt
        return real_epoch(run, net, x, phase, epoch, augment)

    monkeypatch.setattr(finetune, "_epoch", crash)
    with pytest.raises(KeyboardInterrupt):
        train(data, config)
    monkeypatch.setattr(finetune, "_epoch", real_epoch)
    return config.out


def test_resume_continues_where_it_stopped(shapes_dataset, weights, tmp_path, monkeypatch, capsys):  # noqa: F811
    settings = dict(epochs=2, fine_tune_epochs=3, dropout=0.3, unfreeze=12, patience=0)  # dropout: reseeded per epoch
    straight = train(shapes_dataset, cfg(weights, tmp_path / "straight", **settings))

    out = _killed_in_fine_tuning(shapes_dataset, cfg(weights, tmp_path / "crashed", **settings), monkeypatch)
    assert not (out / "model.keras").exists()  # nothing half-written
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert (state["phase"], state["epoch"], len(state["history"])) == ("fine_tune", 2, 4)

    from tledge.train.resume import resume_state
    from tledge.train.checkpoint import Checkpoints

    with pytest.warns(TledgeWarning, match="unfinished run"):  # a fresh start over it says what it replaces
        assert resume_state(cfg(weights, out, **settings), Checkpoints(out / "checkpoints"),
                            r_labels(shapes_dataset)) is None
    with pytest.raises(TledgeError, match="different settings"):
        train(shapes_dataset, cfg(weights, out, resume=True, **{**settings, "unfreeze": 6}))
    # what the restored optimizer and schedule would have ignored: refused, not silently kept
    with pytest.raises(TledgeError, match=r"different settings \(lr 0.01 -> 0.03\)"):
        train(shapes_dataset, cfg(weights, out, resume=True, lr=0.03, **settings))
    with pytest.raises(TledgeError, match=r"epochs 2 -> 5"):  # the head phase is over
        train(shapes_dataset, cfg(weights, out, resume=True, **{**settings, "epochs": 5}))
    resumed = train(shapes_dataset, cfg(weights, out, resume=True, **settings))
    # the wall time counts the interrupted process's epochs too (it counted the last process only)
    assert resumed.metrics["wall_time_s"] > state["elapsed_s"] >= sum(r["seconds"] for r in state["history"])
    hist = resumed.metrics["history"]
    assert [(h["phase"], h["epoch"]) for h in hist] == [("head", 1), ("head", 2), ("fine_tune", 1),
                                                        ("fine_tune", 2), ("fine_tune", 3)]
    def no_time(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert no_time(hist[:4]) == no_time(straight.metrics["history"][:4])  # carried over from the checkpoint
    # the resumed run continues the same trajectory (weights, optimizer moments, data order)
    assert hist[4]["loss"] == pytest.approx(straight.metrics["history"][4]["loss"], rel=1e-4)
    a, b = backbone_weights(out / "model.keras"), backbone_weights(tmp_path / "straight" / "model.keras")
    assert all(np.allclose(x, y, atol=1e-5) for n in a for x, y in zip(a[n], b[n]))
    # --resume on the finished run (a scheduler's restart): its result, nothing trained, nothing written
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = train(shapes_dataset, cfg(weights, out, resume=True, **settings))
    assert again.val_accuracy == resumed.val_accuracy and again.metrics == resumed.metrics
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == files
    # ... on other images: said (the note listed other settings, never the data)
    import shutil

    fewer = tmp_path / "fewer"
    shutil.copytree(shapes_dataset, fewer)
    next(p for p in sorted((fewer / "train").rglob("*")) if p.is_file()).unlink()
    capsys.readouterr()
    train(fewer, cfg(weights, out, resume=True, verbose=1, **settings))
    err = capsys.readouterr().err
    assert "is complete: nothing to resume (it was made with other settings: images " in err, err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == files


# ---- bad data ----------------------------------------------------------------------------------------


def test_resume_keeps_an_early_stop_made_before_the_kill(shapes_dataset, weights, tmp_path,  # noqa: F811
                                                       monkeypatch):
    """Killed after the epoch that stopped a phase early but before the next phase began: the resumed run trained
    that phase on (the decision was not in the checkpoint), unlike the uninterrupted run."""
    from tledge.train import finetune

    monkeypatch.setattr(finetune, "_stop_reason",
                        lambda run, name, row: "forced" if (name, row["epoch"]) == ("head", 2) else None)
    settings = dict(epochs=4, fine_tune_epochs=1, unfreeze=6)
    straight = train(shapes_dataset, cfg(weights, tmp_path / "straight", **settings))
    real_end = finetune._end_phase

    def killed(run, stepper, rec):
        if rec["name"] == "head":
            raise KeyboardInterrupt
        return real_end(run, stepper, rec)

    out = tmp_path / "killed"
    monkeypatch.setattr(finetune, "_end_phase", killed)
    with pytest.raises(KeyboardInterrupt):
        train(shapes_dataset, cfg(weights, out, **settings))
    monkeypatch.setattr(finetune, "_end_phase", real_end)
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert (state["phase"], state["epoch"], state["stop_reason"]) == ("head", 2, "forced")
    resumed = train(shapes_dataset, cfg(weights, out, resume=True, **settings))
    phases = [(h["phase"], h["epoch"]) for h in resumed.metrics["history"]]
    assert phases == [(h["phase"], h["epoch"]) for h in straight.metrics["history"]] == [
        ("head", 1), ("head", 2), ("fine_tune", 1)]
    assert resumed.metrics["phases"][0]["stop_reason"] == "forced"


def test_resume_with_no_more_epochs_ends_the_phase_with_its_best_weights(shapes_dataset, weights, tmp_path,  # noqa: F811
                                                                          monkeypatch):
    """Killed in fine-tuning, resumed with --fine-tune-epochs 0: the phase was marked skipped beside its epochs in
    the history and the last epoch's weights were saved, not the best ones metrics.json named. Also refused: another
    precision than the run trained in (Adam's state was reset without a word), another --fine-tune-epochs once
    fine-tuning is over."""
    import keras

    settings = dict(epochs=2, fine_tune_epochs=3, unfreeze=12, patience=0)
    out = _killed_in_fine_tuning(shapes_dataset, cfg(weights, tmp_path / "killed", **settings), monkeypatch)
    with pytest.raises(TledgeError, match=r"it trained in float32, this run would train in mixed_float16 "
                                          r"\(--precision mixed\): pass --precision float32"):
        train(shapes_dataset, cfg(weights, out, resume=True, precision="mixed", **settings))
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    best = out / "checkpoints" / f"{state['best']}.weights.h5"
    # --precision float32 where auto trained in float32 (a CPU): the same precision, resumed (it was refused)
    resumed = train(shapes_dataset, cfg(weights, out, resume=True, precision="float32",
                                        **{**settings, "fine_tune_epochs": 0}))
    phase = resumed.metrics["phases"][1]
    assert phase["name"] == "fine_tune" and not phase.get("skipped") and phase["epochs_run"] == 2
    model = keras.models.load_model(out / "model.keras", compile=False)
    saved = [w.copy() for w in model.get_weights()]
    model.load_weights(best)
    assert all(np.array_equal(a, b) for a, b in zip(saved, model.get_weights()))  # the best epoch's, not the last's
    from tledge.train.resume import resume_differences

    finished = json.loads((out / "checkpoints" / "state.json").read_text())  # said on a finished run, not ignored
    assert "fine_tune_epochs 0 -> 3" in resume_differences(finished, cfg(weights, out, **settings),
                                                         r_labels(shapes_dataset))


def test_a_truncated_checkpoint_is_one_line_naming_it(tmp_path):
    """A checkpoint cut short (a full disk, a copy interrupted): --resume traced back (zipfile.BadZipFile) or said
    "Unable to synchronously open file (truncated file ...)" without the file."""
    import keras

    from tledge.train.checkpoint import Checkpoints

    ck, state = Checkpoints(tmp_path), {"last": "last-head-001"}
    (tmp_path / "last-head-001.optimizer.npz").write_bytes(b"PK\x03\x04" + bytes(10))
    with pytest.raises(TledgeError, match=r"last-head-001.optimizer.npz cannot be read .*delete .* from the start"):
        ck.load_optimizer(None, None, state)
    (tmp_path / "last-head-001.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(10))
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(TledgeError, match=r"last-head-001.weights.h5 cannot be read"):
        ck.load_weights(model, state)


@pytest.mark.parametrize("text", ["[]", '"x"', "[" * 500 + "]" * 500, b"\xff\xfe"])
def test_a_checkpoint_state_that_is_not_an_object_is_one_line(text, tmp_path):
    """state.json holding valid JSON that is not an object: --resume traced back (AttributeError: 'list' object has
    no attribute 'get')."""
    from tledge.train.checkpoint import Checkpoints

    p = tmp_path / "state.json"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(TledgeError, match="checkpoint"):
        Checkpoints(tmp_path).load_state()


def test_workers_compare_the_images_they_read_and_a_resume_its_replicas(tmp_path):
    """What the cluster's workers agree on tells swapped class folders and another --val apart (the counts alone
    did not); a run resumes on as many replicas as it trained on (the global batch and learning rate grew, and
    metrics.json reported a learning rate the restored optimizer did not use)."""
    import cv2

    from tledge.errors import TledgeError
    from tledge.train import data as td
    from tledge.train.distributed import images_read
    from tledge.train.resume import same_replicas

    for name, colour in (("a", 40), ("b", 200)):
        for i in range(3):
            (tmp_path / "one" / name).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(tmp_path / "one" / name / f"{i}.png"), np.full((8, 8 + i * (colour // 40), 3), colour,
                                                                              np.uint8))
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "a").symlink_to(tmp_path / "one" / "b")
    (tmp_path / "two" / "b").symlink_to(tmp_path / "one" / "a")
    one, two = (images_read(td.fingerprint(td.plan(tmp_path / n, val_split=0.34, seed=0))) for n in ("one", "two"))
    assert one != two and one == images_read(td.fingerprint(td.plan(tmp_path / "one", val_split=0.34, seed=0)))
    same_replicas({"replicas": 2}, 2, tmp_path)
    same_replicas({}, 4, tmp_path)  # a checkpoint of an older tledge: not recorded
    with pytest.raises(TledgeError, match="it trained on 1 replica.s., this run has 2"):
        same_replicas({"replicas": 1}, 2, tmp_path)
