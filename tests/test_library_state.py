"""tledge's library calls in a program that has set things up its own way (helper 129): the caller's Keras policy,
data format, logging and environment are neither obeyed where they would change tledge's files nor changed."""
from __future__ import annotations

import logging
import os
import warnings

import pytest
from tiny import TINY

pytest.importorskip("tensorflow")


def test_training_sets_its_own_precision_policy_and_puts_the_callers_back():
    """A caller's mixed_float16 trained a float32 (and a grayscale) run in float16 and saved float16 layers."""
    import keras

    from tledge.train.config import Precision
    from tledge.train.hardware import environment

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with environment(Precision.FLOAT32) as env:
            assert not env.mixed and keras.mixed_precision.global_policy().name == "float32"
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_backbones_build_channels_last_whatever_the_callers_data_format():
    """channels_first read (64, 64, 3) as 64 channels: "Input size must be at least 32x32" blamed the weights."""
    import keras

    from tledge import backbones

    keras.config.set_image_data_format("channels_first")
    try:
        model = backbones.build("mobilenet", (32, 32, 3), weights=None, alpha=0.25)
        assert model.output_shape[-1] == 256 and keras.config.image_data_format() == "channels_first"
    finally:
        keras.config.set_image_data_format("channels_last")


def test_imports_keep_the_callers_tensorflow_log_level(monkeypatch):
    """tf2onnx's import set TF_CPP_MIN_LOG_LEVEL=3 for the rest of the process and its children."""
    from tledge._deps import require

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    require("tf2onnx.convert")  # (as the ONNX converters import it)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


def test_absl_warnings_leave_the_root_logger_to_the_caller():
    """absl's warning() calls logging.basicConfig() on a root without handlers: a library export() left a stderr
    handler there, and the program's own basicConfig(filename=...) did nothing."""
    from absl import logging as absl_logging

    from tledge.log import root_untouched

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()
    try:
        with root_untouched():
            absl_logging.warning("a converter's warning")
        assert root.handlers == []
    finally:
        root.handlers[:] = saved


def test_cli_main_in_a_program_puts_the_environment_back(monkeypatch, capsys):
    """main() set TF_CPP_MIN_LOG_LEVEL and KERAS_BACKEND and dropped TF_ENABLE_ONEDNN_OPTS for the rest of the
    calling program."""
    from tledge.cli import CLI_ENVIRON, main

    for k in CLI_ENVIRON:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    before = {k: os.environ.get(k) for k in CLI_ENVIRON}
    for argv in (["info", str(TINY / "model_int8.tflite")], ["export", str(TINY / "no.keras")]):
        main(argv)
        assert {k: os.environ.get(k) for k in CLI_ENVIRON} == before
    capsys.readouterr()


def test_a_library_int8_export_says_when_onednn_is_off(monkeypatch):
    """`tledge export` drops TF_ENABLE_ONEDNN_OPTS=0 before TensorFlow loads (it moved the repaired weights by a
    bit); a library export() cannot, and now says so."""
    from tledge.export.pipeline import ExportConfig, warn_if_onednn_off

    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    with pytest.warns(UserWarning, match="TF_ENABLE_ONEDNN_OPTS=0"):
        warn_if_onednn_off(ExportConfig(int8=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_onednn_off(ExportConfig(int8=False))


def _warn_here(text: str) -> None:
    warnings.warn(text, UserWarning, stacklevel=1)


def test_held_warnings_keep_filters_once_per_place_and_other_threads():
    """The first warnings_held reset every module's once-per-place record and re-raised warnings without their
    module: a warning shown once came back on every load(), filters by module stopped working, and warnings other
    threads raised meanwhile were lost or put into the error's text."""
    import threading

    from tledge.errors import DataError, warnings_held

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        warnings.filterwarnings("ignore", message="filtered", module=__name__)
        for _ in range(3):
            with warnings_held():
                _warn_here("once per place")
                _warn_here("filtered by module")
        assert [str(w.message) for w in seen] == ["once per place"]
        other = threading.Thread(target=lambda: _warn_here("from a worker thread"))
        with pytest.raises(DataError) as err:
            with warnings_held(explain=True):
                other.start()
                other.join()
                warnings.warn("the reason", UserWarning)
                raise DataError("no images")
        assert str(err.value) == "no images (also found: the reason)"
        assert [str(w.message) for w in seen][-1] == "from a worker thread"


def test_export_under_a_callers_mixed_policy_is_a_float32_export(tiny_model, shapes_dataset, tmp_path):
    """export() and parity() while the caller's global policy was mixed_float16 loaded the float32 model as mixed and
    noted a false "mixed precision model ... rebuilt in float32" (parity.md, the report); the policy is the caller's
    again after."""
    import keras

    from tledge.export.pipeline import ExportConfig, export

    from tledge.export.check import parity

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        result = export(tiny_model["keras"], ExportConfig(out=tmp_path / "e", formats=("onnx",),
                                                          val=str(shapes_dataset / "val")))
        report = parity(tiny_model["keras"], [tmp_path / "e"], shapes_dataset / "val")
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert result.report.passed and report.passed
    assert "mixed precision" not in (tmp_path / "e" / "parity.md").read_text()
    assert not [n for n in report.notes if "mixed precision" in n]
