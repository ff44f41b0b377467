"""The runtime on committed model files (tests/assets/tiny, made by `python -m tests.assets.make`):
no TensorFlow at test time, so these also run in the tledge[runtime]-only venv (ci/runtime_venv.sh)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny import CLASSES, FOREIGN, IMAGES, MODELS, REF, TINY, keras_label, keras_probs, need

from tledge.cli import main

pytestmark = pytest.mark.runtime_only
KIND = {".tflite": "tflite", ".onnx": "onnx"}


def test_assets_are_small_and_complete():
    total = sum(p.stat().st_size for p in TINY.rglob("*") if p.is_file())
    assert total < 400 * 1024, f"tests/assets/tiny is {total} bytes"
    assert {p.name for p in IMAGES} == set(REF["keras_probabilities"])
    ref = np.array(list(REF["keras_probabilities"].values()))
    assert sorted(set(ref.argmax(1))) == [0, 1, 2], "the reference images must cover every class"
    assert sorted(p.name for p in TINY.glob("model_*")) == sorted(MODELS)
    assert ref.max(1).min() > 0.6, "the reference model must be confident (a trained model, not random weights)"


@pytest.mark.parametrize("name", MODELS)
def test_file_matches_the_keras_reference(name):
    need(name)
    from tledge.runtime import load

    m = load(TINY / name, threads=1)
    assert m.load_info.contract_origin == "embedded" and m.format == KIND[Path(name).suffix]
    assert m.contract.labels == CLASSES and (m.contract.height, m.contract.width) == (48, 48)
    ref = keras_probs(IMAGES)
    assert np.median(ref.max(1)) > 0.8  # the tiny model is confident: agreement means something
    got = m.scores(m.run_inputs(np.stack([m.to_input(str(p)) for p in IMAGES])))
    assert got.shape == ref.shape and got.dtype == np.float32
    assert (got.argmax(1) == ref.argmax(1)).all()
    tol = 0.08 if "int8" in name else 1e-3 if "fp16" in name else 1e-4  # int8: a few output quantisation steps
    assert np.abs(got - ref).max() <= tol
    # predict on prepared images (batched, and one without a batch axis) gives the same outputs
    np.testing.assert_allclose(m.predict(m.contract.prepare_batch(IMAGES[:3])), got[:3], atol=1e-6)
    np.testing.assert_allclose(m.predict(m.contract.prepare(IMAGES[0]))[0], got[0], atol=1e-6)
    preds = m.classify([str(p) for p in IMAGES], top_k=2)
    assert all(len(p) == 2 and p[0].score >= p[1].score for p in preds)
    assert [p[0].label for p in preds] == [keras_label(p) for p in IMAGES]


@pytest.mark.parametrize("name", ["model_int8.tflite", "model_fp32.onnx"])
def test_cli_run_json_on_the_images(name, capsys):
    need(name)
    assert main(["run", str(TINY / name), "--source", str(TINY / "images"), "--json", "--threads", "1"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == len(IMAGES)
    for d in lines:
        assert d["status"] == "ok" and d["top"][0]["label"] == keras_label(d["source"])


def test_cli_info_reads_the_embedded_contract(capsys):
    need("x.tflite")
    assert main(["info", str(TINY / "model_int8.tflite"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["contract_origin"] == "embedded" and info["inputs"][0]["dtype"] == "uint8"


def test_cli_info_without_an_interpreter_reads_the_tflite_file_itself():
    """The core install (numpy + OpenCV, no tledge[runtime]): `tledge info x.tflite` said only "no TFLite
    interpreter installed"; the contract, labels and tensor shapes are in the file's bytes."""
    block = "import sys; sys.modules.update(ai_edge_litert=None, tflite_runtime=None, onnxruntime=None, onnx=None); "

    def info(path, *more):
        code = block + f"from tledge.cli import main; sys.exit(main(['info', {str(path)!r}, *{list(more)!r}]))"
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)

    r = info(TINY / "model_int8.tflite")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "backend    none installed" in r.stdout and "contract   embedded in the file" in r.stdout
    assert f"labels     {len(CLASSES)}: {', '.join(CLASSES)}" in r.stdout
    assert "input      pixels  [1, 48, 48, 3]" in r.stdout
    doc = json.loads(info(TINY / "model_int8.tflite", "--json").stdout)
    assert doc["backend"] is None and doc["contract"]["labels"] == list(CLASSES)
    r = info(FOREIGN / "model_int8.tflite")  # no metadata, no tledge.json beside it
    assert r.returncode == 0 and "contract   none" in r.stdout, r.stderr[-2000:]
    r = info(TINY / "model_int8.onnx")  # ONNX needs onnxruntime (or onnx) to read: one line, exit 2
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "onnxruntime" in r.stderr, r.stderr
    from conftest import shared_asset

    coral = shared_asset("coral_tflite_classifiers", "mobilenet_v1_0.25_128_quant.tflite")
    r = info(coral)  # standard TFLite metadata: said only "contract none", as if the file had no labels
    assert r.returncode == 0 and "standard TFLite metadata: 1001 labels (background; tench, Tinca tinca; " in r.stdout, r.stdout


