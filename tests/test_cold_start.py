"""benchmarks/cold_start.py, and what `tledge run` imports on one image (the cold-start budget)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import keras_label

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "assets" / "tiny"
pytestmark = pytest.mark.runtime_only


# what `tledge run FILE.tflite --source IMAGE` may import of tledge: a new module on this path is a cold-start cost
RUN_PATH = {"tledge", "tledge._deps", "tledge.artifacts", "tledge.cli", "tledge.cli.run", "tledge.cli.validate",
            "tledge.cli.model_options", "tledge.cli.oserrors",
            "tledge.contract", "tledge.contract_types", "tledge.errors", "tledge.flatbuf", "tledge.images", "tledge.log", "tledge.logfiles", "tledge.metadata",
            "tledge.paths", "tledge.safejson", "tledge.signals", "tledge.text", "tledge.trust",
            "tledge.runtime", "tledge.runtime.backends", "tledge.runtime.litert", "tledge.runtime.lookup", "tledge.runtime.foreign", "tledge.runtime.model",
            "tledge.runtime.outputs", "tledge.runtime.pipeline", "tledge.runtime.scores",
            "tledge.runtime.sources", "tledge.runtime.frames", "tledge.version", "tledge.imagebytes"}
# never on that path (beyond what numpy, OpenCV and LiteRT import themselves): other backends and converters,
# thread pools, the zip / CSV readers, tempfile and shutil (with bz2, lzma, random)
HEAVY = ("tensorflow", "keras", "tf_keras", "tf2onnx", "onnx", "onnxruntime", "tflite_runtime", "jax", "torch",
         "concurrent", "zipfile", "csv", "tempfile", "shutil", "random", "bz2", "lzma")
RUN_ONE = """
import sys, json
import numpy, cv2
from ai_edge_litert.interpreter import Interpreter   # what the bare LiteRT script imports
before = set(sys.modules)
from tledge.cli import main
rc = main(["run", sys.argv[1], "--source", sys.argv[2]])
print(json.dumps([sorted(set(sys.modules) - before), "hashlib" in before]))
sys.exit(rc)
"""


def _run_one(model: Path, image: Path) -> tuple[set[str], str, bool]:
    r = subprocess.run([sys.executable, "-c", RUN_ONE, str(model), str(image)], capture_output=True, text=True,
                       timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    new, had_hashlib = json.loads(r.stdout.strip().splitlines()[-1])
    return set(new), r.stdout, had_hashlib


def test_tledge_run_on_one_image_imports_only_what_it_needs(tmp_path):
    pytest.importorskip("ai_edge_litert")
    image = sorted((TINY / "images").iterdir())[0]
    new, out, had_hashlib = _run_one(TINY / "model_int8.tflite", image)
    tledge = {m for m in new if m.split(".")[0] == "tledge"}
    assert tledge - RUN_PATH == set(), "imported on tledge run's path (cold start): " + ", ".join(sorted(tledge - RUN_PATH))
    heavy = sorted(m for m in new if m.split(".")[0] in HEAVY or m == "numpy.ma" or m.startswith("numpy.ma."))
    assert heavy == [], f"imported on tledge run's path (cold start): {heavy}"
    # it ran, and checked the manifest's sha256 (numpy 1.x imports hashlib itself, through numpy.random)
    assert {"tledge.runtime.model", "tledge.cli.run"} <= new and (had_hashlib or "hashlib" in new)
    assert f": {keras_label(image)} " in out  # it did label the image, as Keras does
    (tmp_path / "model.tflite").write_bytes((TINY / "model_int8.tflite").read_bytes())  # no manifest beside it
    new, out, _ = _run_one(tmp_path / "model.tflite", image)
    assert "tledge.runtime.model" in new and "hashlib" not in new  # nothing to hash: OpenSSL not loaded
    assert f": {keras_label(image)} " in out


def test_cold_start_benchmark_measures_both_processes():
    pytest.importorskip("ai_edge_litert")
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import cold_start
    finally:
        sys.path.pop(0)
    image = sorted((TINY / "images").iterdir())[0]
    r = cold_start.measure(TINY / "model_int8.tflite", image, runs=1, threads=1)
    for name in ("tledge run", "bare LiteRT script"):
        # the child's own peak: ru_maxrss from wait4 gave this (large) test process's peak to both sides
        assert r[name]["median_s"] > 0 and 10 < r[name]["median_peak_rss_mb"] < 250
        assert image.name in r[name]["output"]
    assert r["ratio"]["peak_rss"] > 0.5 and r["ratio"]["time_median"] > 0.3
