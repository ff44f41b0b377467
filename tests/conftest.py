"""Shared fixtures. Real third-party assets live in ../shared/assets and are optional."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest_plugins = ["tledge.testing"]  # the `tledge_parity` fixture is opt-in for users too

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
USER_XDG_CACHE_HOME = os.environ.get("XDG_CACHE_HOME")  # the user's, before pytest_configure gives the tests their own



def pytest_configure(config):
    # What the code under test leaves in the temporary folder by design (the log of a stopped or crashed command,
    # kept to be read; TensorFlow's __autograph_generated_file*.py of a killed process) goes to a folder of this
    # session's own, removed at its end: a run left about 100 such files in /tmp. pytest's own tmp_path root stays.
    import tempfile

    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", tempfile.gettempdir())
    config._tledge_tmpdir = tempfile.mkdtemp(prefix="tledge-tests-")
    os.environ["TMPDIR"] = config._tledge_tmpdir
    tempfile.tempdir = None  # re-read from TMPDIR
    # A bundle's run.sh keeps its compiled code in $XDG_CACHE_HOME/tledge/pycache, else ~/.cache/tledge/pycache
    # (tledge.devices.runsh): the bundles the tests run left a tree of their pytest folders in the user's cache at
    # every session (45 MB in a day). They get this session's own; pip, which also reads XDG_CACHE_HOME, is given the
    # user's back where a test installs a venv (USER_XDG_CACHE_HOME).
    os.environ["XDG_CACHE_HOME"] = os.path.join(config._tledge_tmpdir, "cache")
    # Smoke trainings here run one or two epochs from random weights (formats, files, errors; not accuracy): their
    # val accuracy is chance, and whether it lands under the largest class's share, which the baseline warning says,
    # varies with the CPU's kernels (it failed CI once). Its own test uses pytest.warns, which this does not silence;
    # the real-data tests assert their accuracies.
    config.addinivalue_line(
        "filterwarnings", "ignore:val accuracy .* is no better than always answering:tledge.errors.TledgeWarning")


def pytest_unconfigure(config):
    import shutil

    if getattr(config, "_tledge_tmpdir", None):
        shutil.rmtree(config._tledge_tmpdir, ignore_errors=True)


REPO = Path(__file__).resolve().parents[1]
SHARED_ASSETS = REPO.parent / "shared" / "assets"


def shared_asset(*parts: str) -> Path:
    """Path under ../shared/assets, or skip the test (with a reason) where it is absent."""
    p = SHARED_ASSETS.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared asset not available: {p}")
    return p


@pytest.fixture(scope="session")
def shared_assets() -> Path:
    if not SHARED_ASSETS.is_dir():
        pytest.skip(f"../shared/assets not available at {SHARED_ASSETS}")
    return SHARED_ASSETS


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory) -> Path:
    """A tiny generated 3-class data set (train/ and val/ of class folders), made once per session."""
    from tledge.datasets import make_split_shapes

    return make_split_shapes(tmp_path_factory.mktemp("shapes"))


def build_tiny_classifier(n_classes: int = 3, size: int = 48, channels: int = 3, mode: str = "tf",
                          baked: bool = True, seed: int = 0):
    """A small conv net taking raw pixels (Preprocess baked in unless baked=False)."""
    import keras

    from tledge.layers import Preprocess

    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, channels), name="pixels")
    x = Preprocess(mode, channels=channels, name="preprocess")(inp) if baked else inp
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)  # conv -> BN -> ReLU folds, as in real backbones
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(32, 1, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(n_classes, activation="softmax")(x)
    return keras.Model(inp, out)


def train_tiny(model, folder: Path, contract, epochs: int = 60):
    """Fit on a folder of class folders through contract.prepare, so predictions are confident."""
    from tledge.images import labelled_images

    files, y, _ = labelled_images(folder)
    x = np.stack([contract.prepare(f) for f in files]).astype("float32")
    if not contract.baked:
        x = np.stack([contract.replace(baked=False).prepare(f) for f in files])
    import keras

    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=16, verbose=0)
    return model


@pytest.fixture(scope="session")
def tiny_model(shapes_dataset, tmp_path_factory):
    """A tiny trained 3-class model (48 px, tf preprocessing baked), saved as .keras and .h5."""
    from tledge.contract import Contract

    contract = Contract(48, 48, norm="tf", baked=True, input_dtype="float32",
                        labels=("circle", "hstripes", "vstripes"))
    model = train_tiny(build_tiny_classifier(), shapes_dataset / "train", contract)
    d = tmp_path_factory.mktemp("tiny_model")
    model.save(d / "model.keras")
    model.save(d / "model.h5")
    return {"dir": d, "keras": d / "model.keras", "h5": d / "model.h5", "contract": contract, "model": model}


@pytest.fixture(scope="session")
def tiny_export(tiny_model, shapes_dataset):
    """`tledge export model.keras --int8 --fp16 --dynamic` of the tiny model, made once per session."""
    from tledge.export.pipeline import ExportConfig, export

    cfg = ExportConfig(out=tiny_model["dir"] / "export", int8=True, fp16=True, dynamic=True,
                       calib=str(shapes_dataset / "train"), val=str(shapes_dataset / "val"))
    return export(tiny_model["keras"], cfg)


@pytest.fixture(scope="session")
def tiny_savedmodel_tflite(tiny_model, shapes_dataset, tmp_path_factory):
    """The tiny trained model as a SavedModel exported to fp32 + plain int8 TFLite (no repair loop):
    (export result, the calibration pixels, the folder). For the TFLite graph techniques' tests."""
    import numpy as np

    from tledge.export.pipeline import ExportConfig, export
    from tledge.images import labelled_images

    d = tmp_path_factory.mktemp("savedmodel_tflite")
    tiny_model["model"].export(str(d / "sm"), verbose=False)
    cfg = ExportConfig(out=d / "e", formats=("tflite",), int8=True, calib=str(shapes_dataset / "train"),
                       preprocess="raw", val=str(shapes_dataset / "val"), repair=False)
    res = export(d / "sm", cfg)
    files, _, _ = labelled_images(shapes_dataset / "train")
    calib = np.stack([tiny_model["contract"].prepare(f) for f in files]).astype(np.float32)
    return res, calib, d


