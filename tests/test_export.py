"""`tledge export`: every format converts, carries its contract, and passes parity; parity can fail;
bad inputs give exit code 2 and leave nothing half-written."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tledge.errors import TledgeWarning

pytest.importorskip("tensorflow")

from tledge.cli import main  # noqa: E402
from tledge.contract import Contract  # noqa: E402
from tledge.metadata import read_contract  # noqa: E402

GOLDEN = Path(__file__).parent / "golden"
ALL_FILES = ["model_fp32.tflite", "model_fp16.tflite", "model_dynamic.tflite", "model_int8.tflite",
             "model_fp32.onnx", "model_int8.onnx"]


def test_every_format_is_written_and_passes_parity(tiny_export):
    out = tiny_export.out
    assert sorted(p.name for p in tiny_export.files) == sorted(ALL_FILES)
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] is True and report["images"] == 24
    keys = {"file", "format", "precision", "max_abs_error", "mean_abs_error", "top1_agreement",
            "accuracy", "reference_accuracy", "passed"}
    for row in report["results"]:
        assert keys <= set(row)
        assert row["top1_agreement"] >= 0.98
        assert row["reference_accuracy"] > 0.9  # a trained model: agreement means something
    fp32 = [r for r in report["results"] if r["precision"] == "fp32"]
    assert all(r["max_abs_error"] <= 1e-4 for r in fp32)
    assert "PASSED" in (out / "parity.md").read_text()
    assert (out / "labels.txt").read_text().split() == ["circle", "hstripes", "vstripes"]


def test_export_contract_matches_golden(tiny_export):
    # the contract a trained, baked model exports with; regenerate only on purpose
    assert (tiny_export.out / "tledge.json").read_text() == (GOLDEN / "export_tledge.json").read_text()


def test_each_file_embeds_its_own_contract_readable_without_tensorflow(tiny_export):
    code = ("import sys, json\nfrom tledge.metadata import read_tflite_contract, read_onnx_contract\n"
            "out = {}\n"
            "for p in sys.argv[1:]:\n"
            "    c = (read_tflite_contract if p.endswith('.tflite') else read_onnx_contract)(p)\n"
            "    out[p.rsplit('/', 1)[-1]] = c.to_dict()\n"
            "assert 'tensorflow' not in sys.modules\n"
            "print(json.dumps(out))\n")
    files = [str(f) for f in tiny_export.files]
    res = subprocess.run([sys.executable, "-c", code, *files], capture_output=True, text=True, check=True)
    embedded = json.loads(res.stdout)
    base = tiny_export.contract
    for name, d in embedded.items():
        c = Contract.from_dict(d)
        assert c.replace(input_dtype="float32", input_quant=None, output_quant=None, extra={}) == base
    int8 = Contract.from_dict(embedded["model_int8.tflite"])
    assert int8.input_dtype == "uint8" and int8.input_quant.scale == 1.0 and int8.input_quant.zero_point == 0
    assert int8.output_quant is not None


def test_h5_export_passes(tiny_model, shapes_dataset, tmp_path):
    rc = main(["export", str(tiny_model["h5"]), "--out", str(tmp_path / "e"), "--formats", "tflite",
               "--val", str(shapes_dataset / "val")])
    assert rc == 0
    assert json.loads((tmp_path / "e" / "parity.json").read_text())["passed"]


def test_keras2_era_h5_with_preprocess_flag(shapes_dataset, tmp_path):
    tf_keras = pytest.importorskip("tf_keras")
    from tledge.images import labelled_images

    files, y, _ = labelled_images(shapes_dataset / "train")
    c = Contract(48, 48, norm="tf", baked=False)
    x = np.stack([c.prepare(f) for f in files])
    tf_keras.utils.set_random_seed(0)
    m = tf_keras.Sequential([tf_keras.layers.InputLayer((48, 48, 3)),
                             tf_keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
                             tf_keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
                             tf_keras.layers.GlobalAveragePooling2D(),
                             tf_keras.layers.Dense(3, activation="softmax")])
    m.compile(tf_keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    m.fit(x, y, epochs=40, verbose=0)
    m.save(tmp_path / "k2.h5")
    # Keras 3 refuses or misreads many such files; the loader falls back to tf_keras
    rc = main(["export", str(tmp_path / "k2.h5"), "--out", str(tmp_path / "e"), "--int8",
               "--calib", str(shapes_dataset / "train"), "--val", str(shapes_dataset / "val"),
               "--preprocess", "mobilenet"])
    report = json.loads((tmp_path / "e" / "parity.json").read_text())
    assert rc == 0, report
    assert report["results"][0]["reference_accuracy"] > 0.6
    assert Contract.load(tmp_path / "e" / "tledge.json").norm.value == "tf"


def test_missing_preprocessing_is_explained(shapes_dataset, tmp_path, capsys):
    import keras

    inp = keras.Input((48, 48, 3))
    keras.Model(inp, keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inp))).save(tmp_path / "m.keras")
    rc = main(["export", str(tmp_path / "m.keras"), "--val", str(shapes_dataset / "val"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "--preprocess" in err and "caffe" in err
    assert not (tmp_path / "o").exists()


# ---- parity must be able to fail ------------------------------------------------------------------

def test_int8_calibrated_on_constant_images_fails_parity(tiny_model, shapes_dataset, tmp_path):
    import cv2

    calib = tmp_path / "constant"
    calib.mkdir()
    for i in range(12):  # 10 or more: not the few-images warning, which this test is not about
        cv2.imwrite(str(calib / f"{i}.png"), np.full((48, 48, 3), 128, np.uint8))
    argv = ["export", str(tiny_model["keras"]), "--formats", "tflite", "--int8", "--calib", str(calib),
            "--val", str(shapes_dataset / "val")]
    rc = main(argv + ["--out", str(tmp_path / "e"), "--no-repair"])
    report = json.loads((tmp_path / "e" / "parity.json").read_text())
    by_file = {r["file"]: r for r in report["results"]}
    assert rc == 1 and report["passed"] is False
    assert by_file["model_fp32.tflite"]["passed"] is True
    assert by_file["model_int8.tflite"]["passed"] is False
    assert by_file["model_int8.tflite"]["failures"]
    # with the fidelity loop, no repair can undo a constant calibration: the int8 file is set aside
    # and fp16 ships, loudly
    with pytest.warns(TledgeWarning, match="FALLBACK"):
        rc = main(argv + ["--out", str(tmp_path / "f")])
    report = json.loads((tmp_path / "f" / "parity.json").read_text())
    assert rc == 1 and [r["file"] for r in report["results"]] == ["model_fp32.tflite", "rejected/model_int8.tflite",
                                                                  "model_fp16.tflite"]
    assert (tmp_path / "f" / "rejected" / "model_int8.tflite").is_file()
    rows = report["fidelity"]
    assert [a["rung"] for a in rows] == ["plain", "tflite-bias", "repaired", "repaired+sensitive"]
    assert not any(a.get("passed") for a in rows)  # the mixed rung may find nothing to raise (an error row)


def test_perturbed_weights_fail_parity(tiny_model, tiny_export, shapes_dataset, tmp_path):
    import keras

    from tledge.export import loader, resolve
    from tledge.export.parity import check_files
    from tledge.export.imagesets import load_pixels
    from tledge.export.pipeline import ExportConfig, export

    model = keras.models.clone_model(tiny_model["model"])
    rng = np.random.default_rng(0)
    model.set_weights([w + rng.normal(0, 0.3, w.shape).astype(w.dtype) if w.ndim > 1 else w  # kernels only
                       for w in tiny_model["model"].get_weights()])
    model.save(tmp_path / "perturbed.keras")
    other = export(tmp_path / "perturbed.keras", ExportConfig(out=tmp_path / "p", formats=("tflite",),
                                                             val=str(shapes_dataset / "val")))
    assert other.passed  # the perturbed file is faithful to the perturbed model...
    # checked against the ORIGINAL model, the perturbed file must fail
    lm = loader.load_model(tiny_model["keras"])
    contract, add = resolve.resolve_contract(lm, preprocess=None, input_size=None)
    serve, _ = loader.trace(lm, contract, add)
    x, y = load_pixels(shapes_dataset / "val", contract, 100, tiny_model["contract"].labels)
    results = check_files(loader.run_reference(serve, x), [(other.files[0], "tflite", "fp32")], x, labels=y)
    assert not results[0].passed and results[0].max_abs_error > 1e-3


# ---- bad input: exit 2, clear message, nothing half-written --------------------------------------

def _no_partial_files(folder: Path):
    assert not folder.exists() or not [p for p in folder.rglob("*") if p.suffix in (".tflite", ".onnx", ".tmp")]


@pytest.mark.parametrize("case", ["missing", "text", "truncated_h5", "truncated_keras", "wrong_suffix"])
def test_bad_model_files(case, tiny_model, shapes_dataset, tmp_path, capsys):
    path = {"missing": tmp_path / "nope.keras", "text": tmp_path / "m.h5", "truncated_h5": tmp_path / "t.h5",
            "truncated_keras": tmp_path / "t.keras", "wrong_suffix": tmp_path / "m.pt"}[case]
    if case == "text":
        path.write_text("not a model")
    elif case == "truncated_h5":
        path.write_bytes(tiny_model["h5"].read_bytes()[:3000])
    elif case == "truncated_keras":
        path.write_bytes(tiny_model["keras"].read_bytes()[:3000])
    elif case == "wrong_suffix":
        path.write_bytes(b"\x00" * 100)
    out = tmp_path / "out"
    rc = main(["export", str(path), "--out", str(out), "--val", str(shapes_dataset / "val")])
    err = capsys.readouterr().err
    assert rc == 2 and "error" in err and str(path.name) in err
    _no_partial_files(out)


def test_int8_without_calibration_is_refused(tiny_model, tmp_path, capsys):
    rc = main(["export", str(tiny_model["keras"]), "--int8", "--out", str(tmp_path / "o")])
    assert rc == 2 and "--calib" in capsys.readouterr().err
    _no_partial_files(tmp_path / "o")


@pytest.mark.parametrize("case", ["empty", "corrupt"])
def test_unusable_calibration_folders(case, tiny_model, tmp_path, capsys):
    calib = tmp_path / "calib"
    calib.mkdir()
    if case == "corrupt":
        for i in range(3):
            (calib / f"{i}.jpg").write_bytes(b"\xff\xd8\xff garbage")
    rc = main(["export", str(tiny_model["keras"]), "--int8", "--calib", str(calib), "--out", str(tmp_path / "o")])
    assert rc == 2 and "images" in capsys.readouterr().err
    _no_partial_files(tmp_path / "o")


def test_code_in_model_files_needs_unsafe(shapes_dataset, tmp_path, capsys):
    import keras

    inp = keras.Input((48, 48, 3))
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(keras.layers.Lambda(lambda t: t / 255.0)(inp)))
    model = keras.Model(inp, out)
    for suffix in (".keras", ".h5"):
        model.save(tmp_path / f"lam{suffix}")
        rc = main(["export", str(tmp_path / f"lam{suffix}"), "--formats", "onnx", "--preprocess", "raw",
                   "--val", str(shapes_dataset / "val"), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert rc == 2 and "--unsafe" in err, err
    from tledge.errors import TledgeWarning

    with pytest.warns(TledgeWarning, match="near chance"):  # an untrained model: Keras itself is at chance
        rc = main(["export", str(tmp_path / "lam.keras"), "--unsafe", "--formats", "onnx", "--preprocess", "raw",
                   "--val", str(shapes_dataset / "val"), "--out", str(tmp_path / "o")])
    assert rc in (0, 1)  # converted (an untrained model may fail parity on degenerate outputs)
    assert (tmp_path / "o" / "model_fp32.onnx").is_file()


def test_labels_count_must_match_outputs(tiny_model, shapes_dataset, tmp_path, capsys):
    (tmp_path / "l.txt").write_text("a\nb\n")
    rc = main(["export", str(tiny_model["keras"]), "--labels", str(tmp_path / "l.txt"),
               "--val", str(shapes_dataset / "val"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "labels" in capsys.readouterr().err


def test_embedded_contract_read_back_from_export(tiny_export):
    for f in tiny_export.files:
        assert read_contract(f).labels == ("circle", "hstripes", "vstripes")


def test_device_profile_chooses_formats_and_explicit_flags_win(tiny_model, shapes_dataset, tmp_path):
    val = str(shapes_dataset / "val")
    assert main(["export", str(tiny_model["keras"]), "--device", "coral-usb", "--calib", val, "--val", val,
                 "--out", str(tmp_path / "coral")]) == 0
    notes = json.loads((tmp_path / "coral" / "parity.json").read_text())["notes"]
    compile_note = next(n for n in notes if n.startswith("edgetpu: "))  # the compiler is not installed here
    assert ("edgetpu_compiler -s -o" not in compile_note  # a real compiler ran, or the command names the export
            or f"-o {tmp_path / 'coral'} {tmp_path / 'coral' / 'model_int8.tflite'}" in compile_note), compile_note
    names = {p.name for p in (tmp_path / "coral").iterdir()}
    assert "model_int8.tflite" in names and not any(n.endswith(".onnx") for n in names)
    assert main(["export", str(tiny_model["keras"]), "--device", "rpi4", "--formats", "onnx", "--val", val,
                 "--out", str(tmp_path / "explicit")]) == 0
    names = {p.name for p in (tmp_path / "explicit").iterdir()}
    assert "model_fp32.onnx" in names and not any(n.endswith(".tflite") for n in names)


def test_val_subset_without_labels_gives_no_accuracy_rather_than_a_wrong_one(tiny_model, shapes_dataset, tmp_path,
                                                                               capsys):
    sub = tmp_path / "val2"
    sub.mkdir()
    for name in ("circle", "vstripes"):  # 2 of the model's 3 classes: folder index 1 is not class 1
        (sub / name).symlink_to(shapes_dataset / "val" / name)
    with pytest.warns(TledgeWarning, match=r"accuracy not measured: 2 class folders .* 3 outputs .*--labels"):
        rc = main(["export", str(tiny_model["keras"]), "--formats", "tflite", "--val", str(sub),
                   "--out", str(tmp_path / "a")])
    assert rc == 0, capsys.readouterr().err
    assert not (tmp_path / "a" / "labels.txt").exists()
    report = json.loads((tmp_path / "a" / "parity.json").read_text())
    assert report["results"][0]["accuracy"] is None
    assert any(n.startswith(f"accuracy not measured: the class folders of {sub}") for n in report["notes"])
    assert "accuracy not measured" in (tmp_path / "a" / "parity.md").read_text()  # said on stderr only before
    (tmp_path / "l.txt").write_text("circle\nhstripes\nvstripes\n")
    assert main(["export", str(tiny_model["keras"]), "--formats", "tflite", "--val", str(sub), "--labels",
                 str(tmp_path / "l.txt"), "--out", str(tmp_path / "b")]) == 0
    accuracy = json.loads((tmp_path / "b" / "parity.json").read_text())["results"][0]["accuracy"]
    assert accuracy is not None and accuracy > 0.8  # mapped by name, the trained model is right on most


def test_export_writes_golden_listed_in_the_manifest(tiny_export, tiny_model, shapes_dataset):
    from tledge import artifacts
    from tledge.runtime import golden

    out = tiny_export.out
    e = artifacts.read(out).entry(golden.GOLDEN)
    assert e is not None and e.role == "side" and e.sha256 == artifacts.sha256_of(out / golden.GOLDEN)
    g = golden.read(out / golden.GOLDEN)
    assert g.pixels.dtype == np.uint8 and g.pixels.shape == (24, 48, 48, 3)  # all 24 val images (<= 32)
    assert g.all_parity_images and g.reference.dtype == np.float32 and g.reference.shape == (24, 3)
    keras_out = tiny_model["model"].predict(g.pixels.astype(np.float32), verbose=0)
    np.testing.assert_allclose(g.reference, keras_out, atol=1e-5)
    val = shapes_dataset / "val"
    for name, sha, y, px in zip(g.names, g.sha256, g.labels, g.pixels):
        assert artifacts.sha256_of(val / name) == sha
        assert tiny_model["contract"].labels[y] == name.split("/")[0]
        np.testing.assert_array_equal(tiny_model["contract"].prepare(val / name).astype(np.uint8), px)
    assert np.mean(g.reference.argmax(1) == g.labels) > 0.9  # a trained model, not flat outputs


def test_parity_report_has_a_clients_section(tiny_export):
    """MediaPipe's agreement where mediapipe is importable; otherwise why not, and how to measure it."""
    import importlib.util

    section = json.loads((tiny_export.out / "parity.json").read_text())["clients"]
    md = (tiny_export.out / "parity.md").read_text()
    assert "## Clients" in md
    tflite = sorted(r.file for r in tiny_export.report.results if r.file.endswith(".tflite"))
    if importlib.util.find_spec("mediapipe") is None:
        assert section["measured"] is False and "clients_venv.sh" in section["how"] and "not measured" in md
    else:
        assert section["measured"] is True and sorted(r["file"] for r in section["files"]) == tflite
        assert all(r["tledge"] == section["images"] for r in section["files"])  # at the input size already
    onnx = sorted(r.file for r in tiny_export.report.results if r.file.endswith(".onnx"))
    cv = section["opencv"]  # OpenCV is tledge's own dependency: always measured, on every ONNX file
    assert sorted(r["file"] for r in cv["files"]) == onnx and len(onnx) >= 2, cv
    for r in cv["files"]:  # loads and runs the fp32 file exactly, the int8 file with its own int8 kernels
        assert "error" not in r and r["tledge"] >= 0.9 * cv["images"] and r["max_abs"] < 0.1, r
    assert f"OpenCV {cv['version']}" in md and "| model_int8.onnx |" in md
    from tledge.quant.kernels import cpu_flags  # the latency figures carry the machine they were taken on
    assert any(n.startswith("batch-1 latency") and cpu_flags() in n for n in tiny_export.report.notes)


