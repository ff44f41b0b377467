"""Export and inference benchmark on the shared real data (one run, side by side).

For the issue's reference model (MobileNet v1 0.25, ImageNet weights, 2-class head trained on
hymenoptera_data), measures: export time per format, file sizes, single-image latency per format
(Keras predict, Keras in tf.function, each exported file through the tledge runtime), and the
parity / accuracy of every file on the 153 val photos. Prints a table and writes JSON.

    python benchmarks/export_bench.py [--size 224] [--runs 50] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
ASSETS = ROOT.parent / "shared" / "assets"


def _median_ms(fn, x, runs: int) -> float:
    fn(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TLEDGE_BENCH_DIR", "/tmp/tledge_bench")))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--fidelity", default=None, help="passed to export (int8 repair target), if supported")
    args = ap.parse_args(argv)
    if not ASSETS.is_dir():
        print(f"skipped: {ASSETS} not available")
        return 0
    import realdata

    from tledge.export import loader
    from tledge.export.pipeline import ExportConfig, export
    from tledge.runtime import load

    h5 = realdata.hymenoptera_mobilenet(ASSETS, args.work, size=args.size)
    data = ASSETS / "hymenoptera_data"
    cfg = ExportConfig(out=args.work / f"export_{args.size}", int8=True, fp16=True, dynamic=True,
                       calib=str(data / "train"), val=str(data / "val"), preprocess="mobilenet")
    t0 = time.perf_counter()
    result = export(h5, cfg)
    total = time.perf_counter() - t0
    x = result.contract.prepare(next((data / "val" / "bees").glob("*.jpg")))[None].astype(np.float32)
    lm = loader.load_model(h5)
    model = lm.model
    serve, _ = loader.trace(lm, *loader.resolve_contract(lm, preprocess="mobilenet", input_size=None))
    xn = x / 127.5 - 1
    rows = [{"path": "keras Model.predict", "latency_ms": _median_ms(lambda a: model.predict(a, verbose=0), xn, 10)},
            {"path": "keras in tf.function", "latency_ms": _median_ms(lambda a: serve(a), x, args.runs)}]
    parity = {r.file: r for r in result.report.results}
    for f in result.files:
        m = load(f, threads=2)
        r = parity[f.name]
        rows.append({"path": f.name, "latency_ms": _median_ms(m.predict, x, args.runs),
                     "size_mib": f.stat().st_size / 2**20, "export_s": result.seconds.get(f.name),
                     "top1_agreement": r.top1_agreement, "accuracy": r.accuracy,
                     "reference_accuracy": r.reference_accuracy, "max_abs": r.max_abs_error, "passed": r.passed})
    keras_ms = rows[1]["latency_ms"]
    for row in rows:
        row["speedup_vs_keras_tf_function"] = keras_ms / row["latency_ms"]
    out = {"model": f"MobileNet v1 0.25 @{args.size}, hymenoptera head", "export_total_s": total,
           "cpu_count": os.cpu_count(), "rows": rows, "parity_passed": result.passed}
    _print(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


def _print(out) -> None:
    print(f"\n{out['model']}; export of all files {out['export_total_s']:.1f} s; {out['cpu_count']} CPUs")
    print(f"{'path':24} {'ms':>8} {'x keras':>8} {'MiB':>6} {'exp s':>6} {'agree':>6} {'acc':>6} {'ref':>6} parity")
    for r in out["rows"]:
        f = lambda k, fmt: (fmt % r[k]) if r.get(k) is not None else "-"  # noqa: E731
        print(f"{r['path']:24} {r['latency_ms']:8.2f} {r['speedup_vs_keras_tf_function']:8.1f} "
              f"{f('size_mib', '%.2f'):>6} {f('export_s', '%.1f'):>6} {f('top1_agreement', '%.3f'):>6} "
              f"{f('accuracy', '%.3f'):>6} {f('reference_accuracy', '%.3f'):>6} "
              f"{'' if 'passed' not in r else ('pass' if r['passed'] else 'FAIL')}")


if __name__ == "__main__":
    sys.exit(main())
