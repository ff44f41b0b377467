"""The runtime on committed model files (tests/assets/tiny, made by `python -m tests.assets.make`):
no TensorFlow at test time, so these also run in the tledge[runtime]-only venv (ci/runtime_venv.sh)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tledge.cli import main

pytestmark = pytest.mark.runtime_only
TINY = Path(__file__).parent / "assets" / "tiny"
REF = json.loads((TINY / "reference.json").read_text())
IMAGES = sorted((TINY / "images").iterdir())
FILES = ["model_fp32.tflite", "model_int8.tflite", "model_fp32.onnx", "model_int8.onnx"]
BACKEND = {".tflite": "ai_edge_litert", ".onnx": "onnxruntime"}


def _need(name: str) -> None:
    if name.endswith(".tflite"):
        try:
            import ai_edge_litert  # noqa: F401
        except ImportError:
            pytest.importorskip("tflite_runtime")
    else:
        pytest.importorskip("onnxruntime")


def test_assets_are_small_and_complete():
    total = sum(p.stat().st_size for p in TINY.rglob("*") if p.is_file())
    assert total < 400 * 1024, f"tests/assets/tiny is {total} bytes"
    assert {p.name for p in IMAGES} == set(REF["keras_probabilities"])
    ref = np.array(list(REF["keras_probabilities"].values()))
    assert sorted(set(ref.argmax(1))) == [0, 1, 2], "the reference images must cover every class"
    assert ref.max(1).min() > 0.6, "the reference model must be confident (a trained model, not random weights)"


@pytest.mark.parametrize("name", FILES)
def test_file_matches_the_keras_reference(name):
    _need(name)
    from tledge.runtime import load

    m = load(TINY / name, threads=1)
    assert m.load_info.contract_origin == "embedded"
    assert m.contract.labels == tuple(REF["labels"]) and (m.contract.height, m.contract.width) == (48, 48)
    ref = np.array([REF["keras_probabilities"][p.name] for p in IMAGES])
    got = m.scores(m.run_inputs(np.stack([m.to_input(str(p)) for p in IMAGES])))
    assert (got.argmax(1) == ref.argmax(1)).all()
    tol = 1e-4 if "fp32" in name else 0.08  # int8: a few output quantisation steps
    assert np.abs(got - ref).max() <= tol
    preds = m.classify([str(p) for p in IMAGES], top_k=2)
    assert [p[0].label for p in preds] == [REF["labels"][i] for i in ref.argmax(1)]


@pytest.mark.parametrize("name", ["model_int8.tflite", "model_fp32.onnx"])
def test_cli_run_json_on_the_images(name, capsys):
    _need(name)
    assert main(["run", str(TINY / name), "--source", str(TINY / "images"), "--json", "--threads", "1"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == len(IMAGES)
    for d in lines:
        ref = REF["keras_probabilities"][Path(d["source"]).name]
        assert d["status"] == "ok" and d["top"][0]["label"] == REF["labels"][int(np.argmax(ref))]


def test_cli_info_reads_the_embedded_contract(capsys):
    _need("x.tflite")
    assert main(["info", str(TINY / "model_int8.tflite"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["contract_origin"] == "embedded" and info["inputs"][0]["dtype"] == "uint8"


def test_runtime_process_never_imports_tensorflow():
    _need("x.tflite")
    code = ("import sys; from tledge.runtime import load; "
            f"m = load({str(TINY / 'model_int8.tflite')!r}, threads=1); "
            f"print(m.classify([{str(IMAGES[0])!r}])[0][0].label); "
            "bad = [k for k in ('tensorflow', 'keras', 'tledge.export', 'tledge.train') if k in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    ref = REF["keras_probabilities"][IMAGES[0].name]
    assert r.stdout.strip() == REF["labels"][int(np.argmax(ref))]


def test_bundle_from_committed_export(tmp_path):
    import tarfile

    from tledge.devices.bundle import make_bundle

    res = make_bundle(TINY, "rpi5", tmp_path / "tiny-rpi5.tar.gz")
    assert res.model == "model_int8.tflite"
    with tarfile.open(res.path) as tar:
        names = tar.getnames()
    assert f"{res.top}/model/model_int8.tflite" in names and f"{res.top}/run.sh" in names
    assert not any("/lib/tledge/export/" in n or "/lib/tledge/train/" in n for n in names)
