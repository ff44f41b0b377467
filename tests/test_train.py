"""tledge train: both phases, real freezing, fast path, the data path == contract.prepare,
saved models that reload in safe mode (resume: test_train_resume.py). Tiny MobileNet (alpha 0.25, 32 px) on the
generated shapes data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tledge.backbones import contract_for
from tledge.contract import Contract
from tledge.errors import TledgeError, TledgeWarning
from tledge.train import TrainConfig, train
from tledge.train import data as td

SIZE = 32


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A 'pretrained' backbone file: random MobileNet-0.25 whose batch-norm statistics were measured on
    random images (plain random init gives features ~1e-17, which no head can learn from)."""
    import keras

    from tledge import backbones
    from tledge.train.checkpoint import numpy2_quiet

    keras.utils.set_random_seed(1)
    bb = backbones.build("mobilenet", (SIZE, SIZE, 3), weights=None, alpha=0.25)
    bns = [l for l in bb.layers if isinstance(l, keras.layers.BatchNormalization)]
    for layer in bns:
        layer.momentum = 0.0
    bb(np.random.default_rng(0).uniform(-1, 1, (32, SIZE, SIZE, 3)).astype("float32"), training=True)
    path = tmp_path_factory.mktemp("weights") / "calibrated_mobilenet_025.weights.h5"
    with numpy2_quiet():
        bb.save_weights(str(path))
    return path


def cfg(weights, out, **kw) -> TrainConfig:
    base = dict(backbone="mobilenet", alpha=0.25, weights=str(weights), size=SIZE, epochs=2, fine_tune_epochs=2,
                batch=16, lr=1e-2, out=out, verbose=0)
    return TrainConfig(**{**base, **kw})


def backbone_weights(model_path: Path) -> dict[str, list[np.ndarray]]:
    import keras

    from tledge.layers import CUSTOM_OBJECTS

    m = keras.saving.load_model(str(model_path), custom_objects=CUSTOM_OBJECTS, safe_mode=True, compile=False)
    bb = next(l for l in m.layers if l.__class__.__name__ == "Functional")
    return {l.name: [np.asarray(w) for w in l.get_weights()] for l in bb.layers if l.weights}


def initial_backbone_weights(weights: Path) -> dict[str, list[np.ndarray]]:
    from tledge import backbones

    bb = backbones.build("mobilenet", (SIZE, SIZE, 3), weights=str(weights), alpha=0.25)
    return {l.name: [np.asarray(w) for w in l.get_weights()] for l in bb.layers if l.weights}


def r_labels(root) -> tuple[str, ...]:
    return td.plan(root).classes


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


# ---- both phases, outputs, reload -------------------------------------------------------------------
def test_two_phases_outputs_reload_and_partial_unfreezing(shapes_dataset, weights, tmp_path):
    import keras

    from tledge.layers import CUSTOM_OBJECTS, baked_norm

    out = tmp_path / "run"
    r = train(shapes_dataset, cfg(weights, out, unfreeze=12))
    m = json.loads((out / "metrics.json").read_text())
    assert [p["name"] for p in m["phases"]] == ["head", "fine_tune"]
    assert [p["epochs_run"] for p in m["phases"]] == [2, 2] and len(m["history"]) == 4
    assert m["phases"][0]["fast_path"] is False  # augmentation is on by default
    assert m["phases"][1]["unfrozen"]["layers"] == 12
    assert isinstance(m["val_accuracy"], float) and m["wall_time_s"] > 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["checkpoints", "confusion.png", "curves.png", "labels.txt", "metrics.json", "model.h5",
                     "model.keras", "split", "tledge.json"]  # and no temporary files left
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "labels.txt").read_text().split() == list(r.labels) == ["circle", "hstripes", "vstripes"]

    contract = Contract.load(out / "tledge.json")
    assert (contract.channels, contract.input_dtype, contract.baked, contract.norm.value) == (3, "float32", True, "tf")
    assert contract.labels == r.labels and contract == r.contract
    val = td.plan(shapes_dataset).val
    x, y = contract.prepare_batch(val.files), val.y
    preds = []
    for path in (out / "model.keras", out / "model.h5"):
        model = keras.saving.load_model(str(path), custom_objects=CUSTOM_OBJECTS, safe_mode=True, compile=False)
        assert model.input.shape[1:] == (SIZE, SIZE, 3) and model.input.dtype == "float32"
        assert baked_norm(model.layers[1]) == ("tf", None, None)  # a built-in layer: loads without tledge
        preds.append(np.asarray(model.predict(x, verbose=0)))
    np.testing.assert_allclose(preds[0], preds[1], atol=1e-6)
    # metrics.json's accuracy is the saved model's, recomputed independently from the files on disk
    assert m["val_accuracy"] == pytest.approx(float((preds[0].argmax(1) == y).mean()))
    assert np.asarray(m["confusion_matrix"]).sum() == len(y)

    # phase 2 trained exactly the top 12 layers minus batch norm; everything below is bit-identical
    before, after = initial_backbone_weights(weights), backbone_weights(out / "model.keras")
    bb_layers = keras.applications.MobileNet(include_top=False, weights=None, alpha=0.25, pooling="avg",
                                             input_shape=(SIZE, SIZE, 3)).layers
    top = {l.name for l in bb_layers[-12:] if l.weights and not isinstance(l, keras.layers.BatchNormalization)}
    changed = {n for n in before if not same(before[n], after[n])}
    assert changed and changed <= top, (changed, top)


