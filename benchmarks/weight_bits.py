"""How much of the int8 shortfall on the 2-class MobileNet 0.25 heads is the weights' 8 bits? (issue 11, eighteenth
session). The weight repair (`repair.apply`, float stem of `--stems` convolutions, GPTQ + bias correction) is run with its int grid widened
from +-127 to +-Q (Q = 255: one bit more, 511: two), and the repaired Keras model is compared with the original
on the 153 val photos and on the 1300 imagenet_val1300 photos the export never sees:

- `--acts float`: float activations, `act_quant=False` (the weights' own floor);
- `--acts int8`: every tensor the file quantises (outside the float stem) rounded to its calibration min/max 8-bit grid
  (`explain.forward_pass`), `act_quant=True` as the export runs it. At Q=127 this reproduces the shipped
  files (seed 1: 21 flips, 0.984, against the real TFLite file's 0.984).

    python benchmarks/weight_bits.py hym-mnv1-s1 --bits 127,255,511 --acts int8 [--stems 4,8] [--cache DIR]

The export runs up to its int8 loop (TFLite only) to get the model, contract and images it would use; the loop
itself is replaced by this measurement. Result: docs/int8-fidelity.md, "Weight bits".
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


def widen_grid(q: int) -> None:
    """The repair's integer weight limit: +-q instead of +-127 (`gptq.QMAX`, read by the repair's rounding)."""
    import tledge.quant.gptq as gptq

    gptq.QMAX = q


def int8_grids(rep, keep, calib) -> dict:
    """{layer: (lo, hi)} of every tensor the file quantises: its min/max over the calibration images."""
    from tledge.quant import repair
    from tledge.quant.explain import forward_pass

    ranges: dict = {}
    for i in range(0, len(calib), 128):
        for k, (lo, hi) in forward_pass(rep, calib[i:i + 128])[1].items():
            a, b = ranges.get(k, (0.0, 0.0))
            ranges[k] = (min(a, lo), max(b, hi))
    return {op.name: ranges[op.name] for op, _ in repair.nodes(rep)
            if repair.quantised_output(op, keep) and op.name not in rep.output_names}


def int8_activations(rep, quant, x):
    """Output of `rep` with the tensors of `quant` (int8_grids) rounded to their 8-bit grids."""
    from tledge.quant.explain import forward_pass

    return np.concatenate([np.asarray(forward_pass(rep, x[i:i + 100], quant)[0]) for i in range(0, len(x), 100)])


def eval_sets(ctx):
    """(Keras model as the loop gets it, calibration pixels, {"val", "other"}: images, {same keys}: its top-1)."""
    import int8_zoo

    from tledge.export import repair_model
    from tledge.images import iter_image_files, prepare_all
    from tledge.quant.kerasgraph import predict

    model = repair_model.pixel_model(ctx)
    files = sorted(iter_image_files(int8_zoo.ASSETS / int8_zoo.IMAGENET))
    other = np.stack(prepare_all(ctx.contract.prepare, files)).astype(np.float32)
    sets = {"val": ctx.val_x.astype(np.float32), "other": other}
    return model, np.asarray(ctx.calib, np.float32), sets, {k: predict(model, x).argmax(1) for k, x in sets.items()}


def flips(rep, quant, sets: dict, ref: dict) -> dict:
    """{set: photos whose top-1 differs from `ref`}, activations rounded by `quant` (int8_grids) or float (None)."""
    from tledge.quant.kerasgraph import predict

    return {k: int(((int8_activations(rep, quant, x) if quant is not None else predict(rep, x)).argmax(1)
                    != ref[k]).sum()) for k, x in sets.items()}


def measure(ctx, name: str, bits: list[int], acts: str, stems: list[int]) -> None:
    from tledge.quant import repair

    model, calib, sets, ref = eval_sets(ctx)
    for q, stem in [(q, k) for q in bits for k in stems]:
        widen_grid(q)
        t = time.perf_counter()
        rep, _ = repair.apply(model, calib, stem=stem, errors=False, act_quant=acts == "int8")
        quant = int8_grids(rep, set(repair.stem_layers(rep, stem)), calib) if acts == "int8" else None
        flipped = flips(rep, quant, sets, ref)
        n = len(ref["other"])
        print(f"RESULT {name} acts={acts} Q={q} stem={stem}: val flips {flipped['val']}/{len(ref['val'])}, other "
              f"flips {flipped['other']}/{n} (agreement {1 - flipped['other'] / n:.4f}), {time.perf_counter() - t:.0f} s",
              flush=True)


def main(argv=None) -> int:
    import int8_zoo

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--bits", default="127,255,511", help="comma-separated int limits (127 = int8)")
    ap.add_argument("--acts", choices=("float", "int8"), default="int8")
    ap.add_argument("--stems", default="4", help="comma-separated float stems (convolutions kept float)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/tledge-int8-zoo"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/weight-bits"), help="the export's scratch folder")
    args = ap.parse_args(argv)
    int8_zoo.at_int8_loop(args.name, args.cache, args.out, lambda ctx: measure(
        ctx, args.name, [int(b) for b in args.bits.split(",")], args.acts, [int(k) for k in args.stems.split(",")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