def tiny_savedmodel_int8_only_export(tiny_model, shapes_dataset, tmp_path):
    """The tiny model as a SavedModel, exported to an int8-only TFLite file under an impossible budget, so every
    rung of the int8-only ladder runs. Returns the export result (folder tmp_path / "e")."""
    from tledge.export.parity import Thresholds
    from tledge.export.pipeline import ExportConfig, export

    tiny_model["model"].export(str(tmp_path / "sm"), verbose=False)
    cfg = ExportConfig(out=tmp_path / "e", formats=("tflite",), int8=True, calib=str(shapes_dataset / "train"),
                       preprocess="raw", val=str(shapes_dataset / "val"), int8_only=True,
                       thresholds={"int8": Thresholds(max_abs=1e-9, min_agreement=1.0)})
    return export(tmp_path / "sm", cfg)


@pytest.fixture(scope="session")
def unbaked_model(shapes_dataset, tmp_path_factory):
    """A tiny trained model as a third party ships it: plain .keras with no tledge.json and no labels,
    normalisation NOT baked (it takes x/127.5-1)."""
    from tledge.contract import Contract

    contract = Contract(48, 48, norm="tf", baked=False, input_dtype="float32")
    model = train_tiny(build_tiny_classifier(baked=False), shapes_dataset / "train", contract)
    d = tmp_path_factory.mktemp("unbaked")
    model.save(d / "m.keras")
    return {"keras": d / "m.keras", "model": model, "contract": contract}
