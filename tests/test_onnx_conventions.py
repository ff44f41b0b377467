"""ONNX files other tools read (issue 13): NCHW / uint8 inputs, the description, one resize.

cv2.dnn (OpenCV 5.x in the venv) runs the NCHW fp32 export with `blobFromImage` and must agree with
`tledge run`; a uint8-input file matches the float one; `tledge export --crop` is recorded in the
contract and `tledge run` uses it; bad values exit 2 before anything is loaded.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tledge.cli import main

H_IMG, W_IMG = 60, 72  # val images resized to this: the files resize them (not 48x48 like the model)


def _images(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.png"))


@pytest.fixture(scope="module")
def odd_val(shapes_dataset, tmp_path_factory) -> Path:
    """The shapes val set resized to 60x72 (lossless PNG), so every client must resize."""
    import cv2

    out = tmp_path_factory.mktemp("odd_val")
    for f in sorted((shapes_dataset / "val").rglob("*")):
        if f.is_file():
            img = cv2.imread(str(f), cv2.IMREAD_COLOR)
            dst = out / f.parent.name / (f.stem + ".png")
            dst.parent.mkdir(exist_ok=True)
            cv2.imwrite(str(dst), cv2.resize(img, (W_IMG, H_IMG), interpolation=cv2.INTER_CUBIC))
    return out


def _export(tiny_model, shapes_dataset, val, name, **kw):
    from tledge.export.pipeline import ExportConfig, export

    cfg = ExportConfig(out=tiny_model["dir"] / name, formats=("onnx",), calib=str(shapes_dataset / "train"),
                       val=str(val), **kw)
    result = export(tiny_model["keras"], cfg)
    assert result.passed, result.report.table()
    return result.out


@pytest.fixture(scope="module")
def nchw(tiny_model, shapes_dataset, odd_val) -> Path:
    """`tledge export --formats onnx --int8 --layout nchw --resize linear`."""
    return _export(tiny_model, shapes_dataset, odd_val, "nchw", int8=True, onnx_layout="nchw", resize="linear")


@pytest.fixture(scope="module")
def nchw_uint8(tiny_model, shapes_dataset, odd_val) -> Path:
    return _export(tiny_model, shapes_dataset, odd_val, "nchw_uint8", onnx_layout="nchw", onnx_input="uint8",
                   resize="linear")


def _tledge_scores(path: Path, files: list[Path]) -> np.ndarray:
    from tledge.runtime import load

    m = load(path)
    return m.scores(m.run_inputs(np.stack([m.to_input(f) for f in files])))


# ---- cv2.dnn -------------------------------------------------------------------------------------------

def _cv2_scores(path: Path, files: list[Path], contract, engine=None, ddepth=None) -> np.ndarray:
    import cv2

    net = cv2.dnn.readNetFromONNX(str(path)) if engine is None else cv2.dnn.readNetFromONNX(str(path), engine)
    rows = []
    for f in files:
        bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
        blob = cv2.dnn.blobFromImage(bgr, scalefactor=1.0, size=(contract.width, contract.height),
                                     swapRB=contract.color.value == "rgb", crop=False,
                                     ddepth=cv2.CV_32F if ddepth is None else ddepth)
        net.setInput(blob)
        rows.append(np.asarray(net.forward(), np.float32).reshape(-1))
    return np.stack(rows)


def test_cv2_dnn_runs_the_nchw_fp32_export_like_tledge_run(nchw, odd_val):
    import cv2

    from tledge.contract import Contract

    contract = Contract.load(nchw / "tledge.json")
    assert contract.extra["onnx"] == {"layout": "nchw", "input_dtype": "float32"}
    assert contract.extra["resize_by_client"]["opencv-dnn"]["agreement"] == "exact"  # --resize linear
    files = _images(odd_val)
    ours = _tledge_scores(nchw / "model_fp32.onnx", files)
    theirs = _cv2_scores(nchw / "model_fp32.onnx", files, contract)
    print(f"cv2 {cv2.__version__}: max |cv2.dnn - tledge run| = {np.abs(theirs - ours).max():.2e} "
          f"on {len(files)} images")
    assert ours.std(axis=0).max() > 0.05  # a trained model: confident, varied outputs
    np.testing.assert_array_equal(theirs.argmax(1), ours.argmax(1))
    assert np.abs(theirs - ours).max() < 1e-4


def test_the_default_nhwc_file_is_not_for_blob_from_image(tiny_model, shapes_dataset, odd_val):
    """The control: what issue 13 saw. blobFromImage makes NCHW blobs; the NHWC file refuses them or
    answers something else, so the agreement above is the --layout nchw conversion's doing."""
    import cv2

    from tledge.contract import Contract

    out = _export(tiny_model, shapes_dataset, odd_val, "nhwc", resize="linear")
    contract = Contract.load(out / "tledge.json")
    files = _images(odd_val)
    ours = _tledge_scores(out / "model_fp32.onnx", files)
    try:
        theirs = _cv2_scores(out / "model_fp32.onnx", files, contract)
    except cv2.error:
        return
    assert np.abs(theirs - ours).max() > 1e-2


