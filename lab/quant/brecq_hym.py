"""Measure lab/quant/brecq.py on the hymenoptera models (docs/int8-fidelity.md "Block reconstruction").

    PYTHONPATH=. python lab/quant/brecq_hym.py NAME PATH [--iters 300] [--batch 16]

Calibration: every image of hymenoptera_data/train except every 4th (held out); evaluation against the
ORIGINAL model on val and on the held-out quarter: Keras (repaired float model) flips and median / p95
per-image max abs error, then the real int8 TFLite file (float stem 4, as the export's repaired-stem4
rung converts it): top-1 agreement with a 95 % Wilson interval and the median per-image max abs error.
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
DATA = Path("/work/shared/assets/hymenoptera_data")


def load_original(path):
    import keras

    import tledge.layers as L
    if path.endswith(".keras") or "hym-s" in path:
        m = keras.models.load_model(path, compile=False)
    else:
        from tledge.export import loader
        m = loader.load_model(path).model
    if any(L.baked_norm(layer) for layer in m.layers):
        return m
    inp = keras.Input((224, 224, 3), dtype="float32")
    return keras.Model(inp, m(L.preprocess_layer("tf", None, None, 3)(inp)))


def pixels(folder):
    from tledge.contract import Contract

    c = Contract(224, 224, norm="tf")
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return np.stack([c.prepare(str(f)) for f in files]).astype(np.float32)


def tflite_outputs(data, x):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=data)
    it.allocate_tensors()
    d, o = it.get_input_details()[0], it.get_output_details()[0]
    rows = []
    for img in x:
        s, z = d["quantization"]
        feed = img[None]
        if d["dtype"] != np.float32:
            feed = np.clip(np.round(feed / s + z), 0, 255).astype(d["dtype"])
        it.set_tensor(d["index"], feed)
        it.invoke()
        out = it.get_tensor(o["index"]).astype(np.float64)
        s, z = o["quantization"]
        rows.append(((out - z) * s if s else out)[0])
    return np.stack(rows)


def keras_row(out, ref):
    flips = int((out.argmax(1) != ref.argmax(1)).sum())
    err = np.abs(out - ref).max(1)
    return flips, float(np.median(err)), float(np.quantile(err, 0.95))


def main():
    from lab.quant import brecq
    from tledge import stats
    from tledge.quant import kerasgraph, repair, selective

    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("path")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--init", default="input", choices=("input", "float"))
    ap.add_argument("--holdout", type=int, default=0)
    a = ap.parse_args()
    pm = load_original(a.path)
    tr, va = pixels(DATA / "train"), pixels(DATA / "val")
    held = np.arange(len(tr)) % 4 == 3
    cal, ho = tr[~held], tr[held]
    ref_va, ref_ho = kerasgraph.predict(pm, va), kerasgraph.predict(pm, ho)
    t = time.perf_counter()
    fixed, log = repair.apply(pm, cal, stem=4)
    t_rep = time.perf_counter() - t
    t = time.perf_counter()
    fixed_b = brecq.step(pm, stem=4, iters=a.iters, batch=a.batch, init=a.init, holdout=a.holdout)(fixed, cal, log)
    t_b = time.perf_counter() - t
    print("\n".join(n for n in log.notes if n.startswith("brecq")), flush=True)
    for label, m, secs in (("repaired-stem4", fixed, t_rep), ("+brecq", fixed_b, t_b)):
        kv, kh = keras_row(kerasgraph.predict(m, va), ref_va), keras_row(kerasgraph.predict(m, ho), ref_ho)
        t = time.perf_counter()
        cal_bytes = selective.calibrate_tflite(m, cal)
        data = selective.quantize_tflite(cal_bytes, keep_float=list(selective.tflite_stem(cal_bytes, 4)))
        t_conv = time.perf_counter() - t
        out = tflite_outputs(data, va)
        agree = int((out.argmax(1) == ref_va.argmax(1)).sum())
        lo, hi = stats.wilson(agree, len(va))
        med = float(np.median(np.abs(out - ref_va).max(1)))
        print(f"ROW | {a.name} | {label} | {secs:.1f} | {kv[0]} / {kv[1]:.4f} / {kv[2]:.4f} | "
              f"{kh[0]} / {kh[1]:.4f} / {kh[2]:.4f} | {agree / len(va):.3f} [{lo:.3f}, {hi:.3f}] | {med:.4f} | "
              f"conv {t_conv:.1f} init {a.init} holdout {a.holdout}", flush=True)


if __name__ == "__main__":
    main()