def test_runtime_process_never_imports_tensorflow():
    need("x.tflite")
    code = ("import sys; from tledge.runtime import load; "
            f"m = load({str(TINY / 'model_int8.tflite')!r}, threads=1); "
            f"print(m.classify([{str(IMAGES[0])!r}])[0][0].label); "
            "bad = [k for k in ('tensorflow', 'keras', 'tledge.export', 'tledge.train') if k in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == keras_label(IMAGES[0])


def test_bundle_from_committed_export(tmp_path):
    import tarfile

    from tledge.devices.bundle import make_bundle

    res = make_bundle(TINY, "rpi5", tmp_path / "tiny-rpi5.tar.gz")
    assert res.model == "model_int8.tflite"
    with tarfile.open(res.path) as tar:
        names = tar.getnames()
    assert f"{res.top}/model/model_int8.tflite" in names and f"{res.top}/run.sh" in names
    assert not any("/lib/tledge/export/" in n or "/lib/tledge/train/" in n for n in names)


def test_fixed_batch_tflite_runs_any_number_of_images():
    need("x.tflite")
    from tledge.runtime import load

    # the tiny Keras model re-wrapped with a fixed batch of 4, converted with no metadata
    model = load(FOREIGN / "fixed_batch4.tflite", preprocess="raw")  # the tiny model bakes its normalisation
    assert model.backend.inp.shape[0] == 4 and model.fixed_batch == 4
    assert any("exactly 4" in note for note in model.load_info.notes)
    files = IMAGES[::3][:7]
    x = model.contract.prepare_batch(files)
    want = keras_probs(files)
    for n in (1, 3, 4, 7):
        got = model.predict(x[:n])
        assert got.shape == (n, 3)
        np.testing.assert_allclose(got, want[:n], atol=1e-5)


# ---- the export folder's manifest, as the runtime checks it --------------------------------------------------
def test_run_and_info_on_an_export_folder(capsys):
    need("x.tflite")
    need("x.onnx")
    img = str(IMAGES[0])
    assert main(["run", str(TINY), "--source", img, "--json"]) == 0
    captured = capsys.readouterr()
    assert "model_int8.tflite chosen" in captured.err and "vouched" in captured.err
    assert json.loads(captured.out)["top"][0]["label"] == keras_label(img)
    assert main(["run", str(TINY), "--source", img, "--device", "jetson-orin"]) == 0
    assert "model_fp32.onnx chosen" in capsys.readouterr().err
    assert main(["-q", "run", str(TINY), "--source", img, "--device", "jetson-orin"]) == 0
    captured = capsys.readouterr()  # -q: the result, no load line or notes
    assert captured.err == "" and keras_label(img) in captured.out, captured
    assert main(["run", str(TINY), "--source", img, "--device", "jetson-orin"]) == 0
    assert "model_fp32.onnx chosen" in capsys.readouterr().err
    assert main(["info", str(TINY)]) == 0
    text = capsys.readouterr().out
    assert "model_int8.onnx" in text and "parity pass" in text and "vouched" in text
    assert main(["info", str(TINY), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["problems"] == []


def test_tampered_file_is_refused_by_bundle_run_info_and_bench(tmp_path, capsys):
    need("x.tflite")
    out = tmp_path / "out"
    shutil.copytree(TINY, out)
    data = bytearray((out / "model_int8.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / "model_int8.tflite").write_bytes(bytes(data))
    img = str(IMAGES[0])
    assert main(["bundle", str(out), "--device", "rpi4", "--out", str(tmp_path / "b.tar.gz")]) == 2
    assert "model_int8.tflite: changed since export" in capsys.readouterr().err
    assert not (tmp_path / "b.tar.gz").exists()
    for argv in (["run", str(out / "model_int8.tflite"), "--source", img], ["run", str(out), "--source", img],
                 ["info", str(out / "model_int8.tflite")], ["info", str(out)],
                 ["bench", str(out), "--runs", "1", "--same-process"], ["bench", str(out / "model_int8.tflite")]):
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        assert "model_int8.tflite" in captured.err and "changed" in captured.err.lower(), argv
    assert main(["info", str(out / "model_fp32.tflite")]) == 0  # an intact file beside it is fine
    capsys.readouterr()