def test_cv2_dnn_on_the_int8_qdq_nchw_file(nchw, odd_val):
    """onnxruntime's QDQ file in OpenCV: 5.0.0's default (new) engine refused it and its classic engine
    ran it; 5.1.0 dropped ENGINE_CLASSIC and its default engine runs it. Whichever engine this OpenCV
    has must load the file and give the same top-1 as tledge run (its own int8 arithmetic: scores
    differ by ~1e-2)."""
    import cv2

    from tledge.contract import Contract

    contract = Contract.load(nchw / "tledge.json")
    files = _images(odd_val)
    ours = _tledge_scores(nchw / "model_int8.onnx", files)
    engines = {"default": None}
    if hasattr(cv2.dnn, "ENGINE_CLASSIC"):
        engines["ENGINE_CLASSIC"] = cv2.dnn.ENGINE_CLASSIC
    ran = {}
    for name, engine in engines.items():
        try:
            theirs = _cv2_scores(nchw / "model_int8.onnx", files, contract, engine=engine)
        except cv2.error as exc:
            print(f"cv2 {cv2.__version__} {name} engine cannot load the QDQ file: {str(exc).strip()[-90:]}")
            continue
        ran[name] = (float(np.mean(theirs.argmax(1) == ours.argmax(1))), float(np.abs(theirs - ours).max()))
        print(f"cv2 {cv2.__version__} {name} engine on the QDQ file: top-1 agreement with tledge run "
              f"{ran[name][0]:.3f}, max abs {ran[name][1]:.3g}")
    assert ran, f"no cv2 {cv2.__version__} engine loads the int8 QDQ file"
    for name, (agree, worst) in ran.items():
        assert agree >= 0.9 and worst < 0.1, name


def test_cv2_dnn_feeds_the_uint8_file_a_uint8_blob(nchw_uint8, odd_val):
    import cv2

    from tledge.contract import Contract

    contract = Contract.load(nchw_uint8 / "tledge.json")
    files = _images(odd_val)
    theirs = _cv2_scores(nchw_uint8 / "model_fp32.onnx", files, contract, ddepth=cv2.CV_8U)
    ours = _tledge_scores(nchw_uint8 / "model_fp32.onnx", files)
    np.testing.assert_array_equal(theirs.argmax(1), ours.argmax(1))
    assert np.abs(theirs - ours).max() < 1e-4


# ---- uint8 input and the description -------------------------------------------------------------------

def test_uint8_input_file_takes_uint8_and_matches_the_float_one(nchw, nchw_uint8, odd_val):
    import onnxruntime as ort

    from tledge.contract import Contract
    from tledge.runtime import load

    u8 = ort.InferenceSession(str(nchw_uint8 / "model_fp32.onnx"), providers=["CPUExecutionProvider"])
    f32 = ort.InferenceSession(str(nchw / "model_fp32.onnx"), providers=["CPUExecutionProvider"])
    assert u8.get_inputs()[0].type == "tensor(uint8)" and f32.get_inputs()[0].type == "tensor(float)"
    assert list(u8.get_inputs()[0].shape[1:]) == [3, 48, 48]
    contract = Contract.load(nchw / "tledge.json").replace(layout="nchw", input_dtype="uint8")
    x = np.stack([contract.prepare(f) for f in _images(odd_val)])
    assert x.dtype == np.uint8 and x.shape[1:] == (3, 48, 48)
    with pytest.raises(Exception):  # it takes uint8, not float
        u8.run(None, {"pixels": x.astype(np.float32)})
    y8 = u8.run(None, {"pixels": x})[0]
    y32 = f32.run(None, {"pixels": x.astype(np.float32)})[0]
    np.testing.assert_allclose(y8, y32, atol=1e-6)
    m = load(nchw_uint8 / "model_fp32.onnx")  # tledge run: the embedded contract feeds uint8 NCHW
    assert (m.contract.layout.value, m.contract.input_dtype, m.load_info.contract_origin) == \
        ("nchw", "uint8", "embedded")
    assert m.to_input(_images(odd_val)[0]).dtype == np.uint8
    np.testing.assert_allclose(_tledge_scores(nchw_uint8 / "model_fp32.onnx", _images(odd_val)), y32, atol=1e-6)


