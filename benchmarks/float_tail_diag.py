"""Where does the int8 tail error of `repaired-stem4` come from? (issue 11, "float tail" diagnosis)

Runs the real export pipeline up to the int8 loop (TFLite only, `explain` so the loop is entered),
then, on the model the loop repairs:
- the calibration images are split: every 3rd one held out (`held`), the rest (`fit`) calibrate the
  repair and the TFLite file; parity images (`val`) are never used to fit;
- `repair.apply(model, fit, stem=4)`; then per linear layer, and for the last 1/2/3 linear layers
  together, the ORIGINAL (BN-folded) float weights are put back and the float Keras model is run:
  flips vs the original model and the error of the top-1 margin (p_top - p_other), on val and held;
- the real TFLite file for the tail variants: the stem and the tail's ops denylisted (float), the tail
  on original weights (and, for comparison, on the repaired weights).

    python benchmarks/float_tail_diag.py hym-mnv1-s1 [--json out.json]

Result (docs/int8-fidelity.md, "Float tail"): the residual is spread over the backbone; a float tail
does not fix it, so there is no float-tail rung. The rung as measured in the loop (`int8_zoo.py`) is
commit 0a9ff37 of branch float-tail.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

_LINEAR_TFLITE = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def stats(ref: np.ndarray, out: np.ndarray) -> dict:
    top = ref.argmax(1)
    flips = out.argmax(1) != top

    def margin(p):
        q = p.copy()
        t = q[np.arange(len(q)), top].copy()
        q[np.arange(len(q)), top] = -np.inf
        return t - q.max(1)
    err = np.abs(margin(out) - margin(ref))
    return {"flips": int(flips.sum()), "n": len(ref), "flip_idx": np.flatnonzero(flips).tolist(),
            "err_mean": float(err.mean()), "err_median": float(np.median(err)), "err_p95": float(np.quantile(err, 0.95)),
            "err_max": float(err.max()), "flip_err": err[flips].round(4).tolist(),
            "flip_ref_margin": margin(ref)[flips].round(4).tolist()}


def restored(repaired, original, names):
    import keras

    copy = keras.models.clone_model(repaired)
    copy.set_weights(repaired.get_weights())
    for n in names:
        src, dst = original.get_layer(n).get_weights(), copy.get_layer(n)
        have = dst.get_weights()
        dst.set_weights(src if len(src) == len(have) else [src[0], have[1] * 0.0])
    return copy


def tail_ops(calibrated: bytes, start: str) -> list[str]:
    """Output tensor names of the TFLite ops from `start` to the end: "fcN" = the N-th last linear op,
    "gap" = the last MEAN / AVERAGE_POOL_2D op."""
    from tledge.quant.selective import tflite_ops

    ops = tflite_ops(calibrated)
    if start == "gap":
        i = max(j for j, (op, _) in enumerate(ops) if op in ("MEAN", "AVERAGE_POOL_2D"))
    else:
        k = int(start[2:])
        i = [j for j, (op, _) in enumerate(ops) if op in _LINEAR_TFLITE][-k]
    return [name for _, name in ops[i:]]


def tflite_eval(model, fit, stem, tail, xs):
    from tledge.quant import selective
    from lab.quant import quick

    cal = selective.calibrate_tflite(model, fit)
    keep = list(selective.tflite_stem(cal, stem)) + (tail_ops(cal, tail) if tail else [])
    data = selective.quantize_tflite(cal, keep_float=keep)
    run = quick.Runner(data, "tflite")
    return [run.predict(x) for x in xs], len(keep)


def diagnose(ctx, label: str, stem: int = 4) -> dict:
    from tledge.export import repair_model
    from tledge.quant import repair
    from tledge.quant.kerasgraph import fold_bn, linear_kind, predict

    t0 = time.perf_counter()
    model = repair_model.pixel_model(ctx)
    calib = np.asarray(ctx.calib, np.float32)
    held_mask = np.arange(len(calib)) % 3 == 2
    fit, held = calib[~held_mask], calib[held_mask]
    val = ctx.val_x
    ref = {"val": predict(model, val), "held": predict(model, held)}
    rep, _ = repair.apply(model, fit, stem=stem)
    original, _ = fold_bn(model)
    original, _ = repair.exact_input(original)
    linear = [layer.name for layer in rep.layers if linear_kind(layer)]
    stem_names = set(repair.stem_layers(rep, stem))
    print(f"[{label}] repair {time.perf_counter() - t0:.0f}s; {len(linear)} linear layers", flush=True)

    def keras_row(names):
        m = restored(rep, original, names) if names else rep
        return {s: stats(ref[s], predict(m, x)) for s, x in (("val", val), ("held", held))}

    res = {"model": label, "images": {"fit": len(fit), "held": len(held), "val": len(val)},
           "linear": linear, "keras": {}, "tflite": {}}
    res["keras"]["repaired-stem4"] = keras_row([])
    res["keras"]["original-folded"] = {s: stats(ref[s], predict(original, x)) for s, x in (("val", val), ("held", held))}
    for n in linear:
        if n not in stem_names:
            res["keras"][n] = keras_row([n])
    for k in (1, 2, 3):
        res["keras"][f"last{k}"] = keras_row(linear[-k:])
    print(f"[{label}] keras done {time.perf_counter() - t0:.0f}s", flush=True)
    xs = (val, held)
    variants = [("stem4", None, []), ("stem4+fc1 (repaired w)", "fc1", []), ("stem4+fc1", "fc1", linear[-1:]),
                ("stem4+gap+fc1", "gap", linear[-1:]), ("stem4+fc2", "fc2", linear[-2:]),
                ("stem4+fc2 (repaired w)", "fc2", []), ("stem4+fc3", "fc3", linear[-3:])]
    for name, tail, restore in variants:
        m = restored(rep, original, restore) if restore else rep
        (pv, ph), nkeep = tflite_eval(m, fit, stem, tail, xs)
        res["tflite"][name] = {"val": stats(ref["val"], pv), "held": stats(ref["held"], ph), "float_ops": nkeep}
        print(f"[{label}] tflite {name}: val flips {res['tflite'][name]['val']['flips']} held "
              f"{res['tflite'][name]['held']['flips']}", flush=True)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def main(argv=None) -> int:
    import int8_zoo

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/tledge-int8-zoo"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    found = {}
    int8_zoo.at_int8_loop(args.name, args.cache, Path("/tmp/ft/exports"),
                          lambda ctx: found.update(res=diagnose(ctx, args.name)))
    res = found["res"]
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    summary(res)
    return 0


def summary(res: dict) -> None:
    print(f"## {res['model']} (fit {res['images']['fit']}, held {res['images']['held']}, val {res['images']['val']})")
    for kind in ("keras", "tflite"):
        for name, r in res[kind].items():
            v, h = r["val"], r["held"]
            print(f"{kind:6s} {name:28s} val flips {v['flips']} err med {v['err_median']:.4f} p95 {v['err_p95']:.4f} "
                  f"max {v['err_max']:.4f} | held flips {h['flips']} med {h['err_median']:.4f} p95 {h['err_p95']:.4f}"
                  f" | val flip errs {v['flip_err']}")


if __name__ == "__main__":
    sys.exit(main())
