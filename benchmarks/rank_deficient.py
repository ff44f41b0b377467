"""GPTQ on kernels with fewer calibration rows than kernel rows (squeeze-excite convolutions and heads on 1x1
inputs: one row per image) against nearest rounding there (`repair.MIN_SAMPLES_PER_ROW`; issue 11, nineteenth
session). For each ratio R, kernels with fewer than R x (kernel rows) calibration rows are rounded to nearest
(R = 0: GPTQ everywhere, the code before; R = 1: the product's rule). The weight repair (float stem of `--stem`
convolutions) and the simulated int8 file of `weight_bits.py` (`--acts int8`), or float activations.

    python benchmarks/rank_deficient.py hym-effb0 --ratios 0,1 [--acts int8,float] [--cache DIR]

Flips against the original Keras model on the 153 val photos and the 1300 imagenet_val1300 photos. Result:
docs/int8-fidelity.md, "Rank-deficient layers".
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks"), str(REPO / "tests")]


def measure(ctx, name: str, ratios: list[float], acts: list[str], stem: int) -> None:
    import weight_bits

    from tledge.quant import repair

    model, calib, sets, ref = weight_bits.eval_sets(ctx)
    for ratio in ratios:
        repair.MIN_SAMPLES_PER_ROW = ratio
        for act in acts:
            t = time.perf_counter()
            rep, log = repair.apply(model, calib, stem=stem, errors=False, act_quant=act == "int8")
            nearest = [r.name for r in log.layers if r.rounding == "nearest"]
            quant = weight_bits.int8_grids(rep, set(repair.stem_layers(rep, stem)), calib) if act == "int8" else None
            flips = weight_bits.flips(rep, quant, sets, ref)
            n = len(ref["other"])
            print(f"RESULT {name} ratio={ratio:g} acts={act} stem={stem} nearest_kernels={len(nearest)}: val flips "
                  f"{flips['val']}/{len(ref['val'])}, other flips {flips['other']}/{n} "
                  f"(agreement {1 - flips['other'] / n:.4f}), {time.perf_counter() - t:.0f} s", flush=True)


def main(argv=None) -> int:
    import int8_zoo

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--ratios", default="0,1", help="comma-separated MIN_SAMPLES_PER_ROW values (0: GPTQ everywhere)")
    ap.add_argument("--acts", default="int8", help="comma-separated: int8, float")
    ap.add_argument("--stem", type=int, default=6)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/tledge-int8-zoo"))
    args = ap.parse_args(argv)
    int8_zoo.at_int8_loop(args.name, args.cache, Path(f"/tmp/rank-deficient-{os.getpid()}"), lambda ctx: measure(
        ctx, args.name, [float(r) for r in args.ratios.split(",")], args.acts.split(","), args.stem))
    return 0


if __name__ == "__main__":
    sys.exit(main())
