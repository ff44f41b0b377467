"""Measure lab/quant/fisher.py on hymenoptera models: flips of the repaired FLOAT model (int8-grid weights, float
activations, stem 4) against the original on hymenoptera val and on imagenet_val1300 (photos the calibration never
saw), for each beta; --tflite adds the real stem-4 int8 TFLite file's agreement on both sets.

    PYTHONPATH=. python lab/quant/fisher_hym.py PATH [PATH ...] --beta 0 0.5 1 [--tie 2] [--tflite]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
ASSETS = Path("/work/shared/assets")


def cached_pixels(folder, cache):
    from lab.quant.brecq_hym import pixels
    if not Path(cache).is_file():
        np.save(cache, pixels(folder))
    return np.load(cache)


def main():
    from lab.quant import fisher
    from lab.quant.brecq_hym import load_original, tflite_outputs
    from tledge import stats
    from tledge.quant import kerasgraph, repair, selective

    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--beta", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    ap.add_argument("--tie", type=float, default=None)
    ap.add_argument("--tflite", action="store_true")
    ap.add_argument("--cache", default="/tmp/tledge-fisher")
    a = ap.parse_args()
    os.makedirs(a.cache, exist_ok=True)
    cal = cached_pixels(ASSETS / "hymenoptera_data/train", f"{a.cache}/train.npy")
    sets = {"val": cached_pixels(ASSETS / "hymenoptera_data/val", f"{a.cache}/val.npy"),
            "in1300": cached_pixels(ASSETS / "imagenet_val1300", f"{a.cache}/in1300.npy")}
    for path in a.paths:
        pm = load_original(path)
        ref = {k: kerasgraph.predict(pm, v) for k, v in sets.items()}
        for beta in a.beta:
            t = time.perf_counter()
            if beta == 0:
                fixed, log = repair.apply(pm, cal, stem=4, errors=False)
            else:
                fixed, log = repair.apply(pm, cal, ("fold", "exact_input"), stem=4, errors=False,
                                          extra={"fisher": fisher.step(beta, a.tie)})
            secs = time.perf_counter() - t
            cells = []
            for k, v in sets.items():
                out = kerasgraph.predict(fixed, v)
                flips = int((out.argmax(1) != ref[k].argmax(1)).sum())
                cells.append(f"{k} {flips} flips ({1 - flips / len(v):.4f}) med {np.median(np.abs(out - ref[k]).max(1)):.4f}")
            if a.tflite:
                cal_bytes = selective.calibrate_tflite(fixed, cal)
                data = selective.quantize_tflite(cal_bytes, keep_float=list(selective.tflite_stem(cal_bytes, 4)))
                for k, v in sets.items():
                    out = tflite_outputs(data, v)
                    agree = int((out.argmax(1) == ref[k].argmax(1)).sum())
                    lo, hi = stats.wilson(agree, len(v))
                    cells.append(f"tflite {k} {agree / len(v):.4f} [{lo:.3f}, {hi:.3f}]")
            print(f"ROW | {Path(path).parent.name} | beta {beta} tie {a.tie} | {secs:.0f} s | " + " | ".join(cells),
                  flush=True)


if __name__ == "__main__":
    main()
