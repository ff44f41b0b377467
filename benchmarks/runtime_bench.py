"""Runtime benchmark: the three figures of docs/runtime-results.md, measured side by side in one run.

  (1) per-image overhead of EdgeModel.predict / classify over a bare interpreter
      set_tensor + invoke + get_tensor on an already prepared input (target <= 10 % at batch 1);
  (2) folder throughput (decode + resize + infer, real JPEGs of hymenoptera_data/val) against the
      slower of the two stages alone (target >= 80 %, thanks to overlap);
  (3) a runtime-only process (import + load int8 MobileNetV2 + one inference on a JPEG) against the
      same with TensorFlow/Keras (target < 0.5 s and < 150 MB peak RSS);
  (4) cold start of the command line: `tledge run MODEL --source JPEG` against a bare LiteRT script
      doing the same (benchmarks/cold_start.py; target <= 1.5x in time and peak RSS).

The model: keras.applications.MobileNetV2 224 (random weights: fine for speed) with its
preprocessing baked in, converted here to full-int8 TFLite (uint8 I/O; representative set of real
photos) and cached under $TLEDGE_BENCH_CACHE (default ~/.cache/tledge-bench).

    .venv/bin/python benchmarks/runtime_bench.py [--json out.json] [--rounds N]
    .venv/bin/python benchmarks/runtime_bench.py --quick     # smoke run: 3 rounds, 2+1 processes, no variants
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("TLEDGE_SHARED_ASSETS", REPO.parent / "shared" / "assets"))
VAL = ASSETS / "hymenoptera_data" / "val"
TRAIN = ASSETS / "hymenoptera_data" / "train"
CACHE = Path(os.environ.get("TLEDGE_BENCH_CACHE", Path.home() / ".cache" / "tledge-bench"))
MODEL = CACHE / "mobilenet_v2_224_int8.tflite"
KERAS = CACHE / "mobilenet_v2_224.keras"


# ---- the model (TensorFlow only here, once) ------------------------------------------------------------

def missing_assets() -> str | None:
    """Why this benchmark cannot run here, or None."""
    for p in (VAL, TRAIN):
        if not p.is_dir():
            return f"shared asset not available: {p}"
    return None


def build_model() -> None:
    if MODEL.is_file() and KERAS.is_file():
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    code = f"""
import os, numpy as np
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras, tensorflow as tf
from tledge.contract import Contract, Quant
from tledge.images import iter_image_files
from tledge.export.metadata import embed_tflite
keras.utils.set_random_seed(0)
inp = keras.Input((224, 224, 3))
x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inp)
base = keras.applications.MobileNetV2(input_shape=(224, 224, 3), include_top=False, weights=None, pooling="avg")
out = keras.layers.Dense(2, activation="softmax")(base(x))
model = keras.Model(inp, out)
model.save({str(KERAS)!r})
c = Contract(height=224, width=224, norm="tf", baked=True, input_dtype="float32", labels=("ants", "bees"))
files = list(iter_image_files({str(TRAIN)!r}))[::8][:32]
calib = np.stack([c.prepare(f) for f in files]).astype(np.float32)
def rep():
    for i, x in enumerate(calib):
        x = x[None].copy()
        if i == 0:
            x[0, 0, 0], x[0, 0, 1] = 0.0, 255.0
        yield [x]
