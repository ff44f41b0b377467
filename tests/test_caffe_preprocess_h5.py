"""caffe's `preprocess_input` (ResNet50, VGG16/19) written into a tf.keras 2 model (session 37): tf_keras saves it
as a channel flip (`x[..., ::-1]`, a SlicingOpLambda) and a `tf.nn.bias_add` of minus the ImageNet means. The
export refused it without --unsafe ("code in the model file"); the pair is now read as data and loads as Keras 3
in safe mode, with its preprocessing found, and the file computes what tf_keras computes."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")
tf_keras = pytest.importorskip("tf_keras")

from tledge.cli import main  # noqa: E402
from tledge.export import kerasconfig, keras2, loader  # noqa: E402


def _model(path, family="resnet50"):
    L = tf_keras.layers
    tf_keras.utils.set_random_seed(0)
    i = tf_keras.Input((24, 24, 3))
    x = getattr(tf_keras.applications, family).preprocess_input(i) if family else i[..., ::-1]
    small = tf_keras.initializers.RandomNormal(stddev=0.01, seed=0)  # scores that vary from image to image
    x = L.GlobalAveragePooling2D()(L.Conv2D(4, 3, activation="relu", kernel_initializer=small)(x))
    m = tf_keras.Model(i, L.Dense(2, activation="softmax")(x))
    m.save(path)
    return m


@pytest.mark.parametrize("family, mode", [("resnet50", "caffe"), ("densenet", "torch")])
def test_caffe_preprocess_input_loads_in_safe_mode_and_computes_the_same(family, mode, tmp_path):
    """(DenseNet's torch preprocess_input is scalar and per-channel arithmetic: `x / 255`, `x - mean`, `x / std`,
    the last two with a list: read as per-channel Rescaling layers since session 37.)"""
    import cv2

    original = _model(tmp_path / "resnet_like.h5", family)
    lm = loader.load_model(tmp_path / "resnet_like.h5")
    assert lm.kind == "keras_translated" and lm.baked_mode == mode, (lm.kind, lm.baked_mode)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (6, 24, 24, 3)).astype(np.float32) * rng.uniform(0.1, 1, (6, 1, 1, 3)).astype(np.float32)
    want = original.predict(x, verbose=0)
    assert np.abs(np.asarray(lm.model(x)) - want).max() < 1e-5 and np.ptp(want[:, 0]) > 0.005
    for c in ("a", "b"):
        (tmp_path / "val" / c).mkdir(parents=True)
        for k in range(4):
            cv2.imwrite(str(tmp_path / "val" / c / f"{k}.png"), rng.integers(0, 256, (30, 30, 3), dtype=np.uint8))
    assert main(["export", str(tmp_path / "resnet_like.h5"), "--formats", "tflite", "--val", str(tmp_path / "val"),
                 "--out", str(tmp_path / "e")]) == 0
    from tledge.runtime import load

    rt = load(tmp_path / "e" / "model_fp32.tflite")
    assert rt.contract.baked and rt.contract.norm.value == mode
    files = sorted((tmp_path / "val").rglob("*.png"))
    px = np.stack([rt.prepare(f) for f in files]).astype(np.float32)
    got = np.array([[p.score for p in sorted(r, key=lambda p: p.index)] for r in rt.classify(files, top_k=2)])
    assert np.abs(got - original.predict(px, verbose=0)).max() < 1e-4


def test_only_the_flip_and_numeric_bias_read_as_data():
    def layer(cls, function, kwargs):
        return {"class_name": cls, "name": "op", "config": {"name": "op", "function": function},
                "inbound_nodes": [["input_1", 0, 0, kwargs]]}
    flip = [{"class_name": "__ellipsis__"}, {"start": None, "stop": None, "step": -1}]
    assert keras2.reads_as_data(layer("SlicingOpLambda", "__operators__.getitem", {"slice_spec": flip}))
    assert keras2.reads_as_data(layer("TFOpLambda", "nn.bias_add", {"bias": [1.0, 2.0, 3.0]}))
    for bad in (layer("SlicingOpLambda", "__operators__.getitem", {"slice_spec": flip[:1]}),
                layer("SlicingOpLambda", "io.write_file", {"slice_spec": flip}),
                layer("TFOpLambda", "nn.bias_add", {"bias": "x"}),
                layer("TFOpLambda", "nn.bias_add", {"bias": [1.0], "value": 2})):
        assert not keras2.reads_as_data(bad), bad
        cfg = {"class_name": "Functional", "config": {"name": "m", "layers": [bad]}}
        assert kerasconfig.find_code(keras2.translate(cfg).config), bad


def test_a_flip_alone_loads_without_unsafe_through_tf_keras(tmp_path):
    original = _model(tmp_path / "flip.h5", family=None)
    lm = loader.load_model(tmp_path / "flip.h5")
    x = np.random.default_rng(1).uniform(0, 255, (4, 24, 24, 3)).astype(np.float32)
    assert np.abs(np.asarray(lm.model(x)) - original.predict(x, verbose=0)).max() < 1e-5