def test_phase1_frozen_backbone_is_bit_identical(shapes_dataset, weights, tmp_path):
    """With augmentation the frozen backbone is in the gradient path every step: it must not move (BN stats too)."""
    out = tmp_path / "p1"
    train(shapes_dataset, cfg(weights, out, epochs=3, fine_tune_epochs=0, dropout=0.5))
    m = json.loads((out / "metrics.json").read_text())
    assert [p.get("skipped", False) for p in m["phases"]] == [False, True]
    assert len({round(h["loss"], 6) for h in m["history"]}) == 3  # the head did train
    before, after = initial_backbone_weights(weights), backbone_weights(out / "model.keras")
    assert before.keys() == after.keys()
    assert all(same(before[n], after[n]) for n in before)


def test_below_head_rule_on_a_fake_history():
    from tledge.train.finetune import below_head

    hist = [{"phase": "head", "val_accuracy": a} for a in (0.80, 0.90, 0.88)]
    assert below_head(hist, 0.885, 0.02, 153) is None  # 1.5 points under the best head epoch: within 2
    assert below_head(hist, 0.88, 0.02, 153) is None  # exactly 2 points: within (float noise aside)
    assert below_head(hist, 0.87, 0.02, 153) == pytest.approx(0.03)
    assert below_head(hist + [{"phase": "fine_tune", "val_accuracy": 0.99}], 0.87, 0.02, 153) == pytest.approx(0.03)
    assert below_head(hist, 0.85, 0.02, 20) is None  # one image of 20 (5 points) is always allowed
    assert below_head(hist, 0.80, 0.02, 20) == pytest.approx(0.10)  # two images are not
    assert below_head([{"phase": "fine_tune", "val_accuracy": 0.9}], 0.1, 0.02, 153) is None  # no head phase
    with pytest.raises(TledgeError, match="max drop"):
        TrainConfig(fine_tune_max_drop=1.5)