conv = tf.lite.TFLiteConverter.from_keras_model(model)
conv.optimizations = [tf.lite.Optimize.DEFAULT]
conv.representative_dataset = rep
conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
conv.inference_input_type = conv.inference_output_type = tf.uint8
data = conv.convert()
from ai_edge_litert.interpreter import Interpreter
it = Interpreter(model_content=data)
qi, qo = it.get_input_details()[0]["quantization"], it.get_output_details()[0]["quantization"]
c8 = c.for_file(input_dtype="uint8", input_quant=Quant(qi[0], qi[1]), output_quant=Quant(qo[0], qo[1]))
open({str(MODEL)!r}, "wb").write(embed_tflite(data, c8))
"""
    print(f"building the int8 MobileNetV2 once into {CACHE} ...", file=sys.stderr)
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- (1) overhead over a bare interpreter ------------------------------------------------------------------

def overhead(rounds: int, per_round: int = 50, threads: int = 2) -> dict:
    from tledge.runtime import load

    model = load(MODEL, threads=threads)
    it = model.backend.interpreter
    i_in, i_out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)  # already the model's size: prepare is a no-op
    x = model.prepare(rgb)[None]

    def bare():
        it.set_tensor(i_in, x)
        it.invoke()
        return it.get_tensor(i_out)

    def invoke_only():
        it.invoke()

    variants = {"bare set+invoke+get": bare, "invoke only": invoke_only, "predict(prepared)": lambda: model.predict(x),
                "classify([image])": lambda: model.classify([rgb], top_k=1)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():
        for _ in range(20):
            fn()
    for r in range(rounds):
        order = list(variants.items())
        order = order[r % len(order):] + order[:r % len(order)]  # rotate: no variant always goes first
        for name, fn in order:
            t = time.perf_counter()
            for _ in range(per_round):
                fn()
            times[name].append(1000 * (time.perf_counter() - t) / per_round)
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    stubbed = python_side_us(it, variants)
    return {"python_side_us": stubbed,
            "python_side_pct_of_bare": {k: round(100 * (v - stubbed["bare set+invoke+get"]) /
                                                 (1000 * best["bare set+invoke+get"]), 3)
                                        for k, v in stubbed.items() if "bare" not in k and "invoke" not in k},
            "ms": {k: round(v, 4) for k, v in best.items()},
            "ms_median": {k: round(v, 4) for k, v in med.items()},
            "overhead_pct": {k: round(100 * (v / best["bare set+invoke+get"] - 1), 2)
                             for k, v in best.items() if "bare" not in k},
            "overhead_pct_median": {k: round(100 * (v / med["bare set+invoke+get"] - 1), 2)
                                    for k, v in med.items() if "bare" not in k},
            "threads": threads, "rounds": rounds, "per_round": per_round}


def python_side_us(it, variants: dict) -> dict:
    """Microseconds per call with the interpreter's invoke() stubbed out: what each path costs on top
    of the kernels themselves (robust on a shared machine, where invoke() timings wander)."""
    import timeit

    it.invoke = lambda: None
    try:
        return {k: round(min(timeit.repeat(fn, number=500, repeat=7)) / 500 * 1e6, 2)
                for k, fn in variants.items() if k != "invoke only"}
    finally:
        del it.invoke


# ---- (2) folder throughput ----------------------------------------------------------------------------------

def folder(rounds: int, threads: int | None = None, workers: int | None = None) -> dict:
    """Images/s of preparation alone (the pipeline's worker pool), inference alone (the same model,
    the same threads) and the whole pipeline, interleaved round by round; the ratio uses the best
    round of each (the machine is shared: the best round is the least disturbed one)."""
    from tledge.images import iter_image_files
    from tledge.runtime import load
    from tledge.runtime.pipeline import Runner, ordered_map, split_cores
    from tledge.runtime.sources import FileSource, open_source

    w0, t0 = split_cores()
    workers, threads = workers or w0, threads or t0
    model = load(MODEL, threads=threads)
    files = list(iter_image_files(VAL))
    n = len(files)

    def prep_only():
        src = FileSource(str(VAL), files)
        return list(ordered_map(lambda f: model.to_input(f.rgb()), src.frames(), workers=workers,
                                depth=2 * workers + 1))

    inputs = prep_only()

    def infer_only():
        for x in inputs:
            model.run_inputs(x[None])

    def pipeline():
        runner = Runner(model, workers=workers)
        for _ in runner.run(open_source(VAL, on_event=None)):
            pass
        assert runner.summary.ok == n, runner.summary

    stages = {"prepare only": prep_only, "infer only": infer_only, "pipeline": pipeline}
    rates: dict[str, list[float]] = {k: [] for k in stages}
    for r in range(rounds):
        order = list(stages.items())
        for name, fn in order[r % 3:] + order[:r % 3]:
            t = time.perf_counter()
            fn()
            rates[name].append(n / (time.perf_counter() - t))
    best = {k: max(v) for k, v in rates.items()}
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {"images": n, "workers": workers, "threads": model.backend.threads, "rounds": rounds,
            "images_per_s": {k: round(v, 1) for k, v in best.items()},
            "images_per_s_median": {k: round(v, 1) for k, v in med.items()},
            "pipeline_vs_slower_stage": round(best["pipeline"] / min(best["prepare only"], best["infer only"]), 3),
            "pipeline_vs_slower_stage_median": round(med["pipeline"] / min(med["prepare only"], med["infer only"]), 3),
            "pipeline_vs_serial": round(best["pipeline"] * (1 / best["prepare only"] + 1 / best["infer only"]), 3)}


# ---- (3) a runtime-only process against TensorFlow/Keras -------------------------------------------------------

RUNTIME_CODE = """
import sys, time, json
t0 = float(sys.argv[1]); t = time.time()
def peak():  # VmHWM: ru_maxrss would carry the parent's peak across vfork + exec
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024
from tledge.runtime import load
t_import = time.time()
m = load(sys.argv[2])
t_load = time.time()
top = m.classify([sys.argv[3]])[0][0]
t_inf = time.time()
print(json.dumps({"tensorflow_imported": "tensorflow" in sys.modules, "label": top.label,
                  "startup_s": t - t0, "import_s": t_import - t, "load_s": t_load - t_import,
                  "inference_s": t_inf - t_load, "peak_rss_mb": peak()}))
