"""`--signature KEY[:OUTPUT]` (session 37): a SavedModel whose serving_default takes encoded JPEG strings (as TF
Serving exports have it) and whose image signature gives several outputs (Estimator-era `logits` and
`probabilities`) was refused with no way to choose. The model here is no trained net but a fixed function that
tells the generated shapes apart by their gradients (vertical: hstripes, horizontal: vstripes), so the exported
file is checked against outputs that differ from image to image and class to class."""
from __future__ import annotations

import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from tledge.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def two_signatures(tmp_path_factory):
    class Shapes(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def jpeg(self, data):
            x = tf.map_fn(lambda b: tf.image.resize(tf.image.decode_jpeg(b, channels=3), [48, 48]), data,
                          fn_output_signature=tf.float32)
            return {"probabilities": tf.nn.softmax(self.logits(x))}

        @tf.function(input_signature=[tf.TensorSpec([None, 48, 48, 3], tf.float32, name="pixels")])
        def images(self, x):
            y = self.logits(x)
            return {"logits": y, "probabilities": tf.nn.softmax(y)}

        def logits(self, x):
            g = tf.reduce_mean(tf.abs(x[:, 1:] - x[:, :-1]), axis=[1, 2, 3])  # along columns: hstripes
            h = tf.reduce_mean(tf.abs(x[:, :, 1:] - x[:, :, :-1]), axis=[1, 2, 3])  # along rows: vstripes
            return tf.stack([tf.fill(tf.shape(g), 6.0), g / 4, h / 4], axis=1)

    m = Shapes()
    folder = tmp_path_factory.mktemp("sig") / "shapes_sm"
    tf.saved_model.save(m, str(folder), signatures={"serving_default": m.jpeg, "images": m.images})
    return folder, m


def test_a_jpeg_serving_default_names_the_other_signatures(two_signatures, shapes_dataset, tmp_path, capsys):
    folder, _ = two_signatures
    args = ["export", str(folder), "--out", str(tmp_path / "o"), "--formats", "tflite", "--preprocess", "raw",
            "--val", str(shapes_dataset / "val"), "--labels", str(tmp_path / "labels.txt")]
    (tmp_path / "labels.txt").write_text("circle\nhstripes\nvstripes\n")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'serving_default' takes image_bytes string" in err[0] and "images" in err[0], err
    assert main(args + ["--signature", "images"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 outputs (logits, probabilities)" in err[0] and "--signature images:OUTPUT" in err[0]
    assert main(args + ["--signature", "images:scores"]) == 2
    assert "has no output 'scores'; it has: logits, probabilities" in capsys.readouterr().err
    assert main(args + ["--signature", "serve"]) == 2
    assert "no signature 'serve'; it has: images, serving_default" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_chosen_output_is_exported_recorded_and_checked_again(two_signatures, shapes_dataset, tmp_path):
    folder, module = two_signatures
    (tmp_path / "labels.txt").write_text("circle\nhstripes\nvstripes\n")
    out = tmp_path / "o"
    assert main(["export", str(folder), "--out", str(out), "--formats", "tflite", "--preprocess", "raw", "--val",
                 str(shapes_dataset / "val"), "--labels", str(tmp_path / "labels.txt"), "--signature",
                 "images:probabilities"]) == 0
    assert json.loads((out / "manifest.json").read_text())["source"]["signature"] == "images:probabilities"
    from tledge.images import iter_image_files
    from tledge.runtime import load

    m = load(out / "model_fp32.tflite")
    files = sorted(iter_image_files(shapes_dataset / "val"))
    x = np.stack([m.prepare(f) for f in files]).astype(np.float32)
    want = module.images(tf.constant(x))["probabilities"].numpy()
    got = np.array([[p.score for p in sorted(r, key=lambda p: p.index)] for r in m.classify(files, top_k=3)])
    assert np.abs(got - want).max() < 1e-4 and want.max(axis=1).min() < 0.9  # the probabilities, not flat ones
    acc = np.mean([f.parent.name == m.contract.labels[i] for f, i in zip(files, want.argmax(axis=1))])
    assert acc > 0.6  # the fixed function does tell the shapes apart
    assert main(["parity", str(folder), str(out / "model_fp32.tflite"), "--images",
                 str(shapes_dataset / "val")]) == 0  # the recorded signature, not serving_default's JPEG input


def test_signature_on_a_keras_file_is_refused_before_loading(tmp_path, capsys):
    f = tmp_path / "m.h5"
    f.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    assert main(["export", str(f), "--signature", "images"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no SavedModel folder" in err


def test_a_serving_function_that_assigns_variables_is_said_so(shapes_dataset, tmp_path, capsys):
    """Session 37: a pruning wrapper left in (tfmot's prune_low_magnitude) assigns its mask while serving; no
    converter can freeze that. tledge said "this model does not bake its preprocessing" (a user who then passed
    --preprocess tf on a model with a Rescaling inside normalised twice), then TensorFlow's words."""
    class Assigning(tf.Module):
        def __init__(self):
            self.calls = tf.Variable(0.0)

        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
        def serve(self, x):
            self.calls.assign_add(1.0)
            m = tf.reduce_mean(x, axis=[1, 2]) / 255.0
            return {"scores": tf.nn.softmax(m[:, :2] * 4.0)}
    m = Assigning()
    folder = tmp_path / "assigning_sm"
    tf.saved_model.save(m, str(folder), signatures={"serving_default": m.serve})
    (tmp_path / "labels.txt").write_text("circle\nhstripes\n")
    args = ["export", str(folder), "--formats", "tflite", "--val", str(shapes_dataset / "val" / "circle"),
            "--calib", "random", "--labels", str(tmp_path / "labels.txt")]
    assert main(args + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "SavedModel assigning_sm cannot be used: its serving function cannot be frozen (it assigns variables" \
        in err and "--preprocess" not in err, err
    # the advice it gave with that line, --preprocess raw, ended in exit 1 and TensorFlow's words (2026-12-08)
    assert main(args + ["--preprocess", "raw", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "cannot be used: its serving function cannot be frozen" in err, err
    assert not (tmp_path / "o").exists()
