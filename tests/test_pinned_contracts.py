"""Behaviour a user depends on that no test pinned (mutation testing, round 2: each test here was seen failing on a
plausible one-line change of the code it names; expected values come from the definitions, not from the code)."""
from __future__ import annotations

import csv
import json
import shutil
import tarfile

import numpy as np
import pytest

from tiny import TINY, CLASSES, images_of
from tledge import artifacts
from tledge.artifacts import Thresholds
from tledge.cli import main
from tledge.contract import CONTRACT_VERSION, Contract, Layout
from tledge.contract_types import INDEPENDENT
from tledge.errors import ContractError

MODEL = str(TINY / "model_int8.tflite")


def test_the_next_contract_version_is_refused():
    with pytest.raises(ContractError, match="newer"):
        Contract.from_dict(Contract(8, 8).to_dict() | {"version": CONTRACT_VERSION + 1})


def test_centre_crop_with_an_odd_margin_starts_at_its_floor():
    wide = np.zeros((10, 41, 3), np.uint8)
    wide[:, 15:25] = 255  # (41 - 10) // 2 = 15
    assert Contract(10, 10, fit="crop", crop_fraction=1.0, resize="nearest").prepare(wide).min() == 255


def test_letterbox_centres_a_tall_image_horizontally():
    x = Contract(20, 20, fit="letterbox", pad_value=7).prepare(np.full((20, 10, 3), 200, np.uint8))
    assert (x[:, :5] == 7).all() and (x[:, 15:] == 7).all() and (x[:, 5:15] == 200).all()


def test_caffe_unbaked_rgb_is_flipped_to_bgr_then_mean_subtracted():
    img = np.empty((8, 8, 3), np.uint8)
    img[...] = (200, 100, 50)  # R, G, B
    x = Contract(8, 8, norm="caffe", baked=False, input_dtype="float32").prepare(img)
    np.testing.assert_allclose(x[0, 0], [50 - 103.939, 100 - 116.779, 200 - 123.68], atol=1e-3)


def test_label_of_index_zero():
    assert Contract(8, 8, labels=("a", "b")).label(0) == "a"


def test_defaults_are_the_documented_budgets():
    t = Thresholds.for_precision("int8")
    assert (t.min_agreement, t.max_accuracy_drop, t.many_classes, t.top_k, t.min_topk_agreement) == \
        (0.98, 0.01, 20, 5, 0.99)
    assert Thresholds.for_precision("fp16").min_agreement == Thresholds.for_precision("dynamic").min_agreement == 0.99
    assert Thresholds.for_precision("fp32").max_abs == 1e-4


def test_a_folder_runs_its_int8_tflite_file_first():
    from tledge.runtime.folder import model_in_folder

    assert model_in_folder(TINY)[0].name == "model_int8.tflite"


def test_a_precision_entry_of_a_thresholds_table_applies():
    mine = Thresholds(min_agreement=0.9)
    assert Thresholds.lookup({"int8": mine}, "model_int8.tflite", "int8") is mine


def test_a_compiled_file_whose_source_has_no_verdict_is_not_vouched(tmp_path):
    (tmp_path / "model_int8_edgetpu.tflite").write_bytes(b"x")
    m = artifacts.build(tmp_path, tmp_path / "src.h5", {}, derived={"model_int8_edgetpu.tflite": "model_int8.tflite"})
    assert m.entry("model_int8_edgetpu.tflite").verdict == "fail" and not m.vouched()


def test_a_model_entry_without_a_verdict_is_not_vouched():
    assert not artifacts.Entry("model_int8.tflite", "model", 1, "0" * 64).vouched


def test_compute_module_5_is_an_rpi5(tmp_path):
    from tledge.devices import detect

    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_bytes(b"Raspberry Pi Compute Module 5 Rev 1.0\x00")
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/arch").write_text("aarch64\n")
    assert detect(tmp_path).profile.name == "rpi5"


def test_jetson_bundle_runs_the_gpu_file_and_installs_litert_for_its_fallback(tmp_path):
    from tledge.devices.bundle import make_bundle

    res = make_bundle(TINY, "jetson-orin", out=tmp_path / "b.tar.gz")
    assert (res.model, res.fallback) == ("model_fp32.onnx", "model_int8.tflite")
    with tarfile.open(res.path) as tar:
        runsh = tar.extractfile(f"{res.top}/run.sh").read().decode()
        req = tar.extractfile(f"{res.top}/requirements.txt").read().decode()
    assert "MODEL=${MODEL:-model_fp32.onnx}" in runsh
    assert "ai-edge-litert" in req


class _Stub:
    def __init__(self, scores, independent=False):
        self.contract = Contract(8, 8, labels=("a", "b", "c")[:len(scores)],
                                 extra={"scores": INDEPENDENT} if independent else {})
        self._s = np.float32([scores])

    def run_inputs(self, x):
        return self._s

    def scores(self, y):
        return y

    def top(self, s, k=None):
        from tledge.runtime.model import EdgeModel

        return EdgeModel.top(self, s, k)


def _infer(model, **kw):
    from tledge.runtime.frames import Frame
    from tledge.runtime.pipeline import Runner

    return Runner(model, **kw)._infer(Frame("f", 0), np.zeros((8, 8, 3), np.uint8), 0.0, None)


