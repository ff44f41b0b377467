"""tledge.runtime as a library (a bug hunt on the Python API): a delegate that will not load, delegates=None,
info() after close() on ONNX, classify's batch, predict on images of several shapes. Each a tledge error, not an
OSError, AttributeError or TypeError from inside."""
from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from tiny import IMAGES, TINY

from tledge.errors import ArgumentError, ModelLoadError, ModelRunError
from tledge.runtime import load


def need(kind: str) -> None:
    mod = "onnxruntime" if kind == "onnx" else "ai_edge_litert"
    if importlib.util.find_spec(mod) is None and (kind == "onnx" or importlib.util.find_spec("tflite_runtime") is None):
        pytest.skip(f"no {mod}")


def test_a_delegate_that_will_not_load_is_a_model_load_error(recwarn):
    need("tflite")
    with pytest.raises(ModelLoadError, match="delegate library not found: /nonexistent.so"):
        load(TINY / "model_int8.tflite", delegates=["/nonexistent.so"])
    with pytest.raises(ModelLoadError, match="cannot load the TFLite delegate libtledge-none.so"):
        load(TINY / "model_int8.tflite", delegates=["libtledge-none.so"])
    if sys.platform.startswith("linux"):  # a library that opens but is no delegate
        with pytest.raises(ModelLoadError, match="libc.so.6 is not a TFLite delegate"):
            load(TINY / "model_int8.tflite", delegates=["libc.so.6"])
    assert load(TINY / "model_int8.tflite", delegates=None).classify(IMAGES[0])


def test_info_after_close_is_a_model_run_error():
    need("onnx")
    m = load(TINY / "model_int8.onnx")
    m.close()
    with pytest.raises(ModelRunError, match="is closed"):
        m.info()


@pytest.mark.parametrize("batch", [0, -1, 1.5, None, "a"])
def test_classify_batch_is_checked(batch):
    need("tflite")
    with pytest.raises(ArgumentError, match="batch must be an integer >= 1"):
        load(TINY / "model_int8.tflite").classify(IMAGES[:2], batch=batch)


def test_predict_on_inputs_of_several_shapes_says_so():
    need("tflite")
    m = load(TINY / "model_fp32.tflite")
    x = m.contract.prepare(IMAGES[0])
    with pytest.raises(ModelRunError, match="prepared images of one shape"):
        m.predict([x, x[:10]])
    assert np.asarray(m.predict([x, x])).shape[0] == 2


@pytest.mark.parametrize("size", [48, "48x48", (-1, -1), (48,), (48.0, 48)])
def test_input_size_for_a_foreign_file_is_checked(size):
    need("onnx")
    from tiny import FOREIGN

    with pytest.raises(ArgumentError, match=r"input_size takes \(height, width\)"):
        load(FOREIGN / "model_fp32.onnx", input_size=size)


def test_a_pickled_model_reloads_after_a_chdir(tmp_path, monkeypatch):
    import pickle

    need("tflite")
    monkeypatch.chdir(TINY.parent)
    m = load("tiny/model_int8.tflite")
    data = pickle.dumps(m)
    monkeypatch.chdir(tmp_path)
    assert pickle.loads(data).classify(IMAGES[0])[0].label == m.classify(IMAGES[0])[0].label
