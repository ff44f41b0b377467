"""Do activation ranges other than min/max, or cross-layer equalisation, shrink the 8-bit activations' share of
the int8 error on the 2-class MobileNet 0.25 heads? (issue 11, nineteenth session; no: docs/int8-fidelity.md,
"Activation ranges and equalisation").

The weight repair (`repair.apply`, float stem of `--stem` convolutions, `act_quant=True` as the export runs it)
and the simulated int8 file of `weight_bits.py` (every quantised tensor rounded to its 8-bit grid), with:

- `--modes minmax`: the converters' calibration min/max (reproduces the shipped files);
- `--modes mse`: each tensor's upper bound cut to the fraction of its max (0.25 .. 1, 31 steps) with the least
  squared rounding + clipping error on its calibration values, in the repair's rounding and in the simulated file;
- `--cle auto|range|weights`: `lab.quant.cle` before the rounding (BN folded, ReLU6 bound).

    python benchmarks/act_ranges.py hym-mnv1-s1 --modes minmax,mse [--cle auto] [--cache DIR]

Flips against the original Keras model on the 153 val photos and the 1300 imagenet_val1300 photos.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks"), str(REPO / "tests")]


def best_hi(values, lo: float, hi: float) -> float:
    """tledge.quant.ranges.best_hi (since the twenty-second session; it draws its 400 000 values with replacement,
    this script drew them without: the nineteenth session's figures may differ by a photo)."""
    from tledge.quant.ranges import best_hi as chosen

    return chosen(values, lo, hi)


def mse_grids(rep, quant: dict, calib) -> dict:
    """`quant` ({layer: (lo, hi)}, weight_bits.int8_grids) with each upper bound cut by `best_hi`."""
    import keras

    names = list(quant)
    probe = keras.Model(rep.inputs, [rep.get_layer(n).output for n in names])
    outs = probe.predict(calib[:96], verbose=0)
    return {n: (lo, best_hi(np.asarray(o), lo, hi)) for (n, (lo, hi)), o in zip(quant.items(), outs)}


def measure(ctx, name: str, modes: list[str], stem: int, cle: str) -> None:
    import weight_bits

    from tledge.quant import repair

    model, calib, sets, ref = weight_bits.eval_sets(ctx)
    plain_fq = repair.fake_quant_tensor
    extra = None
    if cle:
        from lab.quant import cle as cle_lab

        extra = {"cle": cle_lab.step(cle)}
    for mode in modes:
        t = time.perf_counter()
        if mode == "mse":  # the repair's rounding of each activation uses the cut range too
            repair.fake_quant_tensor = lambda x, lo, hi, *a, **k: plain_fq(
                x, lo, best_hi(np.asarray(x), min(lo, 0.0), hi), *a, **k)
        try:
            rep, _ = repair.apply(model, calib, stem=stem, errors=False, act_quant=True, extra=extra)
        finally:
            repair.fake_quant_tensor = plain_fq
        quant = weight_bits.int8_grids(rep, set(repair.stem_layers(rep, stem)), calib)
        if mode == "mse":
            quant = mse_grids(rep, quant, calib)
        flips = weight_bits.flips(rep, quant, sets, ref)
        n = len(ref["other"])
        print(f"RESULT {name} ranges={mode} cle={cle or 'none'} stem={stem}: val flips {flips['val']}/"
              f"{len(ref['val'])}, other flips {flips['other']}/{n} (agreement {1 - flips['other'] / n:.4f}), "
              f"{time.perf_counter() - t:.0f} s", flush=True)


def main(argv=None) -> int:
    import int8_zoo

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--modes", default="minmax,mse", help="comma-separated: minmax, mse")
    ap.add_argument("--stem", type=int, default=6)
    ap.add_argument("--cle", choices=("", "auto", "range", "weights"), default="")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/tledge-int8-zoo"))
    args = ap.parse_args(argv)
    int8_zoo.at_int8_loop(args.name, args.cache, Path(f"/tmp/act-ranges-{os.getpid()}"),
                          lambda ctx: measure(ctx, args.name, args.modes.split(","), args.stem, args.cle))
    return 0


if __name__ == "__main__":
    sys.exit(main())
