"""benchmarks/run.py: its pieces, cheaply (no timings measured or asserted; no TensorFlow imported)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("tledge_bench_run", RUN)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


def synthetic() -> dict:
    """A small result in the shape the three section scripts write."""
    keras = {"path": "keras Model.predict", "format": "keras", "precision": "fp32", "latency_ms": 40.0,
             "latency_ms_median": 42.0, "batch1_images_per_s": 25.0, "batch_images_per_s": 200.0,
             "speedup_vs_keras_tf_function": 0.1, "speedup_vs_keras_predict": 1.0}
    tf_fn = {**keras, "path": "keras in tf.function", "latency_ms": 4.0, "speedup_vs_keras_tf_function": 1.0,
             "speedup_vs_keras_predict": 10.0}
    f = {"format": "tflite", "precision": "int8", "latency_ms": 1.0, "latency_ms_median": 1.1,
         "batch1_images_per_s": 1000.0, "batch_images_per_s": 1100.0, "speedup_vs_keras_tf_function": 4.0,
         "speedup_vs_keras_predict": 40.0, "size_mib": 0.31, "export_s": 12.5, "top1_agreement": 0.993,
         "accuracy": 0.79, "reference_accuracy": 0.797, "max_abs": 0.1, "median_image_max_abs": 0.01,
         "passed": True, "failures": []}
    export = {"model": "MobileNet v1 0.25 @224", "export_total_s": 60.0, "val_images": 152, "calib_limit": 256,
              "threads": 2, "batch": 32, "rounds": 5, "rows": [
                  keras, tf_fn, {**f, "path": "model_int8.tflite"},
                  {**f, "path": "model_int8.onnx", "format": "onnx", "passed": False, "top1_agreement": 0.9,
                   "failures": ["top-1 agreement 0.900 < 0.98"]}],
              "conversion_failures": [], "parity_passed": False,
              "export_seconds": {"model_int8.tflite": 12.5, "model_int8.onnx": 3.0, "int8 fidelity": 20.0}}
    runtime = {"overhead": {"threads": 2, "rounds": 15, "per_round": 50,
                            "ms": {"bare set+invoke+get": 2.0, "predict(prepared)": 2.04, "classify([image])": 2.3},
                            "ms_median": {"bare set+invoke+get": 2.1, "predict(prepared)": 2.14,
                                          "classify([image])": 2.4},
                            "overhead_pct": {"predict(prepared)": 2.0, "classify([image])": 15.0},
                            "overhead_pct_median": {"predict(prepared)": 1.9, "classify([image])": 14.3},
                            "python_side_us": {"bare set+invoke+get": 3.5, "predict(prepared)": 7.6}},
               "folder": {"images": 153, "workers": 1, "threads": 1, "rounds": 5,
                          "images_per_s": {"prepare only": 300.0, "infer only": 280.0, "pipeline": 250.0},
                          "images_per_s_median": {"prepare only": 290.0, "infer only": 270.0, "pipeline": 240.0},
                          "pipeline_vs_slower_stage": 0.893, "pipeline_vs_slower_stage_median": 0.889,
                          "pipeline_vs_serial": 1.7},
               "folder_variants": [],
               "process": {"runtime (LiteRT int8)": {"process_s": 0.2, "startup_s": 0.02, "import_s": 0.11,
                                                     "load_s": 0.03, "inference_s": 0.02, "peak_rss_mb": 71.0,
                                                     "tensorflow_imported": False, "runs": 7},
                           "TensorFlow/Keras (.keras)": {"process_s": 5.5, "startup_s": 0.02, "import_s": 2.6,
                                                         "load_s": 1.1, "inference_s": 1.1, "peak_rss_mb": 676.0,
                                                         "tensorflow_imported": True, "runs": 2},
                           "ratios": {"process_time_x": 27.5, "peak_rss_x": 9.5}}}
    int8 = {"steps": ["fold", "adaptive"], "stems": [0], "seconds": {"mnv1": 100.0}, "families": {"mnv1": {
        "keras": {"agreement": 1.0, "accuracy": 0.797, "max_abs": 0.0, "median_abs": 0.0, "latency_ms": None},
        "repaired int8 tflite": {"agreement": 0.993, "accuracy": 0.791, "max_abs": 0.103, "median_abs": 0.0121,
                                 "latency_ms": 1.44}}}}
    load = {"load_avg_start": 1.0, "load_avg_end": 2.0, "other_processes_cores": 0.7}
    return {"quick": False, "command": "python benchmarks/run.py", "wall_s": 900.0,
            "machine": {"cpu": "Test CPU", "cpu_flags": ["avx2"], "cores": 2, "usable_cores": 2, "memory_gib": 8.0,
                        "python": "3.11.7", "versions": {"tensorflow": "2.21.0", "onnxruntime": "1.31.1"},
                        "tledge_git": "abc1234", "date": "2026-01-01 00:00 UTC"},
            "sections": {"export": {"status": "ok", "seconds": 300.0, "load": load, "data": export},
                         "runtime": {"status": "ok", "seconds": 200.0, "load": load, "data": runtime},
                         "int8_fidelity": {"status": "ok", "seconds": 400.0, "load": load, "data": int8}}}


def test_help_runs_without_tensorflow():
    out = subprocess.run([sys.executable, str(RUN), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for word in ("--quick", "--skip", "--json", "export", "runtime", "int8_fidelity"):
        assert word in out.stdout


def test_markdown_tables_and_targets_from_a_synthetic_result(bench):
    r = synthetic()
    md = bench.render_markdown(r)
    assert "Machine: Test CPU (2 cores, avx2, 8 GiB); Python 3.11.7; tensorflow 2.21.0, onnxruntime 1.31.1" in md
    for title in ("### Summary against the targets", "### Export and inference per format",
                  "### Runtime overhead over a bare interpreter", "### Folder throughput",
                  "### Process start and peak memory", "### int8 fidelity", "### Sections"):
        assert title in md
    assert "| model_int8.tflite | 12.5 | 0.310 | 1.00 / 1.10 | 1000 | 1100 | 40.0x | 4.00x | 0.993 |" in md
    assert "Other processes kept 0.7 of the 2 cores busy" in md
    verdicts = {row[0].split(",")[0].split(":")[0]: row[3] for row in bench.targets(r)}
    assert verdicts == {
        "per-image overhead over a bare interpreter": "missed",  # classify +15 %
        "folder throughput / slower stage alone": "met",
        "runtime process": "met",
        "int8 TFLite vs Keras": "met",
        "parity of every exported file (default thresholds)": "missed",  # the int8 ONNX row
    }
    assert "1/2 pass (failing: model_int8.onnx)" in md
    assert "15.5 s converting the files (the 'export s' column), 20.0 s int8 fidelity; the rest of the 60.0 s" in md
    assert "TF/Keras 5.50 s" in md and "9.5x" in md  # TF/Keras against the runtime process


def test_missing_or_broken_section_data_does_not_crash_the_report(bench):
    r = synthetic()
    r["sections"]["runtime"]["data"] = {"overhead": {}}  # e.g. an older script's JSON
    r["sections"]["export"] = {"status": "failed", "reason": "exit status 1", "seconds": 3.0}
    r["sections"]["int8_fidelity"] = {"status": "skipped", "reason": "--skip"}
    md = bench.render_markdown(r)
    assert "| export | failed | 3 |" in md and "| int8_fidelity | skipped |" in md
    assert "### Export and inference" not in md


def test_without_shared_assets_every_section_is_skipped_with_a_reason(bench, tmp_path, capsys):
    out = tmp_path / "res" / "r.json"
    assert bench.main(["--assets", str(tmp_path / "no_assets"), "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["sections"]) == {"export", "runtime", "int8_fidelity"}
    for s in r["sections"].values():
        assert s["status"] == "skipped" and "shared asset not available" in s["reason"]
    assert r["machine"]["cores"] >= 1 and r["machine"]["python"] and r["machine"]["date"]
    assert "### Sections" in out.with_suffix(".md").read_text()
    out.with_suffix(".md").unlink()
    assert bench.main(["--render", str(out)]) == 0  # the Markdown again, from the JSON alone
    assert "### Sections" in out.with_suffix(".md").read_text()
    assert sorted(p.name for p in out.parent.iterdir()) == ["r.json", "r.md"]  # no temp files left
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert "skipped (shared asset not available" in capsys.readouterr().out


def test_skip_only_and_unknown_names(bench, tmp_path):
    out = tmp_path / "r.json"
    assert bench.main(["--only", "runtime,export", "--skip", "export", "--assets", str(tmp_path),
                       "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert list(r["sections"]) == ["export", "runtime"]
    assert r["sections"]["export"]["reason"] == "--skip"
    with pytest.raises(SystemExit, match="unknown section"):
        bench.main(["--skip", "nope", "--json", str(out)])


@pytest.mark.parametrize("body, status", [
    ("Path(sys.argv[-1]).write_text(json.dumps({'rows': [1]}))", "ok"),
    ("Path(sys.argv[-1]).write_text(json.dumps({'skipped': 'no GPU'}))", "skipped"),
    ("print('boom'); sys.exit(3)", "failed"),
])
def test_a_section_runs_as_a_subprocess_and_its_outcome_is_recorded(bench, tmp_path, body, status):
    script = tmp_path / "fake_bench.py"
    script.write_text(f"import json, sys\nfrom pathlib import Path\nassert '--quick' in sys.argv\n{body}\n")
    section = bench.Section("fake", str(script), "a fake section", (), ())
    r = bench.run_section(section, quick=True, assets=tmp_path, log_file=tmp_path / "fake.log", timeout=60)
    assert r["status"] == status
    assert r["seconds"] >= 0 and "load_avg_start" in r["load"]
    if status == "ok":
        assert r["data"] == {"rows": [1]}
    elif status == "skipped":
        assert r["reason"] == "no GPU"
    else:
        assert r["reason"] == "exit status 3" and r["log_tail"] == ["boom"]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_section_past_its_timeout_is_ended_with_its_children(bench, tmp_path):
    script = tmp_path / "slow_bench.py"
    script.write_text("import subprocess, sys, time\n"
                      "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                      "print(child.pid, flush=True)\ntime.sleep(60)\n")
    section = bench.Section("slow", str(script), "a slow section", (), (), quick_args=())
    r = bench.run_section(section, quick=False, assets=tmp_path, log_file=tmp_path / "slow.log", timeout=1.5)
    assert r["status"] == "failed" and r["reason"].startswith("timeout")
    child = int(r["log_tail"][0])
    for _ in range(50):  # the killed grandchild is reaped by init shortly after
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            break
        if state == "Z":
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"grandchild {child} still running")


def test_turn_threads_times_an_export_on_each_thread_count(tmp_path, capsys):
    """benchmarks/turn_threads.py on the committed tiny export: one row per thread count, each with a ratio per
    repeat and the machine line; a folder without the files is refused (exit 2) before anything is timed."""
    spec = importlib.util.spec_from_file_location("tledge_turn_threads", REPO / "benchmarks" / "turn_threads.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "t.json"
    assert mod.main([str(REPO / "tests" / "assets" / "tiny"), "--format", "onnx", "--threads", "2,1", "--repeat", "2",
                     "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["threads"] for r in rows] == [2, 1] and all(len(r["ratios"]) == 2 and min(r["ratios"]) > 0 for r in rows)
    assert "| 1 | " in capsys.readouterr().out
    assert mod.main([str(tmp_path)]) == 2