def test_multilabel_default_is_strictly_over_one_half():
    assert [p.label for p in _Stub([0.5, 0.7, 0.2], independent=True).top(np.float32([0.5, 0.7, 0.2]))] == ["b"]


def test_threshold_keeps_a_score_equal_to_it():
    assert [p.label for p in _infer(_Stub([0.25, 0.75]), threshold=0.75).top] == ["b"]


def test_multilabel_threshold_replaces_one_half():
    assert [p.label for p in _infer(_Stub([0.4, 0.7, 0.1], independent=True), threshold=0.3).top] == ["b", "a"]


def test_csv_label_is_the_best_and_index_counts_from_zero(tmp_path, capsys):
    src = tmp_path / "imgs"
    src.mkdir()
    for f in images_of(CLASSES[0])[:2]:
        shutil.copy(f, src / f.name)
    assert main(["run", MODEL, "--source", str(src), "--top-k", "3", "--csv", str(tmp_path / "r.csv"), "-q"]) == 0
    capsys.readouterr()
    assert main(["run", MODEL, "--source", str(src), "--top-k", "3", "--json", "-q"]) == 0
    js = [json.loads(ln) for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    rows = list(csv.DictReader(open(tmp_path / "r.csv", newline="")))
    assert [r["index"] for r in rows] == ["0", "1"]
    assert [r["label"] for r in rows] == [j["top"][0]["label"] for j in js]
    assert all(r["top"].startswith(r["label"] + ":") for r in rows)


def test_a_folder_is_read_in_path_order(tmp_path):
    from tledge.runtime.sources import open_source

    img = images_of(CLASSES[0])[0]
    for rel in ("a/z.png", "b/a.png"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        shutil.copy(img, tmp_path / rel)
    assert [f.relative_to(tmp_path).as_posix() for f in open_source(tmp_path, on_event=None).files] == \
        ["a/z.png", "b/a.png"]


def test_a_cell_starting_with_minus_is_quoted():
    from tledge.runtime.outputs import _cell

    assert _cell("-2+3") == "'-2+3"


def test_out_of_order_numbers_are_not_taken_off(tmp_path):
    from tledge.labels import read_labels

    (tmp_path / "l.txt").write_text("1 bees\n0 ants\n")
    assert read_labels(tmp_path / "l.txt") == ("1 bees", "0 ants")


def test_json_object_labels_in_index_order(tmp_path):
    from tledge.labels import read_labels

    (tmp_path / "l.json").write_text(json.dumps({str(i): f"c{i}" for i in range(12)}))
    assert read_labels(tmp_path / "l.json") == tuple(f"c{i}" for i in range(12))


def test_imagenet_class_index_gives_the_names(tmp_path):
    from tledge.labels import read_labels

    (tmp_path / "l.json").write_text(json.dumps({"0": ["n01440764", "tench"], "1": ["n01443537", "goldfish"]}))
    assert read_labels(tmp_path / "l.json") == ("tench", "goldfish")


def test_decomposed_folder_names_match_composed_labels():
    from tledge.labels import match_labels

    assert match_labels(["be\u0301es"], ("b\u00e9es", "ants")) == {"be\u0301es": 0}


def test_the_labels_entry_keeps_the_output_order():
    from tledge.export.metadata import embed_tflite
    from tledge.metadata import tflite_metadata

    labels = ("zebra", "ant", "moth")
    out = embed_tflite((TINY / "foreign" / "model_int8.tflite").read_bytes(), Contract(8, 8, labels=labels))
    assert tflite_metadata(out)["labels"].decode() == "zebra\nant\nmoth\n"


def test_the_embedded_contract_wins_over_tledge_json(tmp_path):
    from tledge.metadata import read_contract

    shutil.copy(TINY / "model_int8.tflite", tmp_path)
    Contract(8, 8, labels=("x", "y", "z")).save(tmp_path / "tledge.json")
    assert read_contract(tmp_path / "model_int8.tflite").labels == CLASSES


def test_an_onnx_file_takes_tledge_json_extra_onnx(tmp_path):
    from tledge.metadata import sidecar_contract

    shutil.copy(TINY / "foreign" / "model_fp32.onnx", tmp_path)
    shutil.copy(TINY / "foreign" / "model_int8.tflite", tmp_path)
    Contract(8, 8, extra={"onnx": {"layout": "nchw", "input_dtype": "float32"}}).save(tmp_path / "tledge.json")
    c = sidecar_contract(tmp_path / "model_fp32.onnx")
    assert (c.layout, c.input_dtype) == (Layout.NCHW, "float32")
    t = sidecar_contract(tmp_path / "model_int8.tflite")
    assert (t.layout, t.input_dtype) == (Layout.NHWC, "uint8")


def test_quant_dtype_survives_the_json_round_trip():
    from tledge.contract_types import Quant

    c = Contract(8, 8, input_dtype="int8", input_quant=Quant(0.5, -3, "int8"), output_quant=Quant(1 / 256, -128, "int8"))
    back = Contract.from_json(c.to_json())
    assert back.input_quant == Quant(0.5, -3, "int8") and back.output_quant.dtype == "int8"


def test_the_next_manifest_schema_is_refused():
    with pytest.raises(ValueError, match="newer"):
        artifacts.Manifest.from_dict({"format": "tledge.export", "schema": artifacts.SCHEMA + 1, "files": []})
