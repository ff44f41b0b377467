"""Inputs read the right way (issue 10, part 6): existing paths win over camera indices and
pipelines, labels files with a BOM, fixed-batch files, capitalised suffixes, truncated .keras files,
class-folder names vs a model's own labels, `--preprocess auto` that only finds near chance."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tledge.cli import main


def _png(path: Path, rgb=(0, 0, 0), size=(16, 16)) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros(size + (3,), np.uint8)
    img[:] = rgb
    cv2.imwrite(str(path), img[:, :, ::-1])
    return path


# ---- sources: an existing path always wins ----------------------------------------------------------

def test_a_folder_named_like_a_camera_index_is_a_folder(tmp_path, monkeypatch):
    from tledge.runtime.sources import FileSource, open_source

    _png(tmp_path / "2024" / "a.png")
    monkeypatch.chdir(tmp_path)
    src = open_source("2024", opener=lambda: pytest.fail("opened a camera"))
    assert isinstance(src, FileSource) and [f.name for f in src.files] == ["a.png"]


def test_a_file_with_an_exclamation_mark_is_a_file_not_a_pipeline(tmp_path):
    from tledge.runtime.sources import FileSource, open_source

    p = _png(tmp_path / "wow! look.png")
    src = open_source(str(p), opener=lambda: pytest.fail("opened a GStreamer pipeline"))
    assert isinstance(src, FileSource) and src.files == [p]


def test_without_such_a_path_digits_are_still_a_camera(tmp_path, monkeypatch):
    from tledge.errors import TledgeError
    from tledge.runtime.sources import open_source

    monkeypatch.chdir(tmp_path)
    opened = []

    def opener():
        opened.append(True)
        return None  # no camera: refused with the camera hint

    with pytest.raises(TledgeError, match="camera:2024"):
        open_source("2024", opener=opener)
    assert opened


# ---- labels -------------------------------------------------------------------------------------------

def test_labels_file_with_a_utf8_bom(tmp_path):
    from tledge.labels import read_labels

    (tmp_path / "l.txt").write_bytes("\ufeffperson\nno_person\n".encode("utf-8"))
    (tmp_path / "tm.txt").write_bytes("\ufeff0 Class 1\n1 Class 2\n".encode("utf-8"))
    assert read_labels(tmp_path / "l.txt") == ("person", "no_person")
    assert read_labels(tmp_path / "tm.txt") == ("Class 1", "Class 2")


# ---- fixed-batch files --------------------------------------------------------------------------------

def _fixed_batch_onnx(path: Path, batch: int) -> Path:
    """Scores = softmax(10 * mean colour) per channel, for NCHW inputs of a fixed batch."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0),
             helper.make_node("Mul", ["m", "k"], ["z"]),
             helper.make_node("Softmax", ["z"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "fixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
                              [helper.make_tensor("k", TensorProto.FLOAT, [], [10.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("n", [1, 5, 16, 20])
def test_fixed_batch_16_onnx_pads_the_batch(n, tmp_path):
    pytest.importorskip("onnxruntime")
    from tledge.runtime import load

    model = load(_fixed_batch_onnx(tmp_path / "fixed16.onnx", 16), preprocess="scale", labels=["r", "g", "b"])
    assert model.fixed_batch == 16 and any("exactly 16" in note for note in model.load_info.notes)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    imgs = [np.full((8, 8, 3), colours[i % 3], np.uint8) for i in range(n)]
    got = [p[0].label for p in model.classify(imgs)]
    assert got == [["r", "g", "b"][i % 3] for i in range(n)]


def test_fixed_batch_onnx_through_tledge_run(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    for i, c in enumerate([(255, 0, 0), (0, 0, 255), (0, 255, 0)]):
        _png(tmp_path / "imgs" / f"{i}.png", c)
    labels = tmp_path / "labels.txt"
    labels.write_text("red\ngreen\nblue\n")
    rc = main(["run", str(_fixed_batch_onnx(tmp_path / "f.onnx", 16)), "--source", str(tmp_path / "imgs"),
               "--preprocess", "scale", "--labels", str(labels), "--json"])
    rows = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert rc == 0 and [r["top"][0]["label"] for r in rows] == ["red", "blue", "green"]


# ---- model files ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["MODEL.H5", "Model.Keras"])
def test_capitalised_suffixes_are_models(name, tiny_model, shapes_dataset, tmp_path, capsys):
    pytest.importorskip("tensorflow")
    src = tiny_model["h5"] if name.lower().endswith(".h5") else tiny_model["keras"]
    shutil.copy(src, tmp_path / name)
    rc = main(["export", str(tmp_path / name), "--formats", "tflite", "--val", str(shapes_dataset / "val"),
               "--out", str(tmp_path / "e")])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "e" / "model_fp32.tflite").is_file()


def test_truncated_keras_says_truncated(tiny_model, tmp_path, capsys):
    data = tiny_model["keras"].read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    assert main(["export", str(tmp_path / "cut.keras"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "cut.keras is truncated or corrupt" in err and "not found" not in err.lower()
    assert not (tmp_path / "o").exists()


# ---- labels from folder names vs a third-party model ---------------------------------------------------

@pytest.fixture
def third_party(unbaked_model):
    """A trained model as a third party ships it: plain .keras, no tledge.json, no labels, normalisation
    not baked."""
    pytest.importorskip("tensorflow")
    return unbaked_model["keras"]


def _copy(model: Path, tmp: Path) -> Path:
    (tmp / "model").mkdir()
    shutil.copy(model, tmp / "model" / model.name)
    return tmp / "model" / model.name


def test_folder_names_become_labels_of_a_model_without_labels_and_it_is_said(third_party, shapes_dataset,
                                                                            tmp_path, capsys):
    model = _copy(third_party, tmp_path)
    rc = main(["export", str(model), "--formats", "tflite", "--preprocess", "tf", "--val",
               str(shapes_dataset / "val"), "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert rc == 0
    assert "the model has no labels of its own" in err and "circle, hstripes, vstripes" in err
    assert (tmp_path / "e" / "labels.txt").read_text().split() == ["circle", "hstripes", "vstripes"]


def test_folder_names_that_are_not_the_models_own_labels_are_refused(third_party, shapes_dataset, tmp_path,
                                                                     capsys):
    model = _copy(third_party, tmp_path)
    (model.parent / "labels.txt").write_text("\ufeffperson\nno_person\nbackground\n")
    rc = main(["export", str(model), "--formats", "tflite", "--preprocess", "tf", "--val",
               str(shapes_dataset / "val"), "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert rc == 2 and "match none of the model's 3 labels ('person', 'no_person', 'background'" in err, err
    assert not (tmp_path / "e").exists()
    # folders that agree with the model's own labels.txt (BOM and all): its labels are used, no note
    (model.parent / "labels.txt").write_text("\ufeffcircle\nhstripes\nvstripes\n")
    assert main(["export", str(model), "--formats", "tflite", "--preprocess", "tf", "--val",
                 str(shapes_dataset / "val"), "--out", str(tmp_path / "e")]) == 0
    assert "no labels of its own" not in capsys.readouterr().err
    assert (tmp_path / "e" / "labels.txt").read_text().split() == ["circle", "hstripes", "vstripes"]


# ---- --preprocess auto near chance -------------------------------------------------------------------

@pytest.fixture
def mislabelled_val(shapes_dataset, tmp_path):
    """The val images with their class folders rotated: no preprocessing can score above chance."""
    names = ["circle", "hstripes", "vstripes"]
    for i, name in enumerate(names):
        shutil.copytree(shapes_dataset / "val" / name, tmp_path / "val" / names[(i + 1) % 3])
    return tmp_path / "val"


def test_preprocess_auto_near_chance_is_an_error_unless_forced(third_party, mislabelled_val, tmp_path, capsys):
    model = _copy(third_party, tmp_path)
    argv = ["export", str(model), "--formats", "tflite", "--preprocess", "auto", "--val", str(mislabelled_val),
            "--out", str(tmp_path / "e")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "near chance" in err and "--force" in err and "Traceback" not in err
    assert not (tmp_path / "e").exists()
    from tledge.errors import TledgeWarning

    with pytest.warns(TledgeWarning, match=r"near chance .* exporting anyway \(--force\)"):
        assert main(argv + ["--force"]) == 0
    assert (tmp_path / "e" / "model_fp32.tflite").is_file()


def test_preprocess_auto_says_when_modes_tie(third_party, shapes_dataset, tmp_path):
    """The tiny shapes model scores 1.000 with tf, caffe and torch alike: the val images cannot tell them apart, so
    the choice is MODES' order, and the user is told so rather than given 'chose tf' as if it were measured."""
    from tledge.errors import TledgeWarning

    model = _copy(third_party, tmp_path)
    argv = ["export", str(model), "--formats", "tflite", "--preprocess", "auto", "--val", str(shapes_dataset / "val"),
            "--out", str(tmp_path / "e")]
    with pytest.warns(TledgeWarning, match=r"--preprocess auto: .*caffe.* the same as 'tf' \(1\.000\).*kept as the "
                                           r"first.*pass --preprocess MODE"):
        assert main(argv) == 0


def test_duplicate_labels_given_to_export_are_said(tmp_path):
    """`--labels` with `ants` twice exported PASSED and `tledge run` called every bee "ants". ImageNet's labels name
    two classes "crane", so it is a warning, not a refusal."""
    from types import SimpleNamespace

    from tledge.errors import TledgeWarning
    from tledge.export.contracting import labels_for

    (tmp_path / "l.txt").write_text("ants\nants\n")
    with pytest.warns(TledgeWarning, match=r"classes share a name \('ants' on lines 1 and 2\)"):
        assert labels_for(SimpleNamespace(labels=str(tmp_path / "l.txt")), None) == ("ants", "ants")