def test_fine_tuning_stops_below_the_head_and_keeps_its_weights(shapes_dataset, weights, tmp_path, monkeypatch):
    """Scripted val accuracies: fine-tuning epoch 2 falls 20 points (more than one val image) under the best
    head epoch, so the phase stops there (of 5 planned, patience 6 not reached) and the saved model is the
    head's best."""
    from tledge.train import distributed

    real, script = distributed.validate, iter([0.80, 0.90, 0.89, 0.70, 0.95, 0.95, 0.95])

    def scripted(*args):
        return next(script), real(*args)[1]

    monkeypatch.setattr(distributed, "validate", scripted)
    out = tmp_path / "guard"
    r = train(shapes_dataset, cfg(weights, out, unfreeze=12, fine_tune_epochs=5, fine_tune_max_drop=0.02))
    m = r.metrics
    assert [(h["phase"], h["val_accuracy"]) for h in m["history"]] == [
        ("head", 0.80), ("head", 0.90), ("fine_tune", 0.89), ("fine_tune", 0.70)]
    ft = m["phases"][1]
    assert ft["stopped_early"] and ft["epochs_run"] == 2 and "under the best head epoch" in ft["stop_reason"]
    before, after = initial_backbone_weights(weights), backbone_weights(out / "model.keras")
    assert m["best"]["phase"] == "head" and m["best"]["epoch"] == 2
    assert all(same(before[n], after[n]) for n in before)  # the head's best: the backbone never moved
    # the same script with the guard off (patience 0) runs all 5 fine-tuning epochs
    script = iter([0.80, 0.90, 0.89, 0.70, 0.95, 0.95, 0.95])
    r = train(shapes_dataset, cfg(weights, tmp_path / "off", unfreeze=12, fine_tune_epochs=5, patience=0))
    assert r.metrics["phases"][1]["epochs_run"] == 5 and r.metrics["phases"][1]["stop_reason"] is None


def test_a_loss_that_becomes_nan_stops_training_and_says_so(shapes_dataset, weights, tmp_path, monkeypatch):
    """--lr inf trained on NaN losses and failed later with "model.keras reloaded predicts differently"."""
    from tledge.errors import TledgeError
    from tledge.train import finetune

    real = finetune._epoch

    def diverged(*args):
        return {**real(*args), "loss": float("nan")}
    monkeypatch.setattr(finetune, "_epoch", diverged)
    with pytest.raises(TledgeError, match=r"training loss became nan in head epoch 1 \(learning rate 0.01: too high"):
        train(shapes_dataset, cfg(weights, tmp_path / "nan", epochs=2, fine_tune_epochs=0))
    assert not (tmp_path / "nan" / "model.keras").exists()