@pytest.mark.parametrize("name", ["model_fp32.onnx", "model_int8.onnx"])
def test_files_say_what_they_take(nchw, name):
    import onnx

    import tledge
    from tledge.contract import Contract

    m = onnx.load(str(nchw / name))
    assert (m.producer_name, m.producer_version) == ("tledge", tledge.__version__)
    assert m.graph.name == "tledge_classifier_float32_nchw_48x48x3_rgb"
    for text in ("float32 NCHW [batchx3x48x48]", "RGB", "raw pixel values 0..255", "Resize: linear",
                 "tledge.json"):
        assert text in m.doc_string, text
    used = {n.domain or "" for n in m.graph.node}
    assert {o.domain or "" for o in m.opset_import} <= used | {""}  # no ai.onnx.ml left by tf2onnx
    embedded = Contract.from_json({p.key: p.value for p in m.metadata_props}["tledge_contract"])
    assert (embedded.layout.value, embedded.input_dtype, embedded.resize.value) == ("nchw", "float32", "linear")


def test_uint8_description(nchw_uint8):
    import onnx

    m = onnx.load(str(nchw_uint8 / "model_fp32.onnx"))
    assert m.graph.name == "tledge_classifier_uint8_nchw_48x48x3_rgb"
    assert "uint8 NCHW" in m.doc_string and m.graph.node[0].op_type == "Cast"


def test_runtimes_without_metadata_props_read_tledge_json(nchw_uint8, odd_val, tmp_path):
    """onnxruntime-web cannot read metadata_props: tledge.json beside the file is the contract, and
    its extra.onnx gives the ONNX files' own layout and dtype."""
    import onnx

    from tledge.runtime import load

    m = onnx.load(str(nchw_uint8 / "model_fp32.onnx"))
    del m.metadata_props[:]
    onnx.save(m, str(tmp_path / "bare.onnx"))
    shutil.copy(nchw_uint8 / "tledge.json", tmp_path / "tledge.json")
    bare = load(tmp_path / "bare.onnx")
    assert bare.load_info.contract_origin == "tledge.json"
    assert (bare.contract.layout.value, bare.contract.input_dtype) == ("nchw", "uint8")
    files = _images(odd_val)
    np.testing.assert_array_equal(_tledge_scores(tmp_path / "bare.onnx", files),
                                  _tledge_scores(nchw_uint8 / "model_fp32.onnx", files))


# ---- one resize: export takes --resize / --fit / --crop ---------------------------------------------------