"""

KERAS_CODE = """
import sys, time, json, os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
t0 = float(sys.argv[1]); t = time.time()
def peak():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024
import keras, numpy as np
from tledge.contract import Contract
t_import = time.time()
m = keras.models.load_model(sys.argv[2])
t_load = time.time()
x = Contract(height=224, width=224, input_dtype="float32").prepare(sys.argv[3])[None]
y = m.predict(x, verbose=0)
t_inf = time.time()
print(json.dumps({"tensorflow_imported": "tensorflow" in sys.modules, "label": int(y.argmax()),
                  "startup_s": t - t0, "import_s": t_import - t, "load_s": t_load - t_import,
                  "inference_s": t_inf - t_load, "peak_rss_mb": peak()}))
"""


def one_process(code: str, model: Path, image: Path) -> dict:
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", code, repr(t0), str(model), str(image)], capture_output=True,
                         text=True, check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["process_s"] = time.time() - t0
    return r


def processes(runs: int, keras_runs: int) -> dict:
    image = next(iter(sorted(VAL.glob("ants/*.jpg"))))
    res = {"runtime (LiteRT int8)": [one_process(RUNTIME_CODE, MODEL, image) for _ in range(runs)],
           "TensorFlow/Keras (.keras)": [one_process(KERAS_CODE, KERAS, image) for _ in range(keras_runs)]}
    out = {}
    for name, rs in res.items():
        out[name] = {k: round(statistics.median(r[k] for r in rs), 3)
                     for k in ("process_s", "startup_s", "import_s", "load_s", "inference_s", "peak_rss_mb")}
        out[name]["tensorflow_imported"] = any(r["tensorflow_imported"] for r in rs)
        out[name]["runs"] = len(rs)
    a, b = out["runtime (LiteRT int8)"], out["TensorFlow/Keras (.keras)"]
    out["ratios"] = {"process_time_x": round(b["process_s"] / a["process_s"], 1),
                     "peak_rss_x": round(b["peak_rss_mb"] / a["peak_rss_mb"], 1)}
    return out


def cold_start(runs: int) -> dict:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import cold_start as cs

    image = next(iter(sorted(VAL.glob("ants/*.jpg"))))
    return cs.measure(MODEL, image, runs=max(3, runs))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.add_argument("--rounds", type=int, default=15, help="rounds of (1); (2) uses a third of them")
    p.add_argument("--process-runs", type=int, default=7)
    p.add_argument("--keras-runs", type=int, default=2)
    p.add_argument("--no-variants", action="store_true",
                   help="skip (2) with the other worker/thread splits (1+2, 2+2)")
    p.add_argument("--quick", action="store_true", help="smoke run: --rounds 3 --process-runs 2 --keras-runs 1 "
                                                        "--no-variants")
    p.add_argument("--wait-quiet", type=float, metavar="LOAD",
                   help="first wait (up to 30 min) for the 1-minute load average to drop under LOAD")
    a = p.parse_args(argv)
    if a.quick:
        a.rounds, a.process_runs, a.keras_runs, a.no_variants = 3, 2, 1, True
    why = missing_assets()
    if why:
        print(f"skipped: {why}", file=sys.stderr)
        if a.json:
            a.json.write_text(json.dumps({"skipped": why}) + "\n")
            return 0
        return 2
    build_model()
    if a.wait_quiet:
        deadline = time.time() + 1800
        while os.getloadavg()[0] >= a.wait_quiet and time.time() < deadline:
            time.sleep(10)
    report = {"machine": machine(), "model": str(MODEL), "quick": a.quick,
              "overhead": overhead(a.rounds),
              "folder": folder(max(3, a.rounds // 3)),
              "folder_variants": [] if a.no_variants else
              [folder(max(3, a.rounds // 3), threads=t, workers=w) for t, w in ((2, 1), (2, 2))],
              "process": processes(a.process_runs, a.keras_runs),
              "cold_start": cold_start(a.process_runs)}
    report["load_avg_at_end"] = os.getloadavg()
    print_report(report)
    if a.json:
        a.json.write_text(json.dumps(report, indent=2) + "\n")
    else:
        print(json.dumps(report))
    return 0


def machine() -> dict:
    import platform

    import ai_edge_litert
    import cv2

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"python": platform.python_version(), "cpus": len(os.sched_getaffinity(0)),
            "cpu": cpu, "numpy": np.__version__,
            "opencv": cv2.__version__, "ai_edge_litert": getattr(ai_edge_litert, "__version__", "?"),
            "load_avg_at_start": os.getloadavg()}


def print_report(r: dict) -> None:
    o, f, pr = r["overhead"], r["folder"], r["process"]
    print(f"(1) batch-1 latency, ms (best | median of {o['rounds']} rounds x {o['per_round']}, "
          f"{o['threads']} threads):")
    for k, v in o["ms"].items():
        extra = f"  overhead {o['overhead_pct'][k]:+.1f} % | {o['overhead_pct_median'][k]:+.1f} %" \
            if k in o["overhead_pct"] else ""
        print(f"    {k:<22} {v:8.3f} | {o['ms_median'][k]:8.3f}{extra}")
    base = o["python_side_us"]["bare set+invoke+get"]
    print(f"    with invoke() stubbed, us per call: bare {base:.1f}, " + ", ".join(
        f"{k} {v:.1f} (+{o['python_side_pct_of_bare'][k]:.2f} % of a real bare call)"
        for k, v in o["python_side_us"].items() if k in o["python_side_pct_of_bare"]))
    for v in [f] + r["folder_variants"]:
        print(f"(2) folder of {v['images']} JPEGs, images/s, best | median of {v['rounds']} rounds "
              f"(workers {v['workers']}, threads {v['threads']}):")
        for k, x in v["images_per_s"].items():
            print(f"    {k:<22} {x:8.1f} | {v['images_per_s_median'][k]:8.1f}")
        print(f"    pipeline / slower stage = {v['pipeline_vs_slower_stage']:.2f} | "
              f"{v['pipeline_vs_slower_stage_median']:.2f}; pipeline / serial = {v['pipeline_vs_serial']:.2f}")
    print("(3) one process: import + load + first inference on a JPEG (medians):")
    for name in ("runtime (LiteRT int8)", "TensorFlow/Keras (.keras)"):
        v = pr[name]
        print(f"    {name:<26} process {v['process_s']:.3f} s (import {v['import_s']:.3f}, load {v['load_s']:.3f}, "
              f"1st inference {v['inference_s']:.3f}), peak RSS {v['peak_rss_mb']:.0f} MB, "
              f"TensorFlow imported: {v['tensorflow_imported']}")
    print(f"    TensorFlow/Keras is {pr['ratios']['process_time_x']}x slower and {pr['ratios']['peak_rss_x']}x bigger")
    if r.get("cold_start"):
        import cold_start as cs

        print("(4) ", end="")
        cs.print_report(r["cold_start"])


if __name__ == "__main__":
    sys.exit(main())
