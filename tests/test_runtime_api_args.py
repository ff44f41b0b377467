"""tledge.runtime as a library (a bug hunt on the Python API): a delegate that will not load, delegates=None,
info() after close() on ONNX, classify's batch, predict on images of several shapes. Each a tledge error, not an
OSError, AttributeError or TypeError from inside."""
from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from tiny import IMAGES, TINY

from tledge.errors import ArgumentError, ImageError, ModelLoadError, ModelRunError
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


@pytest.mark.parametrize("name", ["model_int8.onnx", "model_int8.tflite"])
def test_info_after_close_is_a_model_run_error(name):
    """ONNX raised and TFLite answered, where close() says every later call raises."""
    need(name.rsplit(".", 1)[1])
    m = load(TINY / name)
    m.close()
    with pytest.raises(ModelRunError, match="is closed"):
        m.info()


@pytest.mark.parametrize("name", ["model_int8.onnx", "model_fp32.onnx", "model_int8.tflite", "model_fp32.tflite"])
def test_predict_refuses_nan_on_every_file(name):
    """The int8 ONNX file (float input, QuantizeLinear inside) turned NaN into a number and answered."""
    need(name.rsplit(".", 1)[1])
    m = load(TINY / name)
    x = m.prepare(IMAGES[0])[None].astype(np.float32)  # uint8 raw pixels for the int8 TFLite file
    x[0, :4] = np.nan
    with pytest.raises(ArgumentError, match="NaN"):
        m.predict(x)
    assert m.predict(m.prepare(IMAGES[0])[None]).shape[0] == 1


def test_nested_lists_are_one_image_and_a_0_1_resize_overshoot_is_clipped():
    """A JSON body's image (rgb.tolist()) gave one result per row (each row a grey image); a 0..1 float image with
    a cubic resize's overshoot below 0 was refused where its 0..255 twin was clipped."""
    import cv2

    need("tflite")
    m = load(TINY / "model_fp32.tflite")
    rgb = cv2.cvtColor(cv2.imread(str(IMAGES[0])), cv2.COLOR_BGR2RGB)
    want = m.classify(rgb)
    assert m.classify(rgb.tolist()) == want
    assert [r[0].index for r in m.classify([rgb.tolist(), rgb.tolist()])] == [want[0].index] * 2
    small = cv2.resize(rgb.astype(np.float32) / 255, (24, 24), interpolation=cv2.INTER_CUBIC)
    big = cv2.resize(rgb.astype(np.float32), (24, 24), interpolation=cv2.INTER_CUBIC)
    assert small.min() < 0 or small.max() > 1  # the overshoot this is about
    assert m.classify(small)[0].index == m.classify(big)[0].index
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)  # an HxW nested list was read as a (1, H, W) array
    assert m.classify(grey.tolist()) == m.classify(grey)
    bright = np.random.default_rng(0).integers(100, 256, (24, 24, 3)).astype(np.float32)
    with pytest.raises(ImageError, match="not normalised"):  # x / 127.5 - 1 of a bright photo: -0.22..1
        m.classify(bright / 127.5 - 1)


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
