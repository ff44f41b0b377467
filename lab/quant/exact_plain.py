"""Lab experiment (thirteenth session; docs/int8-fidelity.md, "Unconfirmed plain passes"): does the Keras repair's
`exact_input` alone (the input grid shift, no weight rounding) improve the PLAIN int8 TFLite file? Prints the
agreement and mean abs error against the float Keras model on hymenoptera val (153) and the 1300
imagenet_val1300 photos, for the plain conversion and the shifted one. Measured on hym-mnv2 (seed 0): worse
(0.987 -> 0.980 on val, 0.981 -> 0.973 on the 1300); on
hym-mnv1-0.5-160 mixed (0.987 -> 0.980, 0.965 -> 0.970, mean error worse on both). Not in the product.

Usage: python lab/quant/exact_plain.py MODEL.keras [--tf]   (--tf: bake x/127.5 - 1 in front first)"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO.parent / "shared" / "assets"


def tflite_outputs(data: bytes, xs: dict) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=data, num_threads=2)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    it.resize_tensor_input(inp["index"], (1,) + next(iter(xs.values())).shape[1:])
    it.allocate_tensors()
    scale, zero = out["quantization"]
    res = {}
    for k, x in xs.items():
        ys = []
        for row in x:
            it.set_tensor(inp["index"], row[None].astype(np.uint8))
            it.invoke()
            ys.append((it.get_tensor(out["index"]).astype(np.float32) - zero) * scale)
        res[k] = np.concatenate(ys)
    return res


def main(argv: list[str]) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    import keras
    from zoo_models import prepared

    from tledge.images import iter_image_files
    from tledge.layers import preprocess_layer
    from tledge.quant import repair
    from lab.quant import quick

    m = keras.models.load_model(argv[0], compile=False)
    if "--tf" in argv:
        size = m.input_shape[1]
        inp = keras.Input((size, size, 3))
        m = keras.Model(inp, m(preprocess_layer("tf")(inp)))
    size = m.input_shape[1]
    calib = prepared(sorted(iter_image_files(ASSETS / "hymenoptera_data/train")), size)[:300]
    xs = {"val": prepared(sorted(iter_image_files(ASSETS / "hymenoptera_data/val")), size),
          "other": prepared(sorted(iter_image_files(ASSETS / "imagenet_val1300")), size)}
    ref = {k: m.predict(v, batch_size=64, verbose=0) for k, v in xs.items()}
    shifted, log = repair.apply(m, calib, steps=("fold", "exact_input"))
    print("exact input max abs", log.input_max_abs)
    out = {}
    for name, model in (("plain", m), ("exact_input", shifted)):
        t = time.time()
        ys = tflite_outputs(quick.tflite_int8(model, calib), xs)
        out[name] = {k: {"agreement": float((y.argmax(1) == ref[k].argmax(1)).mean()),
                         "mean_abs": float(np.abs(y - ref[k]).mean())} for k, y in ys.items()}
        print(name, out[name], f"{time.time() - t:.0f} s", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