def test_export_crop_is_in_the_contract_and_tledge_run_uses_it(tiny_model, shapes_dataset, odd_val, tmp_path,
                                                                  capsys):
    import onnxruntime as ort

    from tledge.contract import Contract

    out = tmp_path / "crop"
    rc = main(["export", str(tiny_model["keras"]), "--formats", "onnx", "--crop", "0.875", "--resize", "linear",
               "--val", str(odd_val), "--out", str(out)])
    assert rc == 0, capsys.readouterr()
    contract = Contract.load(out / "tledge.json")
    assert (contract.fit.value, contract.crop_fraction, contract.resize.value) == ("crop", 0.875, "linear")
    assert contract.extra["resize_by_client"]["opencv-dnn"]["agreement"] == "differs"  # blobFromImage stretches
    capsys.readouterr()
    files = _images(odd_val)
    rc = main(["run", str(out / "model_fp32.onnx"), "--source", str(odd_val), "--json", "--top-k", "3"])
    assert rc == 0
    rows = {Path(r["source"]).name: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    sess = ort.InferenceSession(str(out / "model_fp32.onnx"), providers=["CPUExecutionProvider"])

    def scores(c):
        return sess.run(None, {"pixels": np.stack([c.prepare(f) for f in files]).astype(np.float32)})[0]

    cropped, stretched = scores(contract), scores(contract.replace(fit="stretch"))
    got = np.array([[next(p["score"] for p in rows[f.name]["top"] if p["label"] == lab)
                     for lab in contract.labels] for f in files])
    np.testing.assert_allclose(got, cropped, atol=2e-6)  # JSON scores are rounded to 6 digits
    assert np.abs(cropped - stretched).max() > 1e-3  # the crop changes the inputs: run used it


@pytest.mark.parametrize("argv, words", [
    (["--crop", "0"], "--crop must be in (0, 1]"),
    (["--crop", "1.5"], "--crop must be in (0, 1]"),
    (["--crop", "nan"], "--crop"),
    (["--crop", "0.875", "--fit", "letterbox"], "cannot go with --fit letterbox"),
    (["--layout", "nchw", "--formats", "tflite"], "--layout only applies to ONNX files"),
    (["--onnx-input", "uint8", "--formats", "tflite"], "--onnx-input only applies to ONNX files"),
    (["--layout", "nchw", "--onnx-input", "uint8", "--formats", "tflite"],
     "--layout and --onnx-input only apply to ONNX files"),
    (["--resize", "bicubic"], "invalid choice"),
    (["--layout", "chw"], "invalid choice"),
])
def test_bad_export_options_exit_2_before_loading(tiny_model, shapes_dataset, tmp_path, capsys, argv, words):
    out = tmp_path / "never"
    rc = main(["export", str(tiny_model["keras"]), "--val", str(shapes_dataset / "val"), "--out", str(out)] + argv)
    err = capsys.readouterr().err
    assert rc == 2 and words in err, err
    assert "Traceback" not in err and not out.exists()


def test_manifest_records_what_each_file_takes(nchw, nchw_uint8):
    from tledge import artifacts

    m = artifacts.read(nchw)
    assert m.entry("model_fp32.onnx").input == {"layout": "nchw", "dtype": "float32", "shape": [-1, 3, 48, 48]}
    assert m.entry("model_int8.onnx").input["layout"] == "nchw"
    assert artifacts.read(nchw_uint8).entry("model_fp32.onnx").input["dtype"] == "uint8"
    assert m.entry("tledge.json").input == {}


@pytest.mark.slow  # the whole int8 repair ladder (~25 s)
def test_int8_repair_rungs_keep_the_onnx_conventions(tiny_model, shapes_dataset, tmp_path):
    """An impossible int8 budget sends the NCHW uint8 int8 file through every ONNX rung (percentile
    calibration, weight repair): each attempt is a working file of the same layout and dtype."""
    import onnx

    from tledge.errors import TledgeWarning
    from tledge.export.parity import Thresholds
    from tledge.export.pipeline import ExportConfig, export

    cfg = ExportConfig(out=tmp_path / "x", formats=("onnx",), int8=True, calib=str(shapes_dataset / "train"),
                       val=str(shapes_dataset / "val"), onnx_layout="nchw", onnx_input="uint8", explain=True,
                       thresholds={"int8": Thresholds(max_abs=1e-9, min_agreement=1.0)})
    with pytest.warns(TledgeWarning, match="FALLBACK"):
        res = export(tiny_model["keras"], cfg)
    rows = [r for r in res.report.fidelity if r["file"] == "model_int8.onnx"]
    assert {r["rung"] for r in rows} >= {"plain", "calibration-percentile", "repaired"}
    for r in rows:
        if r.get("error", "").startswith("no layer worth raising"):  # the mixed-precision rung on a tiny model
            continue
        assert "error" not in r and r["agreement"] >= 0.8, r
    assert "ONNX per-activation diagnosis unavailable" not in res.report.explain
    rejected = onnx.load(str(res.out / "rejected" / "model_int8.onnx"))
    assert rejected.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in rejected.graph.input[0].type.tensor_type.shape.dim[1:]] == [3, 48, 48]


def test_nchw_export_with_more_val_images_than_the_golden_set_and_its_board_check(tiny_model, shapes_dataset,
                                                                                  capsys):
    """Over N_GOLDEN val images the golden set is chosen by running the passing files, which must be fed their own
    layout (an NCHW export crashed there); and `tledge parity --golden` (a bundle's `run.sh --check`) must feed the
    NHWC golden pixels to an NCHW file in its layout instead of refusing it."""
    from tledge.runtime.golden import N_GOLDEN

    val = shapes_dataset / "train"  # 48 images: more than the golden set, so the pool is run through the files
    assert sum(f.is_file() for f in val.rglob("*")) > N_GOLDEN
    out = _export(tiny_model, shapes_dataset, val, "nchw_pool", onnx_layout="nchw", resize="linear")
    capsys.readouterr()
    assert main(["parity", "--golden", str(out), "--json"]) == 0, capsys.readouterr()
    report = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in report["results"]] == ["model_fp32.onnx"]
    assert report["results"][0]["top1_agreement"] == 1.0 and report["images"] == N_GOLDEN
