"""TensorFlow's transfer-learning tutorial model, as tf.keras 2 saves it: a data_augmentation Sequential
(RandomFlip), `preprocess_input` written into the model as TFOpLambda arithmetic (x / 127.5 - 1), a nested
backbone, Dropout and ONE output (a logit trained with from_logits=True, or a sigmoid).

Before: the file was refused in safe mode (TFOpLambda), and with one output every argmax was 0, so parity
reported agreement 1.000 for any int8 file. Now the arithmetic is read as Rescaling layers, the augmentation
layers pass images through during the int8 repair, and the export gives two class scores [1 - p, p]."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tledge.cli import main
from tledge.contract import Contract
from tledge.export import binary, keras2, kerasconfig, loader

tf_keras = pytest.importorskip("tf_keras")
pytest.importorskip("keras")

SIZE = 32


@pytest.fixture(scope="module")
def two_classes(shapes_dataset, tmp_path_factory) -> Path:
    """The first two classes of the shapes data set (train/ and val/)."""
    root = tmp_path_factory.mktemp("two")
    for split in ("train", "val"):
        for cls in sorted(p.name for p in (shapes_dataset / split).iterdir() if p.is_dir())[:2]:
            shutil.copytree(shapes_dataset / split / cls, root / split / cls)
    return root


def _pixels(folder: Path):
    from tledge.images import labelled_images

    c = Contract(SIZE, SIZE, norm="raw", baked=True)
    files, y, _ = labelled_images(folder)
    return np.stack([c.prepare(f) for f in files]).astype("float32"), np.asarray(y), files


def _tutorial_model(x, y, head: str):
    L = tf_keras.layers
    tf_keras.utils.set_random_seed(0)
    fin = tf_keras.Input((SIZE, SIZE, 3))
    h = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(8, 3, strides=2, use_bias=False)(fin)))
    h = L.ReLU(6.0)(L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same", use_bias=False)(h)))
    backbone = tf_keras.Model(fin, L.Conv2D(16, 1, activation="relu")(h), name="backbone")
    inp = tf_keras.Input((SIZE, SIZE, 3))
    h = tf_keras.Sequential([L.RandomFlip("horizontal")], name="data_augmentation")(inp)
    h = h / 127.5 - 1.0  # tf.keras.applications.mobilenet_v2.preprocess_input: two TFOpLambda layers
    h = L.Dropout(0.2)(L.GlobalAveragePooling2D()(backbone(h, training=False)))
    out = L.Dense(1, activation="sigmoid" if head == "sigmoid" else None)(h)
    model = tf_keras.Model(inp, out)
    model.compile(tf_keras.optimizers.Adam(0.01), tf_keras.losses.BinaryCrossentropy(from_logits=head == "logit"))
    model.fit(x, y.astype("float32"), epochs=30, batch_size=16, verbose=0)
    return model


@pytest.fixture(scope="module", params=["logit", "sigmoid"])
def tutorial(request, two_classes, tmp_path_factory):
    x, y, _ = _pixels(two_classes / "train")
    model = _tutorial_model(x, y, request.param)
    path = tmp_path_factory.mktemp("tut") / "tutorial.h5"
    model.save(path)
    return request.param, path, model


def test_the_tutorial_h5_loads_in_safe_mode_with_two_class_scores(tutorial, two_classes):
    head, path, model = tutorial
    raw = kerasconfig.read_h5_config(path)
    assert [f.class_name for f in kerasconfig.find_code(raw)] == ["TFOpLambda", "TFOpLambda"]  # as saved
    lm = loader.load_model(path)
    assert lm.kind == "keras_translated", lm.notes
    assert any("TFOpLambda arithmetic as Rescaling x2" in n and "RandomFlip.rng_type" in n for n in lm.notes)
    assert lm.binary == (binary.SIGMOID if head == "sigmoid" else binary.LOGIT) and lm.num_outputs == 2
    assert lm.baked_mode == "tf"  # x / 127.5 - 1 at the input, behind the augmentation: no --preprocess needed
    vx, vy, _ = _pixels(two_classes / "val")
    theirs = model(vx, training=False).numpy()
    assert theirs.shape[1] == 1
    np.testing.assert_allclose(np.asarray(lm.model(vx, training=False)), theirs, atol=1e-5)
    serve, _ = loader.trace(lm, Contract(SIZE, SIZE, norm="raw", baked=True), None)
    ours = loader.run_reference(serve, vx)
    p = theirs[:, 0] if head == "sigmoid" else 1 / (1 + np.exp(-theirs[:, 0]))
    np.testing.assert_allclose(ours, np.stack([1 - p, p], 1), atol=1e-5)
    assert np.mean(ours.argmax(1) == vy) > 0.7  # a trained model: the second column is the second folder


def test_a_tf_keras_model_with_tf_functions_keeps_its_preprocessing_and_its_sigmoid(two_classes, tmp_path):
    """tf.keras 2 code as old tutorials wrote it: `preprocess_input` (x / 127.5 - 1) beside other TF calls
    (`tf.reduce_mean` pooling) and `tf.math.sigmoid` on the one output: TFOpLambda layers only tf_keras builds
    (--unsafe). The preprocessing was "not baked" (the layers do not show it: --preprocess then normalised twice,
    parity PASSED) and the sigmoid was read as a logit (a second sigmoid: every image the second class)."""
    import tensorflow as tf

    x, y, _ = _pixels(two_classes / "train")
    L = tf_keras.layers
    tf_keras.utils.set_random_seed(0)
    inp = tf_keras.Input((SIZE, SIZE, 3))
    h = L.Conv2D(8, 3, strides=2, activation="relu")(inp / 127.5 - 1.0)
    out = tf.math.sigmoid(L.Dense(1)(tf.reduce_mean(h, axis=[1, 2])))
    model = tf_keras.Model(inp, out)
    model.compile(tf_keras.optimizers.Adam(0.01), tf_keras.losses.BinaryCrossentropy())
    model.fit(x, y.astype("float32"), epochs=20, batch_size=16, verbose=0)
    path = tmp_path / "old.h5"
    model.save(path)
    lm = loader.load_model(path, unsafe=True)
    assert (lm.kind, lm.baked_mode, lm.binary) == ("tf_keras", "tf", binary.SIGMOID), lm.notes
    vx, _, _ = _pixels(two_classes / "val")
    serve, _ = loader.trace(lm, Contract(SIZE, SIZE, norm="tf", baked=True), None)
    p = model(vx, training=False).numpy()[:, 0]
    np.testing.assert_allclose(loader.run_reference(serve, vx), np.stack([1 - p, p], 1), atol=1e-5)


def test_keras_archives_tf_keras_2_wrote_load(tutorial, two_classes, tmp_path, capsys):
    """.keras archives of tf.keras 2.13-2.15 (metadata keras_version 2.x, Keras 2 class modules) were refused
    ("Could not deserialize class 'Functional' ..."), with --unsafe too; TensorFlow 2.12's `.keras` is HDF5 and was
    "not a .keras (zip) archive" with no word of what to do."""
    head, _, model = tutorial
    path = tmp_path / "tutorial.keras"
    model.save(path)  # tf_keras writes the archive as tf.keras 2.15 did (keras_version "2.21.0")
    assert kerasconfig.archive_keras_version(path).startswith("2.")
    lm = loader.load_model(path)  # its arithmetic TFOpLambdas are data, as in the .h5: no --unsafe
    assert (lm.kind, lm.baked_mode) == ("tf_keras", "tf") and any("tf.keras 2.13-2.15" in n for n in lm.notes)
    vx, _, _ = _pixels(two_classes / "val")
    np.testing.assert_allclose(np.asarray(lm.model(vx, training=False)), model(vx, training=False).numpy(), atol=1e-5)
    hdf5 = tmp_path / "old.keras"
    model.save(tmp_path / "old.h5")
    (tmp_path / "old.h5").rename(hdf5)
    assert main(["export", str(hdf5), "--out", str(tmp_path / "e"), "--calib", "random"]) == 2
    assert "rename it to .h5" in capsys.readouterr().err


def test_a_lambda_from_another_python_says_why_it_cannot_load(tmp_path, capsys):
    """A Lambda's marshalled bytecode from another Python version failed as "bad marshal data", with --unsafe,
    naming neither the cause nor the way out (a SavedModel keeps TensorFlow ops)."""
    import base64

    import h5py

    inp = tf_keras.Input((8, 8, 3))
    out = tf_keras.layers.Dense(2)(tf_keras.layers.Flatten()(tf_keras.layers.Lambda(lambda x: x * 2.0)(inp)))
    path = tmp_path / "lambda.h5"
    tf_keras.Model(inp, out).save(path)
    with h5py.File(path, "r+") as f:  # bytecode this Python cannot read, as another version's is
        cfg = json.loads(f.attrs["model_config"])
        for layer in cfg["config"]["layers"]:
            if layer["class_name"] == "Lambda":
                layer["config"]["function"][0] = base64.b64encode(b"\xfe" * 40).decode() + "\n"
        f.attrs["model_config"] = json.dumps(cfg)
    assert main(["export", str(path), "--unsafe", "--preprocess", "raw", "--calib", "random", "--int8",
                 "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "marshal" in err and "the Python version that saved it" in err, err


def test_tf_keras_mixed_precision_files_are_rebuilt_in_float32(two_classes, tmp_path):
    """tf.keras 2's mixed_float16 (Keras's guide): the .h5's `Policy` dtype stopped the Keras 3 translation, tf_keras
    loaded it as it was, and the TFLite converter failed on its float16 ops (no TFLite file) while the "fp32" ONNX
    file computed in float16. Both the .h5 (translated) and the .keras archive (tf_keras) are rebuilt in float32."""
    from tledge.export import float32
    from tledge.export.baked import walk

    x, _, _ = _pixels(two_classes / "val")
    L = tf_keras.layers
    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inp = tf_keras.Input((SIZE, SIZE, 3))
        h = L.GlobalAveragePooling2D()(L.Conv2D(8, 3, activation="relu")(L.Rescaling(1 / 127.5, offset=-1)(inp)))
        model = tf_keras.Model(inp, L.Activation("softmax", dtype="float32")(L.Dense(2)(h)))
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
    want = model(x, training=False).numpy()
    for name, kind in (("mixed.h5", "keras_translated"), ("mixed.keras", "tf_keras")):
        model.save(tmp_path / name)
        lm = loader.load_model(tmp_path / name)
        assert lm.kind == kind and not float32.is_mixed(walk(lm.model)), (name, lm.notes)
        assert any("rebuilt in float32" in n for n in lm.notes), lm.notes
        assert np.abs(np.asarray(lm.model(x, training=False)) - want).max() < 0.05


def test_other_tensorflow_functions_stay_refused():
    def op(function, y):
        return {"class_name": "TFOpLambda", "name": "op", "config": {"name": "op", "function": function},
                "inbound_nodes": [["input_1", 0, 0, {"y": y, "name": None}]]}
    for layer in (op("math.sin", 1.0), op("io.write_file", 1.0), op("math.truediv", 0.0), op("math.subtract", ["1"]),
                  op("math.add", True)):
        cfg = {"class_name": "Functional", "config": {"name": "m", "layers": [layer]}}
        assert [f.class_name for f in kerasconfig.find_code(keras2.translate(cfg).config)] == ["TFOpLambda"], layer


def test_the_tutorial_model_exports_int8_with_meaningful_parity(tutorial, two_classes, tmp_path):
    head, path, model = tutorial
    out = tmp_path / "e"
    rc = main(["export", str(path), "--preprocess", "raw", "--int8", "--formats", "tflite", "--calib",
               str(two_classes / "train"), "--val", str(two_classes / "val"), "--out", str(out), "-q"])
    report = json.loads((out / "parity.json").read_text())
    assert rc == 0, report["notes"]
    assert (out / "labels.txt").read_text().split() == sorted(p.name for p in (two_classes / "val").iterdir())
    for r in report["results"]:
        assert r["classes"] == 2 and r["reference_accuracy"] > 0.7, r
    from tledge.runtime import load

    vx, vy, files = _pixels(two_classes / "val")
    rt = load(out / "model_fp32.tflite")
    got = np.array([rt.classify([f])[0][0].index for f in files])
    logit = model(vx, training=False).numpy()[:, 0]
    want = (logit > (0.5 if head == "sigmoid" else 0.0)).astype(int)
    assert np.mean(got == want) >= 0.98  # tledge run decides as the Keras model does (a photo may sit on 0.5)


def test_rescaling_and_normalization_at_the_input_are_baked_preprocessing():
    import keras

    from tledge.layers import input_rescaling

    def model(*first):
        inp = keras.Input((SIZE, SIZE, 3))
        x = inp
        for layer in first:
            x = layer(x)
        return keras.Model(inp, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(
            keras.layers.Conv2D(4, 3)(x))))
    R, N = keras.layers.Rescaling, keras.layers.Normalization
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    assert input_rescaling(model(keras.layers.RandomFlip(), R(1 / 127.5, offset=-1.0))) == "tf"
    assert input_rescaling(model(R(1 / 127.5), R(1.0, offset=-1.0))) == "tf"  # tf.keras 2's two TFOpLambdas
    assert input_rescaling(model(R(1 / 255))) == "scale"
    # EfficientNet (Keras 3): Normalization(mean, variance=std) then Rescaling(1 / sqrt(std)) with ImageNet
    # weights; EfficientNetV2-B*: the plain torch statistics; untrained EfficientNet: mean 0, variance 1
    assert input_rescaling(model(R(1 / 255), N(mean=mean, variance=std), R(list(1 / np.sqrt(std))))) == "torch"
    assert input_rescaling(model(R(1 / 255), N(mean=mean, variance=std ** 2))) == "torch"
    assert input_rescaling(model(R(1 / 255), N(mean=0.0, variance=1.0))) == "scale"
    assert input_rescaling(model(N(mean=mean * 255, variance=(std * 255) ** 2))) == "torch"  # ConvNeXt
    # a Rescaling whose map is no named mode: raw pixels in, normalised the model's own way
    assert input_rescaling(model(R(1 / 128, offset=-1.0))) == "raw"  # EfficientNetV2-S/M/L
    assert input_rescaling(model(R(1 / 255), N(mean=0.4, variance=0.05))) == "raw"
    assert input_rescaling(model(N(mean=0.4, variance=0.05))) is None  # a lone Normalization may expect 0..1
    assert input_rescaling(model()) is None
    assert input_rescaling(model(keras.layers.Conv2D(3, 1), R(1 / 255))) is None  # not the first computation


def test_an_efficientnet_takes_raw_pixels_without_preprocess(tmp_path):
    import keras

    from tledge.errors import ContractError
    from tledge.export.loader import load_model
    from tledge.export.resolve import resolve_contract

    path = tmp_path / "eff.keras"
    keras.applications.EfficientNetB0(input_shape=(32, 32, 3), weights=None, classes=2).save(path)
    lm = load_model(path)
    contract, add = resolve_contract(lm, preprocess=None, input_size=None)
    assert (contract.norm.value, contract.baked, add) == ("scale", True, None)
    assert resolve_contract(lm, preprocess="raw", input_size=None)[1] is None
    with pytest.raises(ContractError, match="normalise twice"):
        resolve_contract(lm, preprocess="torch", input_size=None)


def test_a_foreign_one_output_file_runs_as_a_two_class_classifier(tutorial, two_classes, tmp_path, capsys):
    """A one-score .tflite made elsewhere (no tledge contract): `tledge run` ranks [1 - p, p], not one score
    that is always first. An int8 file's output quantisation tells a logit from a sigmoid; a float file's
    logit is told by the op that makes it (it needed --logits before session 37)."""
    import tensorflow as tf

    from tledge.contract import Output
    from tledge.runtime import load

    head, _, model = tutorial
    vx, _, files = _pixels(two_classes / "val")
    logit = model(vx, training=False).numpy()[:, 0]
    want = (logit > (0.5 if head == "sigmoid" else 0.0)).astype(int)
    names = sorted(p.name for p in (two_classes / "val").iterdir())
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    fp32 = tmp_path / "fp32.tflite"
    fp32.write_bytes(conv.convert())
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([x[None]] for x in vx[:24])
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.uint8
    int8 = tmp_path / "int8.tflite"
    int8.write_bytes(conv.convert())

    rt = load(int8, labels=names)
    assert rt.contract.output is (Output.LOGITS if head == "logit" else Output.PROBABILITIES)
    top = [rt.classify([f])[0][0] for f in files]
    assert {t.label for t in top} <= set(names) and all(names[t.index] == t.label for t in top)
    assert np.mean(np.array([t.index for t in top]) == want) >= 0.9
    for logits in (False, True):  # a float file's logit is read from its FULLY_CONNECTED output (session 37; it
        rt = load(fp32, labels=names, preprocess="raw", logits=logits and head == "logit")  # needed --logits)
        assert rt.contract.output is (Output.LOGITS if head == "logit" else Output.PROBABILITIES)
        got = np.array([rt.classify([f])[0][0].index for f in files])
        assert np.mean(got == want) >= 0.98
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n")
    assert main(["run", str(fp32), "--source", str(files[0]), "--labels", str(tmp_path / "labels.txt"),
                 "--preprocess", "raw", "--json"] + (["--logits"] if head == "logit" else [])) == 0
    assert names[got[0]] in capsys.readouterr().out
