"""`tledge parity` on files made elsewhere (issue 10, part 5): each file gets the input its own
contract asks for (embedded, or inferred from the file as `tledge run` does, completed by
--preprocess), the reference its own; a file's precision comes from its tensors, not its name."""
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from tledge.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def unbaked(unbaked_model, shapes_dataset, tmp_path_factory):
    """The unbaked tiny model as the reference (plain .keras, no tledge.json) plus TFLite files
    converted from it without any tledge metadata."""
    import tensorflow as tf

    model, contract = unbaked_model["model"], unbaked_model["contract"]
    d = tmp_path_factory.mktemp("foreign")
    files = d / "files"
    files.mkdir()
    (files / "foreign.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    from tledge.images import iter_image_files

    calib = np.stack([contract.prepare(f) for f in list(iter_image_files(shapes_dataset / "train"))[:48]])

    def representative():
        for x in calib:
            yield [x[None].astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    (files / "model.tflite").write_bytes(conv.convert())  # int8, and nothing in the name says so
    return {"ref": unbaked_model["keras"], "files": files}


def _parity(capsys, *argv):
    rc = main(["parity", *map(str, argv), "--json"])
    out = capsys.readouterr().out
    return rc, json.loads(out)


def test_float_file_made_elsewhere_gets_its_own_prepared_input(unbaked, shapes_dataset, capsys):
    rc, rep = _parity(capsys, unbaked["ref"], unbaked["files"] / "foreign.tflite", "--images",
                      shapes_dataset / "val", "--preprocess", "tf")
    r = rep["results"][0]
    assert r["precision"] == "fp32"
    assert r["top1_agreement"] == 1.0 and r["max_abs_error"] < 1e-4, r
    assert rc == 0 and rep["passed"]


def test_int8_file_without_int8_in_its_name_is_graded_as_int8(unbaked, shapes_dataset, capsys):
    rc, rep = _parity(capsys, unbaked["ref"], unbaked["files"] / "model.tflite", "--images",
                      shapes_dataset / "val", "--preprocess", "tf")
    r = rep["results"][0]
    assert r["file"] == "model.tflite" and r["precision"] == "int8"
    assert r["max_abs_error"] > 1e-4  # it would have failed fp32's max abs rule
    assert r["top1_agreement"] >= 0.98 and r["passed"], r
    assert rc == 0


def test_renamed_tledge_files_keep_the_precision_of_their_tensors(tiny_model, tiny_export, shapes_dataset,
                                                                   tmp_path, capsys):
    for name, new in (("model_int8.tflite", "model.tflite"), ("model_fp16.tflite", "edge.tflite"),
                      ("model_int8.onnx", "q.onnx")):
        shutil.copy(tiny_export.out / name, tmp_path / new)
    rc, rep = _parity(capsys, tiny_model["keras"], tmp_path / "model.tflite", tmp_path / "edge.tflite",
                      tmp_path / "q.onnx", "--images", shapes_dataset / "val")
    assert {r["file"]: r["precision"] for r in rep["results"]} == \
        {"model.tflite": "int8", "edge.tflite": "fp16", "q.onnx": "int8"}
    assert rc == 0, rep


def test_a_file_made_elsewhere_is_resized_as_the_reference(unbaked, shapes_dataset, tmp_path, capsys):
    """tledge run resizes a TFLite file made elsewhere with warp-linear; parity fed it those pixels and the
    reference area-resized ones: the same graph failed (max abs 0.54) where its ONNX twin passed."""
    import cv2

    photos = tmp_path / "photos"
    for f in sorted((shapes_dataset / "val").rglob("*.png"))[:12]:
        (photos / f.parent.name).mkdir(parents=True, exist_ok=True)
        img = cv2.imread(str(f))
        cv2.imwrite(str(photos / f.parent.name / f.name), cv2.resize(img, (131, 97), interpolation=cv2.INTER_CUBIC))
    rc, rep = _parity(capsys, unbaked["ref"], unbaked["files"] / "foreign.tflite", "--images", photos,
                      "--preprocess", "tf")
    r = rep["results"][0]
    assert r["max_abs_error"] < 1e-4 and rc == 0, r
    assert any("resized as the reference (area, stretch)" in n for n in rep["notes"]), rep["notes"]


def test_no_labels_and_not_one_folder_per_output_gives_no_accuracy(unbaked, shapes_dataset, capsys, tmp_path):
    """A reference without labels and 2 class folders for its 3 outputs: folder k was taken for output k, and
    parity printed an accuracy for both (0.000 on 41 ImageNet folders for a 1000-class model) and passed on it."""
    classes = sorted(p for p in (shapes_dataset / "val").iterdir() if p.is_dir())
    for c in classes[1:]:
        shutil.copytree(c, tmp_path / "two" / c.name)
    rc, rep = _parity(capsys, unbaked["ref"], unbaked["files"] / "foreign.tflite", "--images", tmp_path / "two",
                      "--preprocess", "tf")
    r = rep["results"][0]
    assert r["accuracy"] is None and r["reference_accuracy"] is None, r
    assert any("accuracy not measured: 2 class folders" in n for n in rep["notes"]), rep["notes"]
    rc, rep = _parity(capsys, unbaked["ref"], unbaked["files"] / "foreign.tflite", "--images",
                      shapes_dataset / "val", "--preprocess", "tf")
    assert rep["results"][0]["accuracy"] is not None  # one folder per output: folder i is output i, as export's
    for c in classes:  # the three folders and an empty one sorting first: every folder is numbered, so 4 for 3
        shutil.copytree(c, tmp_path / "four" / c.name)
    (tmp_path / "four" / "aaa_empty").mkdir()
    rc, rep = _parity(capsys, unbaked["ref"], unbaked["files"] / "foreign.tflite", "--images", tmp_path / "four",
                      "--preprocess", "tf")
    assert rep["results"][0]["accuracy"] is None, rep["results"][0]
