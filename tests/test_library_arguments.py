"""train() / export() called from a script with arguments of the wrong type: an ArgumentError (a TledgeError and a
ValueError) naming the field, not a TypeError from a comparison deep inside, nor a wrong value taken silently
(TrainConfig(epochs=1.5), grayscale="no")."""
from __future__ import annotations

import numpy as np
import pytest

from tledge.errors import ArgumentError
from tledge.train import TrainConfig, train


@pytest.mark.parametrize("kwargs, said", [
    (dict(epochs="5"), "TrainConfig(epochs='5'): expected int"),
    (dict(epochs=1.5), "TrainConfig(epochs=1.5): expected int"),
    (dict(size=(32, 32)), "TrainConfig(size=(32, 32)): expected int | None"),
    (dict(grayscale="no"), "TrainConfig(grayscale='no'): expected bool"),
    (dict(lr="1e-3"), "TrainConfig(lr='1e-3'): expected float"),
    (dict(backbone=5), "TrainConfig(backbone=5): expected str"),
    (dict(out=None), "TrainConfig(out=None)"),
])
def test_train_config_names_a_field_of_the_wrong_type(kwargs, said):
    with pytest.raises(ArgumentError, match=said.replace("(", r"\(").replace(")", r"\)").replace("|", r"\|")):
        TrainConfig(**kwargs)


def test_numbers_of_numpy_types_and_enum_names_are_fine():
    cfg = TrainConfig(epochs=np.int64(3), lr=np.float32(1e-3), precision="auto", class_weights="auto", out="x")
    assert cfg.epochs == 3 and cfg.precision.value == "auto"


def test_train_and_export_name_what_they_take():
    pytest.importorskip("tensorflow")
    from tledge.export.pipeline import ExportConfig, export

    with pytest.raises(ArgumentError, match="train\\(\\) takes the data folder's path, got NoneType"):
        train(None)
    with pytest.raises(ArgumentError, match="train\\(\\) takes a TrainConfig, got dict"):
        train("data", {"epochs": 1})
    with pytest.raises(ArgumentError, match="export\\(\\) takes an ExportConfig, got NoneType"):
        export("m.keras", None)
    for kwargs, field in ((dict(fidelity="0.9"), "fidelity"), (dict(input_size=48), "input_size"),
                          (dict(thresholds={"int8": 0.5}), "thresholds"), (dict(formats="tflite"), "formats")):
        with pytest.raises(ArgumentError, match=f"ExportConfig\\({field}="):
            export("m.keras", ExportConfig(**kwargs))


def test_a_file_given_as_the_data_folder_is_called_a_file(tmp_path):
    """train("x.keras") said "data folder not found: x.keras" of a file that exists."""
    from tledge.errors import DataError

    (tmp_path / "x.keras").write_bytes(b"PK")
    with pytest.raises(DataError, match="x.keras is a file: pass the folder of class folders"):
        train(tmp_path / "x.keras", TrainConfig(weights="none", out=tmp_path / "run"))
    with pytest.raises(DataError, match="data folder not found"):
        train(tmp_path / "missing", TrainConfig(weights="none", out=tmp_path / "run"))


def test_numpy_ints_nan_rates_and_path_weights(tmp_path):
    """np.int64 sizes broke Contract.for_backbone and json.dumps after an epoch; lr=nan passed every check;
    weights=Path(...) was "expected str" while out and val_dir take paths."""
    from tledge.errors import TledgeError

    cfg = TrainConfig(size=np.int64(32), batch=np.int64(4), out="x")
    assert type(cfg.size) is int and type(cfg.batch) is int
    for name in ("lr", "fine_tune_lr", "alpha", "dropout"):
        with pytest.raises(TledgeError, match=f"{name} must be a finite number"):
            TrainConfig(**{name: float("nan")})
    (tmp_path / "w.h5").write_bytes(b"x")
    assert TrainConfig(weights=tmp_path / "w.h5").weights == str(tmp_path / "w.h5")


def test_export_counts_are_checked_before_anything_loads(tmp_path):
    pytest.importorskip("tensorflow")
    from tledge.errors import TledgeError
    from tledge.export.pipeline import ExportConfig, export

    for kwargs in (dict(threads=0), dict(threads=-2), dict(calib_limit=-1), dict(val_limit=0)):
        with pytest.raises(TledgeError, match=f"ExportConfig\\({next(iter(kwargs))}="):
            export(tmp_path / "missing.keras", ExportConfig(out=tmp_path / "o", **kwargs))
        assert not (tmp_path / "o").exists()
