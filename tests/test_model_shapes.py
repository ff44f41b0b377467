"""What a classifier's outputs mean, read from the model (a bug hunt on models nobody tuned for): a sigmoid behind a
pooling layer or inside Keras 3's `model.export()` SavedModel was read as a logit (sigmoid applied twice: every image
the second label, parity PASSED against the same wrong head); several sigmoid outputs were "logits" (softmax over
them in `tledge run`); a second output was dropped and a 1-wide first output became "a binary classifier"; two
inputs, a spatial output map and an input too small for the convolutions ended in tracebacks."""
from __future__ import annotations

import pytest

pytest.importorskip("tensorflow")

from tledge.errors import ModelLoadError  # noqa: E402
from tledge.export import binary, loader  # noqa: E402


def _trunk(keras, size=32):
    i = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255.0)(i)
    return i, keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import keras

    L, d = keras.layers, tmp_path_factory.mktemp("shapes")
    i, x = _trunk(keras)
    sig = keras.Model(i, L.Dense(1, activation="sigmoid")(L.GlobalAveragePooling2D()(x)))
    sig.export(str(d / "sig_savedmodel"), verbose=False)
    i, x = _trunk(keras)
    keras.Model(i, L.GlobalAveragePooling2D()(L.Conv2D(1, 1, activation="sigmoid")(x))).save(d / "pooled.keras")
    i, x = _trunk(keras)
    logit = keras.Model(i, L.Dropout(0.1)(L.Dense(1)(L.GlobalAveragePooling2D()(x))))
    logit.save(d / "logit.keras")
    logit.export(str(d / "logit_savedmodel"), verbose=False)
    i, x = _trunk(keras)
    keras.Model(i, L.Dense(3, activation="sigmoid")(L.GlobalAveragePooling2D()(x))).save(d / "multilabel.keras")
    i, x = _trunk(keras)
    h = L.GlobalAveragePooling2D()(x)
    keras.Model(i, [L.Dense(1, name="quality")(h), L.Dense(2, activation="softmax", name="cls")(h)]).save(
        d / "two_outputs.keras")
    i, x = _trunk(keras)
    j = keras.Input((4,), name="extra")
    keras.Model([i, j], L.Dense(2, activation="softmax")(L.Concatenate()([L.GlobalAveragePooling2D()(x), j]))).save(
        d / "two_inputs.keras")
    i, x = _trunk(keras)
    keras.Model(i, L.Conv2D(2, 1, activation="softmax")(x)).save(d / "map.keras")
    i = keras.Input((None, None, 3))
    x = L.Conv2D(4, 3)(L.Conv2D(4, 3)(L.Rescaling(1 / 255.0)(i)))
    keras.Model(i, L.Dense(2, activation="softmax")(L.GlobalAveragePooling2D()(x))).save(d / "dynamic.keras")
    return d


def test_a_sigmoid_is_found_behind_pooling_and_inside_a_savedmodel_and_a_logit_stays_a_logit(models):
    for name, kind in (("sig_savedmodel", binary.SIGMOID), ("pooled.keras", binary.SIGMOID),
                       ("logit.keras", binary.LOGIT), ("logit_savedmodel", binary.LOGIT)):
        lm = loader.load_model(models / name)
        assert (lm.binary, lm.num_outputs) == (kind, 2), name
    lm = loader.load_model(models / "multilabel.keras")
    assert lm.binary is None and lm.sigmoid_scores and lm.num_outputs == 3


@pytest.mark.parametrize("name, said", [
    ("two_outputs.keras", "has 2 outputs (quality, cls): tledge exports one classifier output"),
    ("two_inputs.keras", "takes 2 inputs"),
    ("map.keras", "output has shape (None, 15, 15, 2), not (batch, classes)"),
])
def test_models_that_are_not_one_image_classifier_are_refused_by_name(models, name, said):
    with pytest.raises(ModelLoadError, match=rf"{name}.*{said.replace('(', '.').replace(')', '.')}"):
        loader.load_model(models / name)


def test_an_input_too_small_for_the_model_is_one_line(models):
    from tledge.contract import Contract

    lm = loader.load_model(models / "dynamic.keras")
    contract = Contract(height=2, width=2, labels=("a", "b"))
    with pytest.raises(ModelLoadError, match="dynamic.keras cannot run on 2x2x3 input: Negative dimension size"):
        loader.trace(lm, contract, None)


def test_multilabel_scores_are_probabilities_in_the_contract():
    import numpy as np

    from tledge.contract import Output
    from tledge.export.pipeline import output_kind

    sig = np.array([[0.44, 0.46, 0.9], [0.1, 0.2, 0.3]], np.float32)  # each a sigmoid: no sum to one
    assert output_kind(sig, sigmoid_scores=True) is Output.PROBABILITIES
    assert output_kind(sig) is Output.LOGITS


def test_a_lambda_model_loaded_with_unsafe_gets_the_keras_repairs():
    """With --unsafe the model loaded, but every Keras repair rung failed re-creating its Lambda from its config
    (safe mode) and the int8 files fell back to float."""
    import keras
    import numpy as np

    from tledge.quant import repair

    keras.utils.set_random_seed(0)
    L = keras.layers
    i = keras.Input((16, 16, 3))
    x = L.Lambda(lambda t: t / 127.5 - 1.0, name="scale")(i)
    x = L.Conv2D(8, 3, strides=2, activation="relu")(x)
    model = keras.Model(i, L.Dense(2, activation="softmax")(L.GlobalAveragePooling2D()(L.Conv2D(8, 1)(x))))
    calib = np.random.default_rng(0).uniform(0, 255, (16, 16, 16, 3)).astype(np.float32)
    fixed, _ = repair.apply(model, calib)
    assert "scale" in [layer.name for layer in fixed.layers]
    assert np.abs(repair.predict(fixed, calib) - repair.predict(model, calib)).max() < 0.05


