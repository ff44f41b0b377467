"""Export and inference benchmark on the shared real data (one run, side by side).

For the issue's reference model (MobileNet v1 0.25, ImageNet weights, 2-class head trained on
hymenoptera_data), measures: export time per format, file sizes, batch-1 latency and throughput per
format (Keras Model.predict, Keras in tf.function, each exported file through the tledge runtime),
and the parity / accuracy of every file on the val photos. Latency and throughput are measured in
interleaved rounds (the order rotates each round; best round and median are both kept), so load
from other processes hits every path alike. Prints a table and writes JSON.

    python benchmarks/export_bench.py [--size 224] [--runs 50] [--rounds 5] [--batch 32] [--json out.json]
    python benchmarks/export_bench.py --quick      # a smoke run: 32 val / calib images, 2 short rounds

The trained .h5 and the exported files are kept in --work (default $TLEDGE_BENCH_DIR or /tmp/tledge_bench).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
ASSETS = Path(os.environ.get("TLEDGE_SHARED_ASSETS", ROOT.parent / "shared" / "assets"))
WEIGHTS = "keras_imagenet_weights/mobilenet_2_5_224_tf_no_top.h5"


def missing_assets(assets: Path = ASSETS) -> str | None:
    """Why this benchmark cannot run here, or None."""
    for p in (assets / "hymenoptera_data" / "train", assets / "hymenoptera_data" / "val", assets / WEIGHTS):
        if not p.exists():
            return f"shared asset not available: {p}"
    return None


def _median_ms(fn, x, runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def _images_per_s(fn, xb, reps: int) -> float:
    fn(xb)  # warm-up; also pays the interpreter's resize to this batch size outside the timing
    t = time.perf_counter()
    for _ in range(reps):
        fn(xb)
    return reps * len(xb) / (time.perf_counter() - t)


def measure(*, size: int = 224, runs: int = 50, rounds: int = 5, batch: int = 32, batch_reps: int = 3,
            work: Path = Path("/tmp/tledge_bench"), val_limit: int = 1000, calib_limit: int = 256,
            threads: int = 2, assets: Path = ASSETS, tag: str = "", export_options: dict | None = None,
            log=print) -> dict:
    """Train (cached) and export the reference model, then time every path interleaved."""
    import realdata

    from tledge.export import loader, resolve
    from tledge.export.imagesets import load_pixels
    from tledge.export.pipeline import ExportConfig, export
    from tledge.runtime import load

    t = time.perf_counter()
    h5 = realdata.hymenoptera_mobilenet(assets, work, size=size)
    train_s = time.perf_counter() - t
    data = assets / "hymenoptera_data"
    from dataclasses import fields

    known = {f.name for f in fields(ExportConfig)}
    extra = {k: v for k, v in (export_options or {}).items() if v is not None}
    unsupported = sorted(set(extra) - known)
    if unsupported:
        raise SystemExit(f"this tledge's ExportConfig has no {', '.join(unsupported)}")
    cfg = ExportConfig(out=work / f"export_{size}{tag}", int8=True, fp16=True, dynamic=True,
                       calib=str(data / "train"), val=str(data / "val"), preprocess="mobilenet",
                       val_limit=val_limit, calib_limit=calib_limit, **extra)
    log(f"exporting {h5.name} (fp32, fp16, dynamic, int8 TFLite; fp32, int8 ONNX) ...")
    t0 = time.perf_counter()
    result = export(h5, cfg)
    total = time.perf_counter() - t0

    val, _ = load_pixels(data / "val", result.contract, max(batch, 1), result.contract.labels)
    val = val.astype(np.float32)
    x, xb = val[:1], val[:batch]
    lm = loader.load_model(h5)
    model = lm.model
    serve, _ = loader.trace(lm, *resolve.resolve_contract(lm, preprocess="mobilenet", input_size=None))

    def norm(a):  # the .h5 takes x/127.5 - 1 (the exported files and `serve` take pixels)
        return a / 127.5 - 1

    xn, xbn = norm(x), norm(xb)
    parity = {r.file: r for r in result.report.results}
    paths: dict[str, dict] = {
        "keras Model.predict": {"kind": "keras", "precision": "fp32", "fn": lambda a: model.predict(a, verbose=0),
                                "x": xn, "xb": xbn, "runs": max(3, runs // 5)},
        "keras in tf.function": {"kind": "keras", "precision": "fp32", "fn": lambda a: serve(a), "x": x, "xb": xb,
                                 "runs": runs},
    }
    for f in result.files:
        m = load(f, threads=threads)
        paths[f.name] = {"kind": f.suffix[1:], "precision": f.stem.rsplit("_", 1)[-1], "fn": m.predict, "x": x,
                         "xb": xb, "runs": runs, "file": f}
    lat: dict[str, list[float]] = {k: [] for k in paths}
    ips: dict[str, list[float]] = {k: [] for k in paths}
    names = list(paths)
    log(f"timing {len(names)} paths: {rounds} rounds x (batch 1: {runs} runs; batch {len(xb)}: {batch_reps} calls)")
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            p = paths[name]
            lat[name].append(_median_ms(p["fn"], p["x"], p["runs"]))
            try:
                ips[name].append(_images_per_s(p["fn"], p["xb"], batch_reps))
            except Exception as exc:  # a fixed-batch file cannot take a batch: keep the row
                p["batch_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"

    rows = []
    for name, p in paths.items():
        row = {"path": name, "format": p["kind"], "precision": p["precision"],
               "latency_ms": round(min(lat[name]), 4), "latency_ms_median": round(statistics.median(lat[name]), 4),
               "batch1_images_per_s": round(1000 / min(lat[name]), 1),
               "batch_images_per_s": round(max(ips[name]), 1) if ips[name] else None,
               "batch_images_per_s_median": round(statistics.median(ips[name]), 1) if ips[name] else None}
        if "batch_error" in p:
            row["batch_error"] = p["batch_error"]
        f = p.get("file")
        if f is not None:
            r = parity[f.name]
            row.update({"size_mib": round(f.stat().st_size / 2**20, 4), "export_s": result.seconds.get(f.name),
                        "top1_agreement": r.top1_agreement, "accuracy": r.accuracy,
                        "reference_accuracy": r.reference_accuracy, "max_abs": r.max_abs_error,
                        "median_image_max_abs": r.median_image_max_abs, "passed": r.passed,
                        "failures": list(r.failures)})
        rows.append(row)
    base_tf, base_pred = rows[1]["latency_ms"], rows[0]["latency_ms"]
    for row in rows:
        row["speedup_vs_keras_tf_function"] = round(base_tf / row["latency_ms"], 3)
        row["speedup_vs_keras_predict"] = round(base_pred / row["latency_ms"], 3)
    failed = [r for r in result.report.results if r.file not in {f.name for f in result.files}]
    return {"model": f"MobileNet v1 0.25 @{size}, ImageNet weights, hymenoptera head (2 classes)",
            "size": size, "train_or_load_s": round(train_s, 2), "export_total_s": round(total, 2),
            "export_seconds": dict(result.seconds), "export_options": extra,
            "report_notes": list(result.report.notes), "val_images": result.report.images,
            "calib_limit": calib_limit, "threads": threads,
            "keras_threads": "TensorFlow default (all cores)", "batch": len(xb), "batch_reps": batch_reps,
            "runs": runs, "rounds": rounds, "cpu_count": os.cpu_count(), "rows": rows,
            "conversion_failures": [{"file": r.file, "failures": list(r.failures)} for r in failed],
            "parity_passed": result.passed}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--runs", type=int, default=50, help="batch-1 calls per round (Model.predict: a fifth)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds over all paths")
    ap.add_argument("--batch", type=int, default=32, help="batch size of the throughput figure")
    ap.add_argument("--batch-reps", type=int, default=3, help="batch calls per round")
    ap.add_argument("--threads", type=int, default=2, help="interpreter / onnxruntime threads")
    ap.add_argument("--quick", action="store_true", help="smoke run: 32 val + 32 calib images, 2 short rounds")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TLEDGE_BENCH_DIR", "/tmp/tledge_bench")))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--fidelity", type=float, default=None, help="passed to export: int8 agreement target of the "
                                                                 "repair loop (if this tledge has one)")
    ap.add_argument("--no-repair", action="store_true", help="passed to export: repair=False (if supported)")
    args = ap.parse_args(argv)
    why = missing_assets()
    if why:
        print(f"skipped: {why}")
        if args.json:
            args.json.write_text(json.dumps({"skipped": why}) + "\n")
        return 0
    kw = dict(size=args.size, runs=args.runs, rounds=args.rounds, batch=args.batch, batch_reps=args.batch_reps,
              work=args.work, threads=args.threads,
              export_options={"fidelity": args.fidelity, "repair": False if args.no_repair else None})
    if args.quick:
        kw.update(runs=5, rounds=2, batch=8, batch_reps=1, val_limit=32, calib_limit=32, tag="_quick")
    out = measure(**kw, log=lambda m: print(m, file=sys.stderr, flush=True))
    out["quick"] = args.quick
    print_table(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


def print_table(out) -> None:
    print(f"\n{out['model']}; export of all files {out['export_total_s']:.1f} s; {out['val_images']} val images; "
          f"{out['cpu_count']} CPUs")
    print(f"{'path':24} {'ms':>8} {'img/s b1':>8} {'img/s bN':>8} {'x keras':>8} {'MiB':>6} {'exp s':>6} "
          f"{'agree':>6} {'acc':>6} {'ref':>6} parity")
    for r in out["rows"]:
        f = lambda k, fmt: (fmt % r[k]) if r.get(k) is not None else "-"  # noqa: E731
        print(f"{r['path']:24} {r['latency_ms']:8.2f} {r['batch1_images_per_s']:8.1f} "
              f"{f('batch_images_per_s', '%.1f'):>8} {r['speedup_vs_keras_tf_function']:8.1f} "
              f"{f('size_mib', '%.2f'):>6} {f('export_s', '%.1f'):>6} {f('top1_agreement', '%.3f'):>6} "
              f"{f('accuracy', '%.3f'):>6} {f('reference_accuracy', '%.3f'):>6} "
              f"{'' if 'passed' not in r else ('pass' if r['passed'] else 'FAIL')}")


if __name__ == "__main__":
    sys.exit(main())
