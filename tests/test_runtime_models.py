"""Tiny exported models for the runtime tests, and their round trips.

A small Keras conv net at 32 px is trained a few steps on the generated shapes data set, then
converted in-process: TFLite fp32 and int8 (uint8 I/O) with tf.lite.TFLiteConverter, ONNX fp32
with tf2onnx and ONNX int8 (QDQ) with onnxruntime; contracts embedded with tledge.export.metadata.
TensorFlow is used here to *make* the files only. Conversions cost ~10 s each, so the files are
cached in pytest's cache folder under a key of this file's builder code and the TF version
(TLEDGE_TEST_NO_CACHE=1 rebuilds them).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from tledge import datasets
from tledge.contract import Contract, Norm, Quant

SIZE = 32
CLASSES = tuple(datasets.SHAPE_CLASSES)
FILES = {"fp32.tflite": ("tflite", "fp32"), "int8.tflite": ("tflite", "int8"),
         "fp32.onnx": ("onnx", "fp32"), "int8.onnx": ("onnx", "int8")}
_BUILT: dict[str, Path] = {}


def base_contract() -> Contract:
    return Contract(height=SIZE, width=SIZE, norm=Norm.TF, baked=True, input_dtype="float32", labels=CLASSES)


def _train(data: Path):
    import keras

    from tledge.images import labelled_images

    c = base_contract()
    files, y, _ = labelled_images(data / "train", CLASSES)
    x = c.prepare_batch(files).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((SIZE, SIZE, 3)), keras.layers.Rescaling(1 / 127.5, offset=-1),
        keras.layers.Conv2D(16, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(16, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(len(CLASSES), activation="softmax")])
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=16, epochs=40, verbose=0)
    return model, x


def _build(data: Path, out: Path) -> None:
    import tensorflow as tf

    from tledge.images import labelled_images

    model, calib = _train(data)
    (out / "foreign").mkdir()
    serve = tf.function(lambda x: model(x, training=False),
                        input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32, name="pixels")])
    c = base_contract()
    val, _, _ = labelled_images(data / "val", CLASSES)
    val_x = c.prepare_batch(val).astype("float32")
    np.savez(out / "reference.npz", x=val_x, y=model.predict(val_x, verbose=0))
    _build_tflite(serve, calib, c, out)
    _build_onnx(serve, calib, c, out)


def _build_tflite(serve, calib: np.ndarray, c: Contract, out: Path) -> None:
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from tledge.export.metadata import embed_tflite

    concrete = serve.get_concrete_function()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([concrete], serve)
    (out / "fp32.tflite").write_bytes(embed_tflite(conv.convert(), c))

    def rep():
        for i, x in enumerate(calib):  # every class: calibration must see them all
            x = np.array(x[None], np.float32)
            if i == 0:  # a 0 and a 255 pixel: the uint8 input is then exactly scale 1, zero point 0
                x[0, 0, 0], x[0, 0, 1] = 0.0, 255.0
            yield [x]

    conv = tf.lite.TFLiteConverter.from_concrete_functions([concrete], serve)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.uint8
    with warnings.catch_warnings():  # "Statistics for quantized inputs were expected": they are in rep()
        warnings.simplefilter("ignore", UserWarning)
        data8 = conv.convert()
    it = Interpreter(model_content=data8)
    qi, qo = it.get_input_details()[0]["quantization"], it.get_output_details()[0]["quantization"]
    c8 = c.for_file(input_dtype="uint8", input_quant=Quant(qi[0], qi[1]), output_quant=Quant(qo[0], qo[1]))
    (out / "int8.tflite").write_bytes(embed_tflite(data8, c8))
    (out / "foreign" / "int8.tflite").write_bytes(data8)  # as made elsewhere: no tledge metadata


def _build_onnx(serve, calib: np.ndarray, c: Contract, out: Path) -> None:
    import onnx
    import tf2onnx
    from onnxruntime import quantization as q

    from tledge.export.metadata import embed_onnx
    from tledge.export.onnx import _rename_io

    onnx_model, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=17)
    onnx_model = _rename_io(onnx_model)  # pixels -> scores, dynamic batch, as the exporter names them
    (out / "foreign" / "fp32.onnx").write_bytes(onnx_model.SerializeToString())
    embed_onnx(onnx_model, c)
    (out / "fp32.onnx").write_bytes(onnx_model.SerializeToString())

    class Reader:
        def __init__(self):
            self.items = iter(calib)

        def get_next(self):
            x = next(self.items, None)
            return None if x is None else {"pixels": x[None].astype(np.float32)}

    softmax = [n.name for n in onnx_model.graph.node if n.op_type == "Softmax"]  # probabilities stay float
    q.quantize_static(str(out / "fp32.onnx"), str(out / "int8.onnx"), Reader(), quant_format=q.QuantFormat.QDQ,
                      activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8, per_channel=True,
                      nodes_to_exclude=softmax)
    m8 = onnx.load(str(out / "int8.onnx"))
    embed_onnx(m8, c)
    (out / "int8.onnx").write_bytes(m8.SerializeToString())


def _cache_key() -> str:
    import importlib.metadata as md

    src = "".join(inspect.getsource(f) for f in (_train, _build, _build_tflite, _build_onnx, base_contract)) + \
        inspect.getsource(datasets)  # the training data changes with the generator
    def version(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "-"

    versions = ";".join(version(p) for p in ("tensorflow", "tensorflow-cpu", "onnxruntime", "tf2onnx"))
    return hashlib.sha256((src + versions).encode()).hexdigest()[:16]


def build_tiny_models(cache_root: Path, data: Path) -> Path:
    """The four tiny files (+ reference.npz) in a cached folder; builds them once."""
    key = _cache_key()
    if key in _BUILT:
        return _BUILT[key]
    out = cache_root / key
    if os.environ.get("TLEDGE_TEST_NO_CACHE") == "1" and out.exists():
        shutil.rmtree(out)
    if not (out / "done.json").is_file():
        pytest.importorskip("tensorflow", reason="building the tiny runtime models needs TensorFlow "
                                                 "(the runtime-only venv uses tests/assets instead)")
        tmp = cache_root / f"{key}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _build(data, tmp)
        (tmp / "done.json").write_text(json.dumps({"key": key}))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        for old in cache_root.iterdir():  # files of older builder versions
            if old.is_dir() and old != out and ".tmp" not in old.name:
                shutil.rmtree(old, ignore_errors=True)
    _BUILT[key] = out
    return out


@pytest.fixture(scope="session")
def tiny_models(request, tmp_path_factory, shapes_dataset) -> Path:
    """Folder with fp32/int8 .tflite/.onnx files of one tiny trained 3-class model (32 px), and
    foreign/ with an int8 .tflite and an fp32 .onnx of it without tledge metadata."""
    cache = getattr(request.config, "cache", None)  # absent with -p no:cacheprovider
    root = cache.mkdir("tledge_runtime_models") if cache else tmp_path_factory.mktemp("tledge_runtime_models")
    return build_tiny_models(Path(root), shapes_dataset)


# ---- round trips --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(FILES))
def test_round_trip_matches_keras(tiny_models, name):
    from tledge.runtime import load

    ref = np.load(tiny_models / "reference.npz")
    model = load(tiny_models / name, threads=1)
    assert model.contract.labels == CLASSES and model.contract.height == SIZE
    assert model.format == FILES[name][0]
    x = model.contract.prepare_batch(list(ref["x"].astype(np.uint8)))
    out = model.predict(x)
    assert out.shape == ref["y"].shape and out.dtype == np.float32
    agree = np.mean(out.argmax(1) == ref["y"].argmax(1))
    if FILES[name][1] == "fp32":
        np.testing.assert_allclose(out, ref["y"], atol=1e-4)
    else:
        assert agree >= 0.9 and np.abs(out - ref["y"]).max() < 0.25
    assert np.median(ref["y"].max(1)) > 0.8  # the tiny model is confident: agreement means something


@pytest.mark.parametrize("name", sorted(FILES))
def test_classify_labels_val_images(tiny_models, shapes_dataset, name):
    from tledge.images import labelled_images
    from tledge.runtime import load

    files, y, _ = labelled_images(shapes_dataset / "val", CLASSES)
    model = load(tiny_models / name)
    preds = model.classify(files, top_k=2)
    assert all(len(p) == 2 and p[0].score >= p[1].score for p in preds)
    acc = np.mean([p[0].label == CLASSES[t] for p, t in zip(preds, y)])
    assert acc >= 0.85
    # predict on one prepared image (no batch axis) equals the batched call
    one = model.predict(model.contract.prepare(files[0]))
    np.testing.assert_allclose(one[0], model.predict(model.contract.prepare_batch(files[:2]))[0], atol=1e-6)