def test_one_label_for_a_one_output_model_names_what_the_output_is(models):
    """"1 labels from --labels l1.txt but sig.keras has 2 outputs": the model has one."""
    from tledge.errors import ContractError
    from tledge.export import resolve

    lm = loader.load_model(models / "pooled.keras")
    with pytest.raises(ContractError, match="but pooled.keras has one output, a binary classifier's"):
        resolve.resolve_contract(lm, preprocess=None, input_size=None, labels=("a",), labels_from="--labels l.txt")


def test_multilabel_scores_are_said_to_be_independent_in_every_file(models, shapes_dataset, tmp_path, capsys):
    """Session 37 (a client's view): a multi-label export said "probabilities" as a softmax one does, so an ONNX or
    MediaPipe user could not tell to threshold each score rather than take the argmax."""
    import json

    import onnx

    from tledge.cli import main
    from tledge.metadata import read_standard_metadata

    (tmp_path / "labels.txt").write_text("circle\nhstripes\nvstripes\n")
    out = tmp_path / "o"
    assert main(["export", str(models / "multilabel.keras"), "--out", str(out), "--val", str(shapes_dataset / "val"),
                 "--labels", str(tmp_path / "labels.txt")]) == 0
    assert json.loads((out / "tledge.json").read_text())["extra"]["scores"] == "independent"
    results = json.loads((out / "parity.json").read_text())["results"]  # judged on the labels each file gives
    assert {r["agreement_of"] for r in results} == {"label sets"} and len(results) == 2
    assert "independent class probabilities" in onnx.load(str(out / "model_fp32.onnx")).doc_string
    desc = read_standard_metadata(out / "model_fp32.tflite").outputs[0].description
    assert desc.startswith("Independent class probabilities"), desc
    capsys.readouterr()
    assert main(["info", str(out / "model_fp32.onnx")]) == 0
    assert "probabilities (independent: a sigmoid each, multi-label)" in capsys.readouterr().out


def test_a_hard_sigmoid_output_is_a_probability(tmp_path):
    """Helper 98 (session 37): `Dense(1, activation="hard_sigmoid")` was read as a logit, a second sigmoid flipped
    the labels (20 bees of 20 where the model said 17) and parity passed; --binary-output sigmoid was refused."""
    import keras
    tf_keras = pytest.importorskip("tf_keras")

    i, x = _trunk(keras)
    keras.Model(i, keras.layers.Dense(1, activation="hard_sigmoid")(keras.layers.GlobalAveragePooling2D()(x))).save(
        tmp_path / "hs.keras")
    L = tf_keras.layers
    j = tf_keras.Input((32, 32, 3))
    y = L.GlobalAveragePooling2D()(L.Conv2D(4, 3, activation="relu")(L.Rescaling(1 / 255.0)(j)))
    tf_keras.Model(j, L.Dense(1, activation="hard_sigmoid")(y)).save(tmp_path / "hs_sm")  # a clip into 0..1
    for name in ("hs.keras", "hs_sm"):
        lm = loader.load_model(tmp_path / name)
        assert lm.binary == binary.SIGMOID, name
    assert loader.load_model(tmp_path / "hs.keras", binary_output="sigmoid").binary == binary.SIGMOID


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_a_one_output_that_is_neither_probability_nor_logit_is_refused(tmp_path, activation):
    """Helper 108 (session 39): `Dense(1, activation="tanh")` was read as a logit: sigmoid(tanh) kept every score
    within 0.27..0.73, exit 0. Refused, unless --binary-output says how to read it."""
    import keras

    i, x = _trunk(keras)
    keras.Model(i, keras.layers.Dense(1, activation=activation)(keras.layers.GlobalAveragePooling2D()(x))).save(
        tmp_path / "m.keras")
    with pytest.raises(ModelLoadError, match=f"comes from a {activation} activation.*--binary-output"):
        loader.load_model(tmp_path / "m.keras")
    assert loader.load_model(tmp_path / "m.keras", binary_output="logit").binary == binary.LOGIT
    keras.Model(i, keras.layers.Dense(3, activation=activation)(keras.layers.GlobalAveragePooling2D()(x))).save(
        tmp_path / "three.keras")
    assert loader.load_model(tmp_path / "three.keras").num_outputs == 3  # several outputs: read from their values


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_keras_model_with_an_integer_input_takes_raw_pixels_only(tmp_path, suffix):
    """A Keras model with a uint8 Input: `--preprocess tf` was cast to uint8 inside (every image the same answer,
    parity PASSED, exit 0), as a SavedModel's uint8 signature is refused."""
    import keras

    from tledge.errors import ContractError
    from tledge.export import loader, resolve

    inp = keras.Input((24, 40, 3), dtype="uint8")
    x = keras.layers.Conv2D(4, 3)(keras.layers.BatchNormalization()(inp))
    keras.Model(inp, keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))) \
        .save(tmp_path / f"m{suffix}")
    lm = loader.load_model(tmp_path / f"m{suffix}")
    assert lm.integer_input == "uint8"
    with pytest.raises(ContractError, match="takes uint8 pixels.*would be cast to uint8"):
        resolve.resolve_contract(lm, preprocess="tf", input_size=None, labels=("a", "b"))
    contract, add = resolve.resolve_contract(lm, preprocess=None, input_size=None, labels=("a", "b"))
    assert contract.norm.value == "raw" and add is None