def test_an_explicit_preprocess_that_leaves_keras_at_chance_is_warned_about(unbaked_model, shapes_dataset, tmp_path):
    """Every file reproduces the Keras model, wrong input and all, so parity passes; Keras's own accuracy on the
    labelled --val images, near chance, is what says an explicit --preprocess (or the labels) is wrong. The tiny
    shapes model is too easy to fail on a wrong normalisation (caffe and torch still give 1.000), so the images are
    put in each other's class folders instead: accuracy 0."""
    import shutil
    import warnings

    from tledge.errors import TledgeWarning
    from tledge.export.pipeline import ExportConfig, export

    names = sorted(p.name for p in (shapes_dataset / "val").iterdir() if p.is_dir())
    swapped = tmp_path / "swapped"
    for src, dst in zip(names, names[1:] + names[:1]):
        shutil.copytree(shapes_dataset / "val" / src, swapped / dst)
    with pytest.warns(TledgeWarning, match=r"--preprocess tf: Keras accuracy 0\.0+ .*near chance for 3 classes"):
        bad = export(unbaked_model["keras"], ExportConfig(out=tmp_path / "a", formats=("tflite",), val=str(swapped),
                                                          preprocess="tf"))
    assert any("near chance" in n for n in bad.report.notes)  # parity.md said PASSED without it (helper hunt)
    assert "near chance" in (tmp_path / "a" / "parity.md").read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("error", TledgeWarning)
        res = export(unbaked_model["keras"], ExportConfig(out=tmp_path / "b", formats=("tflite",),
                                                          val=str(shapes_dataset / "val"), preprocess="tf"))
    assert res.passed
