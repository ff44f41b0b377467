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
            "tledge.contract", "tledge.errors", "tledge.flatbuf", "tledge.images", "tledge.log", "tledge.metadata",
            "tledge.runtime", "tledge.runtime.backends", "tledge.runtime.foreign", "tledge.runtime.model",
            "tledge.runtime.options", "tledge.runtime.outputs", "tledge.runtime.pipeline", "tledge.runtime.sources"}
# never on that path: other backends and converters, thread pools, zip/CSV readers, the other subcommands
HEAVY = ("tensorflow", "keras", "tf_keras", "tf2onnx", "onnx", "onnxruntime", "tflite_runtime", "jax", "torch",
         "concurrent", "zipfile", "csv")


def test_tledge_run_on_one_image_imports_only_what_it_needs():
    pytest.importorskip("ai_edge_litert")
    image = sorted((TINY / "images").iterdir())[0]
    code = f"""
import sys, json
from tledge.cli import main
rc = main(["run", {str(TINY / "model_int8.tflite")!r}, "--source", {str(image)!r}])
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("tledge",) + {HEAVY!r} or m == "numpy.ma" or m.startswith("numpy.ma."))))
sys.exit(rc)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    imported = set(json.loads(r.stdout.strip().splitlines()[-1]))
    assert imported - RUN_PATH == set(), "imported on tledge run's path (cold start): " + ", ".join(sorted(imported - RUN_PATH))
    assert {"tledge.runtime.model", "tledge.cli.run"} <= imported  # it did run through the CLI
    assert f": {keras_label(image)} " in r.stdout  # it did label the image, as Keras does


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
        assert r[name]["median_s"] > 0 and r[name]["median_peak_rss_mb"] > 10
        assert image.name in r[name]["output"]
    assert r["ratio"]["peak_rss"] > 0.5 and r["ratio"]["time_median"] > 0.3
