"""TFLite 16x8 (int16 activations, int8 weights) against int8, on a zoo model (issue 11, eighteenth session;
docs/int8-fidelity.md, "Weight bits"): top-1 agreement with the Keras model on the 1300 imagenet_val1300 photos for
the plain model, the weight-repaired one (float-activation rounding, act_quant=False) and the export's repair
(act_quant=True), each converted both ways (float32 I/O: 16x8 has no uint8 I/O), and the interleaved batch-1
latency of the plain files beside fp32.

    python benchmarks/tflite_16x8.py hym-mnv1-s1 [--cache DIR]
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
import numpy as np
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]; sys.path[:0] = [str(REPO), str(REPO / "benchmarks"), str(REPO / "tests")]
import int8_zoo
from tledge.images import iter_image_files, prepare_all


def measure(ctx, name):
    import tensorflow as tf
    from tledge.export import repair_model
    from tledge.quant import repair, selective
    from lab.quant import quick
    from tledge.quant.kerasgraph import predict
    model = repair_model.pixel_model(ctx)
    calib = np.asarray(ctx.calib, np.float32)
    files = sorted(iter_image_files(int8_zoo.ASSETS / int8_zoo.IMAGENET))
    other = np.stack(prepare_all(ctx.contract.prepare, files)).astype(np.float32)
    ref = predict(model, other).argmax(1)
    variants = {}
    for label, m in (("plain", model), ("repaired-aq0", repair.apply(model, calib, stem=0, errors=False, act_quant=False)[0]),
                     ("repaired-stem0", repair.apply(model, calib, stem=0, errors=False)[0])):
        for mode in ("int8", "16x8"):
            conv = selective.tflite_converter(m, calib, io="float32")
            if mode == "16x8":
                conv.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
            t = time.time(); data = conv.convert(); ct = time.time() - t
            run = quick.Runner(data, "tflite")
            top = np.concatenate([run.predict(other[i:i + 50]) for i in range(0, len(other), 50)]).argmax(1)
            variants[f"{label} {mode}"] = run
            print(f"RESULT {name} {label} {mode}: other flips {(top != ref).sum()}/{len(ref)} agree {(top == ref).mean():.4f} convert {ct:.0f}s", flush=True)
    fp32 = quick.Runner(selective.tflite_fp32(model), "tflite")
    variants["fp32"] = fp32
    lat = quick.compare_latency({k: v for k, v in variants.items() if k.startswith("plain") or k == "fp32"}, other[:8])
    print("LATENCY", {k: round(v, 3) for k, v in lat.items()}, flush=True)


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/tledge-int8-zoo"))
    args = ap.parse_args(argv)
    int8_zoo.at_int8_loop(args.name, args.cache, Path("/tmp/tflite-16x8"), lambda ctx: measure(ctx, args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