def test_fast_path_cli_class_weights_and_fine_tune_at(tmp_path, weights, capsys):
    """--no-augment: features computed once; CLI end to end; imbalanced classes with --class-weights auto."""
    from tledge.cli import main
    from tledge.datasets import make_shapes

    data = make_shapes(tmp_path / "data", n_per_class=10, size=40)
    for f in sorted((data / "circle").iterdir())[3:]:
        f.unlink()  # 3 circles vs 10 + 10: imbalanced
    out = tmp_path / "out"
    code = main(["train", str(data), "--backbone", "mobilenet", "--alpha", "0.25", "--weights", str(weights),
                 "--size", str(SIZE), "--epochs", "3", "--fine-tune-epochs", "1", "--no-augment", "--batch", "8",
                 "--class-weights", "auto", "--fine-tune-at", "conv_pw_13", "--val-split", "0.3",
                 "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr()
    assert printed.out.startswith("val accuracy") and "files in" in printed.out
    epochs = [line for line in printed.err.splitlines() if line.startswith("[3/3] head: loss ")]
    assert len(epochs) == 1 and epochs[0].endswith(" s"), printed.err
    m = json.loads((out / "metrics.json").read_text())
    head, ft = m["phases"]
    assert head["fast_path"] is True and "feature_time_s" in head and head["trainable_weights"] == 256 * 3 + 3
    assert ft["unfrozen"]["from_layer"] == "conv_pw_13" and ft["epochs_run"] == 1
    assert m["config"]["class_weights"] == "auto"
    assert m["train_counts"] == [2, 7, 7] and m["val_counts"] == [1, 3, 3]
    w = td.class_weights(np.repeat([0, 1, 2], m["train_counts"]), 3)
    np.testing.assert_allclose(w * m["train_counts"], [16 / 3] * 3)  # each class weighs the same in total



@pytest.mark.parametrize("at", ["nosuchlayer", "9999", "unfreeze 2", "conv_pw_13_bn"])
def test_a_bad_fine_tune_at_is_refused_before_the_head_trains(tmp_path, weights, capsys, at):
    """The layer is looked up once the backbone is built, not when phase 2 starts: no head epoch is lost."""
    from tledge.cli import main
    from tledge.datasets import make_shapes

    data = make_shapes(tmp_path / "data", n_per_class=6, size=40)
    code = main(["train", str(data), "--backbone", "mobilenet", "--alpha", "0.25", "--weights", str(weights),
                 "--size", str(SIZE), "--epochs", "2", "--fine-tune-epochs", "1", "--no-augment", "--batch", "8",
                 *(["--unfreeze", "2"] if at == "unfreeze 2" else ["--fine-tune-at", at]),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err  # (--unfreeze 2 took a ReLU and the pooling: phase 2 trained the head only)
    assert code == 2 and ("--unfreeze 2" if at == "unfreeze 2" else "--fine-tune-at") in err, err
    assert "head: loss" not in err and not (tmp_path / "out" / "model.keras").exists(), err


# ---- the data path is contract.prepare ---------------------------------------------------------------
def test_training_arrays_equal_contract_prepare(tmp_path):
    import cv2

    from tledge.train.api import make_contract
    from tledge.train import distributed as dist
    from tledge.train.augment import Augment, local_batches

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        cv2.imwrite(str(tmp_path / cls / "rgb.jpg"), rng.integers(0, 255, (50, 70, 3), np.uint8))
        cv2.imwrite(str(tmp_path / cls / "gray.png"), rng.integers(0, 255, (40, 40), np.uint8))
        cv2.imwrite(str(tmp_path / cls / "rgba.png"), rng.integers(0, 255, (33, 21, 4), np.uint8))
        cv2.imwrite(str(tmp_path / cls / "deep.png"), rng.integers(0, 65535, (64, 48, 3)).astype(np.uint16))
    contract = make_contract(TrainConfig(backbone="mobilenet", weights="none", size=SIZE), ("a", "b"))
    split = td.plan(tmp_path, val_split=0.25).train
    x, y, kept = td.load(split, contract)
    assert x.dtype == np.uint8 and len(kept.files) == len(x) == 6
    # the call finetune._epoch makes without augmentation (one process, one replica): shuffled, so each batch
    # image is matched to its file through the batch's positions in x
    topo = dist.Topology(1, 1, 0, dist.Cluster(("localhost",), 0))
    seen = {}
    for b in local_batches(x, y, 4, topo.local_bounds, 0, 1, 0, weights=None, augment=None):
        assert b.x.dtype == np.float32
        seen.update({int(i): xb for i, xb in zip(b.index, b.x)})
    assert sorted(seen) == list(range(len(x)))
    for i, f in enumerate(kept.files):
        assert np.array_equal(seen[i], contract.prepare(f)), f  # exactly what the runtime feeds the model
    keep = x.copy()
    aug = Augment()(x, np.random.default_rng(1))
    assert aug.shape == x.shape and aug.dtype == np.float32 and 0 <= aug.min() and aug.max() <= 255
    assert not np.array_equal(aug, x.astype(np.float32)) and np.array_equal(x, keep)  # a copy, in training only


# ---- resume ------------------------------------------------------------------------------------------
def test_mixed_precision_run_saves_a_float32_model(shapes_dataset, weights, tmp_path):
    """precision="mixed" (what GPUs get by default) still saves float32 layers and restores the global policy."""
    import keras

    from tledge.layers import CUSTOM_OBJECTS

    out = tmp_path / "mixed"
    r = train(shapes_dataset, cfg(weights, out, epochs=2, fine_tune_epochs=0, augment=False, precision="mixed"))
    assert "mixed_float16" in r.metrics["device"]
    assert keras.mixed_precision.global_policy().name == "float32"
    m = keras.saving.load_model(str(out / "model.keras"), custom_objects=CUSTOM_OBJECTS, safe_mode=True)
    bb = next(l for l in m.layers if l.__class__.__name__ == "Functional")
    assert {l.dtype_policy.name for l in [*m.layers, *bb.layers]} == {"float32"}
    assert not bb.trainable_weights  # as trained (head only): the rebuilt copy saved every layer trainable


def test_random_init_sets_batchnorm_statistics_so_features_vary(shapes_dataset):
    """--weights none: without data-set BN statistics a random MobileNet gives ~1e-17 features for
    every image; after init_batchnorm_from_data they are O(1) and differ between images."""
    from tledge.train import model as tm
    from tledge.train.api import make_contract

    c = make_contract(TrainConfig(backbone="mobilenet", alpha=0.25, weights="none", size=SIZE), ("a", "b", "c"))
    files, _, _ = __import__("tledge.images", fromlist=["labelled_images"]).labelled_images(shapes_dataset / "train")
    x = np.stack([c.prepare(f) for f in files]).astype(np.float32)
    parts = tm.build(TrainConfig(backbone="mobilenet", alpha=0.25, weights="none", size=SIZE), c, 3)
    before = np.asarray(tm.feature_model(parts)(x[:16]))
    assert np.abs(before).max() < 1e-3  # the failure being fixed
    assert tm.init_batchnorm_from_data(parts, x) > 10
    after = np.asarray(tm.feature_model(parts)(x[:16]))
    assert 0.05 < np.abs(after).mean() < 100 and after.std(axis=0).mean() > 0.01


def test_bare_keras_ops_skip_model_h5(tmp_path):
    """keras.applications' MobileNetV3 writes hard-swish with bare keras ops (`x + 3.0`): Keras 3 saves such a
    graph to .h5 but cannot reload it, so every `tledge train --backbone mobilenet_v3_*` run ended in exit 2
    after model.keras was written. model.h5 is skipped with a warning; model.keras reloads and predicts alike."""
    import keras

    from tledge.train.report import bare_op, write_all

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3), name="pixels")
    inner_in = keras.Input((8, 8, 3))
    y = keras.layers.Conv2D(4, 3)(inner_in)
    inner = keras.Model(inner_in, keras.layers.Multiply()([y, keras.layers.ReLU(6.0)(y + 3.0) * (1.0 / 6.0)]))
    out = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inner(inp)))
    model = keras.Model(inp, out)
    plain = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(inp)))
    assert bare_op(model) is not None and bare_op(plain) is None  # found inside the nested model
    x = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype(np.float32)
    expected = np.asarray(model.predict_on_batch(x), np.float32)
    contract = contract_for("mobilenet_v3_small", 8, labels=("a", "b"))
    metrics = {"confusion_matrix": [[1, 0], [0, 1]], "history": []}
    with pytest.warns(TledgeWarning, match="model.h5 not written"):
        files = write_all(tmp_path, model, contract, metrics, x, expected)
    assert "h5" not in files and not (tmp_path / "model.h5").exists()
    assert (tmp_path / "model.keras").is_file() and (tmp_path / "metrics.json").is_file()
    assert "h5" not in json.loads((tmp_path / "metrics.json").read_text())["files"]


