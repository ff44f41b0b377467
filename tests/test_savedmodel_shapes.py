"""SavedModels as TensorFlow users wrote them before Keras 3 (session 37, helper 97): an integer-input signature
took normalised pixels cast to uint8 (0.55 agreement, parity PASSED); a normalisation whose input also fed
`tf.shape` was not seen (normalised twice, PASSED); a sigmoid clipped away from 0 and 1 was read as a logit (a
second sigmoid, PASSED); --binary-output overrode a sigmoid the graph shows; class ids and names were taken for
scores; a channels-first input was read as 64 channels."""
from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from tledge.errors import ContractError, ModelLoadError  # noqa: E402
from tledge.export import binary, loader  # noqa: E402

S = 8


class Shapes(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, S, S, 3], tf.uint8, name="x")])
    def uint8(self, x):
        y = tf.image.per_image_standardization(tf.cast(x, tf.float32))
        return {"probabilities": tf.nn.softmax(tf.reduce_mean(y, axis=[1, 2])[:, :2])}

    @tf.function(input_signature=[tf.TensorSpec([None, S, S, 3], tf.float32, name="x")])
    def shaped(self, x):
        h = x / 127.5 - 1.0
        return {"probabilities": tf.nn.softmax(tf.reshape(h, [tf.shape(x)[0], -1])[:, :2])}

    @tf.function(input_signature=[tf.TensorSpec([None, S, S, 3], tf.float32, name="x")])
    def clipped(self, x):
        p = tf.sigmoid(tf.reduce_mean(x, axis=[1, 2, 3], keepdims=False)[:, None] / 64.0 - 2.0)
        return {"probability": tf.clip_by_value(p, 1e-6, 1 - 1e-6)}

    @tf.function(input_signature=[tf.TensorSpec([None, S, S, 3], tf.float32, name="x")])
    def estimator(self, x):
        logits = tf.reduce_mean(x, axis=[1, 2])[:, :2] / 255.0
        return {"probabilities": tf.nn.softmax(logits), "class_ids": tf.argmax(logits, axis=1)[:, None],
                "classes": tf.strings.as_string(tf.argmax(logits, axis=1))}

    @tf.function(input_signature=[tf.TensorSpec([1, S, S, 3], tf.float32, name="x")])
    def batch1(self, x):
        m = tf.reduce_mean(x, axis=[1, 2]) / 255.0 * tf.constant([[4.0, 1.0, 0.0]])
        return {"probabilities": tf.nn.softmax(tf.reshape(m, [1, -1])[:, :2] - tf.constant([[1.5, 0.0]]))}

    @tf.function(input_signature=[tf.TensorSpec([None, 3, 64, 64], tf.float32, name="x")])
    def nchw(self, x):
        return {"probabilities": tf.nn.softmax(tf.reduce_mean(x, axis=[2, 3])[:, :2])}


@pytest.fixture(scope="module")
def shapes_sm(tmp_path_factory):
    m = Shapes()
    folder = tmp_path_factory.mktemp("sm") / "shapes_sm"
    tf.saved_model.save(m, str(folder), signatures={k: getattr(m, k) for k in
                                                     ("uint8", "shaped", "clipped", "estimator", "nchw",
                                                      "batch1")})
    return folder


def test_an_integer_input_takes_raw_pixels_only(shapes_sm):
    from tledge.export import resolve

    lm = loader.load_model(shapes_sm, signature="uint8")
    assert lm.integer_input == "uint8"
    with pytest.raises(ContractError, match="takes uint8 pixels.*would be cast to uint8"):
        resolve.resolve_contract(lm, preprocess="tf", input_size=None, labels=("a", "b"))
    contract, add = resolve.resolve_contract(lm, preprocess=None, input_size=None, labels=("a", "b"))
    assert contract.norm.value == "raw" and add is None


def test_a_normalisation_beside_a_shape_read_is_found(shapes_sm):
    assert loader.load_model(shapes_sm, signature="shaped").baked_mode == "tf"


def test_a_clipped_sigmoid_is_a_sigmoid_and_the_option_cannot_contradict_it(shapes_sm):
    assert loader.load_model(shapes_sm, signature="clipped").binary == binary.SIGMOID
    with pytest.raises(ModelLoadError, match="one output is a sigmoid, read from the model: --binary-output logit"):
        loader.load_model(shapes_sm, signature="clipped", binary_output="logit")


@pytest.mark.parametrize("output, dtype", [("class_ids", "int64"), ("classes", "string")])
def test_class_ids_and_names_are_no_scores(shapes_sm, output, dtype):
    with pytest.raises(ModelLoadError, match=rf"output '{output}' of signature 'estimator' is {dtype}, not scores; "
                                             r"its float outputs: probabilities"):
        loader.load_model(shapes_sm, signature=f"estimator:{output}")
    lm = loader.load_model(shapes_sm, signature="estimator:probabilities")
    x = np.random.default_rng(0).uniform(0, 255, (2, S, S, 3)).astype(np.float32)
    assert np.asarray(lm.model(x)).shape == (2, 2)


def test_a_channels_first_signature_is_said_so(shapes_sm):
    with pytest.raises(ModelLoadError, match=r"takes channels-first images \(3, 64, 64\)"):
        loader.load_model(shapes_sm, signature="nchw")


def test_a_graph_that_fixes_the_batch_exports_tflite_only(shapes_sm, shapes_dataset, tmp_path, capsys):
    """(Its ONNX file was declared for any batch and failed on parity's 32; --int8 ended in a traceback.)"""
    import shutil

    from tledge.cli import main

    val = tmp_path / "val"
    for c in ("circle", "hstripes"):
        shutil.copytree(shapes_dataset / "val" / c, val / c)
    args = ["export", str(shapes_sm), "--signature", "batch1", "--preprocess", "raw", "--val", str(val)]
    assert main(args + ["--out", str(tmp_path / "a")]) == 2
    assert "runs one image at a time only" in capsys.readouterr().err.strip().splitlines()[-1]
    assert main(args + ["--out", str(tmp_path / "b"), "--formats", "tflite"]) == 0
