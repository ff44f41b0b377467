"""benchmarks/cold_start.py, and what `tledge run` imports on one image (the cold-start budget)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tiny import keras_label

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "assets" / "tiny"
pytestmark = pytest.mark.runtime_only


def test_tledge_run_on_one_image_imports_only_what_it_needs():
    pytest.importorskip("ai_edge_litert")
    image = sorted((TINY / "images").iterdir())[0]
    code = f"""
import sys
from tledge.cli import main
rc = main(["run", {str(TINY / "model_int8.tflite")!r}, "--source", {str(image)!r}])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "onnxruntime", "concurrent")
               or m.startswith(("tledge.devices", "tledge.train", "tledge.export", "tledge.demo", "numpy.ma."))
               or m in ("numpy.ma", "csv"))
print(heavy)
sys.exit(rc)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"
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