def test_model_h5_keras_cannot_reload_is_skipped(tmp_path):
    """InceptionResNetV2's CustomScaleLayer: Keras 3 reloads it from .keras but not from .h5 ('Unknown layer'),
    which failed `tledge train --backbone inception_resnet_v2` at the very end; a stale model.h5 goes too."""
    import keras

    from tledge.train.report import bare_op, write_all

    ctor = keras.applications.InceptionResNetV2.__module__
    scale = __import__(ctor, fromlist=["CustomScaleLayer"]).CustomScaleLayer
    inp = keras.Input((4, 4, 3), name="pixels")
    x = keras.layers.Conv2D(3, 1)(inp)
    x = scale(scale=0.2)([inp, x])
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(x)))
    assert bare_op(model) is None
    x = np.random.default_rng(0).uniform(0, 255, (4, 4, 4, 3)).astype(np.float32)
    (tmp_path / "model.h5").write_bytes(b"an earlier run")
    contract = contract_for("inception_resnet_v2", 4, labels=("a", "b"))
    with pytest.warns(TledgeWarning, match="model.h5 not written: .*CustomScaleLayer"):
        files = write_all(tmp_path, model, contract, {"confusion_matrix": [[1, 0], [0, 1]], "history": []}, x,
                          np.asarray(model.predict_on_batch(x), np.float32))
    assert "h5" not in files and not (tmp_path / "model.h5").exists() and (tmp_path / "model.keras").is_file()
