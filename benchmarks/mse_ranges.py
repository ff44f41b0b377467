"""Activation ranges by least squared error, on real files (issue 11, twenty-second session): the stem-6 repair rung
(`repaired-stem6`) against the same rung with every activation's upper bound cut (`repaired-stem6+mse`,
tledge.quant.ranges), both built exactly as `tledge export` builds them (tledge.export.rungs.Shared), TFLite and
ONNX.

    python benchmarks/mse_ranges.py hym-effb0-s1 [--formats tflite,onnx] [--cache DIR]

Prints flips against the original Keras model on the 153 val photos and the 1300 imagenet_val1300 photos (which
no export step sees), with 95 % Wilson intervals for the agreement on the 1300, the CPU flags and the seconds.
Result: docs/int8-fidelity.md, "Activation ranges by least squared error".
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks"), str(REPO / "tests")]


def _runner(data: bytes, kind: str):
    from lab.quant import quick

    r = quick.Runner(data, kind)
    if kind == "onnx":
        dtype = {"tensor(uint8)": np.uint8}.get(r.sess.get_inputs()[0].type, np.float32)
        run = r.predict
        r.predict = lambda x: run(np.round(x).astype(dtype) if dtype is np.uint8 else x)
    return r


def measure(ctx, name: str, formats: list[str], out: Path) -> None:
    import weight_bits

    from tledge.export import fidelity
    from tledge.export.rungs import Shared
    from tledge.stats import wilson

    model, calib, sets, ref = weight_bits.eval_sets(ctx)
    out.mkdir(parents=True, exist_ok=True)
    shared = Shared(model, ctx.contract, ctx.calib, out)
    flags = " ".join(f for f in ("avx2", "avx512f", "avx512_vnni") if f in Path("/proc/cpuinfo").read_text())
    for ranges in ("minmax", "mse"):
        rung = fidelity.Rung(f"repaired-stem{fidelity.STEM}" + ("+mse" if ranges == "mse" else ""),
                             stem=fidelity.STEM, ranges=ranges)
        t = time.perf_counter()
        rep = shared.repaired_model(rung.stem, ranges=ranges)
        built = time.perf_counter() - t
        for kind in formats:
            t = time.perf_counter()
            key = rung.stem if ranges == "minmax" else (rung.stem, ranges)
            data = shared.tflite(rep, rung.stem, {}, key=key, ranges=ranges) if kind == "tflite" \
                else shared.onnx(rep, rung, {})
            r = _runner(data, kind)
            fl = {s: int((r.predict(x).argmax(1) != ref[s]).sum()) for s, x in sets.items()}
            n = len(ref["other"])
            lo, hi = wilson(n - fl["other"], n)
            print(f"RESULT {name} {kind} {rung.name}: val flips {fl['val']}/{len(ref['val'])}, other flips "
                  f"{fl['other']}/{n} (agreement {1 - fl['other'] / n:.3f} [{lo:.3f}, {hi:.3f}]); repair {built:.0f} s, "
                  f"file {time.perf_counter() - t:.0f} s ({platform.machine()}, {flags}, load "
                  f"{os.getloadavg()[0]:.1f})", flush=True)


def main(argv=None) -> int:
    import int8_zoo

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--formats", default="tflite,onnx")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/tledge-int8-zoo"))
    args = ap.parse_args(argv)
    out = Path(f"/tmp/mse-ranges-{os.getpid()}")
    int8_zoo.at_int8_loop(args.name, args.cache, out,
                          lambda ctx: measure(ctx, args.name, args.formats.split(","), out / "rungs"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
