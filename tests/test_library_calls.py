"""tledge as a notebook calls it (helper 138): an export into another model's train run replaced that run's
tledge.json and labels.txt (exit 0); with_preprocessing() normalised a tledge-trained model twice; train() and the
demo left the caller's random generators reseeded; out="" trained into the current folder; Paths and `~` in an
ExportConfig were refused or made a folder named `~`; threads=2.5 was 2; run_demo(n_train="50") a TypeError."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

from tledge.errors import ArgumentError, ContractError, TledgeError


def test_an_export_into_another_models_train_run_is_refused(tmp_path):
    from tledge.export.pipeline import ExportConfig, export
    from tledge.export.unit import refuse_other_run

    run = tmp_path / "run_shapes"
    run.mkdir()
    for name in ("model.keras", "metrics.json", "tledge.json", "labels.txt"):
        (run / name).write_text("x")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(TledgeError, match="is the tledge train run of another model"):
        export(tmp_path / "run_ants" / "model.keras", ExportConfig(out=run, formats=("onnx",)))
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    refuse_other_run(run, run / "model.keras")  # its own model may export there
    refuse_other_run(tmp_path / "new", tmp_path / "m.keras")


def test_with_preprocessing_refuses_a_model_that_normalises_itself():
    keras = pytest.importorskip("keras")
    from tledge.backbones import contract_for
    from tledge.layers import with_preprocessing

    contract = contract_for("mobilenet", 32)
    i = keras.Input((32, 32, 3))
    plain = keras.Model(i, keras.layers.GlobalAveragePooling2D()(i))
    x = np.full((1, 32, 32, 3), 255.0, np.float32)
    assert np.allclose(np.asarray(with_preprocessing(plain, contract)(x)), 1.0)  # tf: 255 -> 1.0
    j = keras.Input((32, 32, 3))
    baked = keras.Model(j, keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 127.5, -1,
                                                                                          name="tledge_preprocess")(j)))
    with pytest.raises(ContractError, match="normalises its input itself"):
        with_preprocessing(baked, contract)


def test_training_puts_the_callers_random_generators_back():
    pytest.importorskip("keras")
    from tledge.train.hardware import seeded

    random.seed(7)
    np.random.seed(12345)
    want = (random.random(), np.random.rand())
    random.seed(7)
    np.random.seed(12345)
    with seeded(0):
        assert np.random.rand() == np.random.RandomState(0).rand()  # the run's own seed inside
    assert (random.random(), np.random.rand()) == want


def test_a_nan_loss_stored_as_null_is_no_crash_on_resume():
    from tledge.train.finetune import _better  # (the comparison itself is what broke)

    assert _better(0.5, 0.3, [0.5, None, "head", 1]) and not _better(0.4, 0.3, [0.5, None, "head", 1])


def test_config_paths_as_a_notebook_gives_them(tmp_path, monkeypatch):
    from tledge.export.config import ExportConfig
    from tledge.train.config import TrainConfig

    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = ExportConfig(out="~/exports/a", val=tmp_path / "val", calib="random", labels=Path("l.txt"))
    assert cfg.out == tmp_path / "exports" / "a" and cfg.val == str(tmp_path / "val") and cfg.calib == "random"
    assert cfg.labels == "l.txt"
    with pytest.raises(ArgumentError, match="empty"):
        ExportConfig(val="")
    assert TrainConfig(out="~/runs/a").out == tmp_path / "runs" / "a"
    (tmp_path / "w.h5").write_bytes(b"x")
    assert TrainConfig(weights="~/w.h5").weights == str(tmp_path / "w.h5")
    assert ExportConfig(calib="./random").calib == "./random" and ExportConfig(calib=Path("random")).calib != "random"
    assert ExportConfig(calib="random").calib == "random"  # the noise keyword, only as that exact string
    for bad in ({"out": ""}, {"out": " "}, {"val_dir": ""}):
        with pytest.raises(TledgeError, match="empty"):
            TrainConfig(**bad)
    assert not (Path(os.getcwd()) / "~").exists()


def test_library_numbers_are_checked_not_coerced(tmp_path):
    from tledge.demo import run_demo
    from tledge.devices.options import resolve

    for bad in (2.5, True, "2"):
        with pytest.raises(TledgeError, match="threads must be an integer"):
            resolve("rpi4", threads=bad)
    assert resolve("rpi4", threads=np.int64(2)).threads == 2
    for kwargs in ({"n_train": "50"}, {"size": 64.0}):
        with pytest.raises(TledgeError, match="must be an integer"):
            run_demo(tmp_path / "d", **kwargs)
    with pytest.raises(TledgeError, match="size must be >= 32"):  # numpy's int64 is an integer
        run_demo(tmp_path / "d", n_train=np.int64(50), size=np.int64(16))
    assert not (tmp_path / "d").exists()
