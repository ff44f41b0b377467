"""int8 fidelity before/after the weight-side repairs (GitHub issue 7).

Builds the issue's model from ../shared/assets (MobileNet v1 alpha 0.25 ImageNet weights, frozen,
Dropout 0.2 + Dense(2, softmax), 8 epochs on hymenoptera_data/train at 224, normalisation baked in
so files take pixels), exports plain and repaired full-int8 TFLite (uint8 I/O) and ONNX (QDQ,
per-channel, U8S8, float Softmax as tledge.export.onnx does), and prints / writes agreement with
Keras on hymenoptera_data/val, accuracy, max abs and median per-image max abs of the probabilities,
and batch-1 latency (2 threads, interleaved). A second backbone (MobileNetV2 alpha 0.35, 96 px,
on tledge's generated shapes, random init, BatchNorm statistics recalibrated and frozen, trained
15 epochs: a healthy model whose plain int8 file already agrees) checks that the repairs do not hurt a healthy model.

    .venv/bin/python benchmarks/int8_fidelity.py [--stems 0,4] [--json out.json] [--families mnv1,mnv2]
    .venv/bin/python benchmarks/int8_fidelity.py --quick    # = --families mnv1 --stems 0

Models, arrays and repaired models are cached in --cache (default /tmp/tledge-int8-cache).
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
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
WEIGHTS = "keras_imagenet_weights/mobilenet_2_5_224_tf_no_top.h5"


def load_split(assets: Path, split: str, size: int, cache: Path):
    """uint8 pixels and labels of hymenoptera_data/<split>, resized with the contract (AREA, RGB)."""
    xf, yf = cache / f"{split}_{size}_x.npy", cache / f"{split}_{size}_y.npy"
    if xf.is_file() and yf.is_file():
        return np.load(xf), np.load(yf)
    from tledge.contract import Contract
    from tledge.errors import ImageError
    from tledge.images import labelled_images

    c = Contract(height=size, width=size, norm="tf", baked=True, input_dtype="float32")
    files, y, _ = labelled_images(assets / "hymenoptera_data" / split)
    xs, ys = [], []
    for f, label in zip(files, y):
        try:
            xs.append(c.prepare(f).astype(np.uint8))
            ys.append(label)
        except ImageError:
            continue
    np.save(xf, np.stack(xs))
    np.save(yf, np.asarray(ys))
    return np.load(xf), np.load(yf)


def build_mobilenet(assets: Path, x, y, cache: Path, epochs: int = 8):
    """The issue's model, trained once and cached (features of the frozen backbone are computed
    once per batch by Keras; training takes ~15 s on 2 cores)."""
    import keras

    from tledge.layers import Preprocess

    path = cache / "mobilenet_025_224_hymenoptera.keras"
    if path.is_file():
        return keras.saving.load_model(path)
    keras.utils.set_random_seed(0)
    bb = keras.applications.MobileNet(input_shape=x.shape[1:], alpha=0.25, include_top=False, pooling="avg",
                                      weights=str(assets / WEIGHTS))
    bb.trainable = False
    inp = keras.Input(x.shape[1:], name="pixels")
    h = keras.layers.Dropout(0.2)(bb(Preprocess("tf", name="preprocess")(inp), training=False))
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax", name="head")(h), name="hymenoptera_mnv1")
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x.astype("float32"), y, epochs=epochs, batch_size=32, verbose=0)
    model.save(path)
    return model


def _recalibrate_bn(backbone, x_norm, batch=64):
    """Set every BatchNormalization's moving mean/variance to its input's statistics on `x_norm`
    (layer by layer, in order): a random-init network then has well-scaled activations."""
    import keras

    for layer in backbone.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        probe = keras.Model(backbone.inputs[0], layer.input)
        h = np.concatenate([keras.ops.convert_to_numpy(probe(x_norm[i:i + batch]))
                            for i in range(0, len(x_norm), batch)])
        h = h.reshape(-1, h.shape[-1]).astype(np.float64)
        layer.moving_mean.assign(h.mean(axis=0).astype("float32"))
        layer.moving_variance.assign(h.var(axis=0).astype("float32"))


def shapes_data(cache: Path, size: int = 96):
    """tledge's generated 3-class shapes set (240 train / 150 val) as float32 pixels."""
    from tledge.contract import Contract
    from tledge.datasets import make_split_shapes
    from tledge.images import labelled_images

    root = make_split_shapes(cache / f"shapes{size}", n_train=80, n_val=50, size=size)
    c = Contract(size, size, norm="tf", input_dtype="float32")
    out = []
    for split in ("train", "val"):
        files, y, _ = labelled_images(root / split)
        out += [np.stack([c.prepare(f) for f in files]).astype(np.uint8), y]
    return out


def build_mobilenet_v2(x, y, cache: Path, epochs: int = 15):
    """Second family, a healthy model: MobileNetV2 alpha 0.35 at 96 px from random init, BatchNorm
    statistics recalibrated on the data and then frozen, the whole network trained briefly."""
    import keras

    from tledge.layers import Preprocess

    path = cache / f"mobilenet_v2_035_{x.shape[1]}_shapes.keras"
    if path.is_file():
        return keras.saving.load_model(path)
    keras.utils.set_random_seed(0)
    bb = keras.applications.MobileNetV2(input_shape=x.shape[1:], alpha=0.35, include_top=False, pooling="avg",
                                        weights=None)
    _recalibrate_bn(bb, x.astype("float32") / 127.5 - 1.0)
    for layer in bb.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False  # inference-mode BN: 240 images cannot train its statistics
    inp = keras.Input(x.shape[1:], name="pixels")
    h = keras.layers.Dropout(0.2)(bb(Preprocess("tf", name="preprocess")(inp), training=False))
    model = keras.Model(inp, keras.layers.Dense(int(y.max()) + 1, activation="softmax", name="head")(h),
                        name="shapes_mnv2")
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x.astype("float32"), y, epochs=epochs, batch_size=16, verbose=0)
    model.save(path)
    return model


def metrics(p, ref, y) -> dict:
    d = np.abs(p - ref).max(axis=1)
    return {"agreement": float(np.mean(p.argmax(1) == ref.argmax(1))), "accuracy": float(np.mean(p.argmax(1) == y)),
            "max_abs": float(d.max()), "median_abs": float(np.median(d))}


def quant_code_hash() -> str:
    """A hash of tledge/quant's source: part of the repaired models' cache key (a cache keyed by name alone gave
    the last repair's rows after the repair code changed)."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted((Path(__file__).resolve().parents[1] / "tledge" / "quant").glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def repaired(model, calib, cache: Path, tag: str, stem: int, steps):
    """repair.apply, cached as .keras (the repaired weights are plain Keras weights), keyed by tledge/quant's code."""
    import keras

    from tledge.quant import repair

    path = cache / f"{tag}_{model.name}_repaired_{'-'.join(steps)}_stem{stem}_{quant_code_hash()}.keras"
    if path.is_file():
        return keras.saving.load_model(path), None
    m, log = repair.apply(model, calib, steps, stem=stem)
    m.save(path)
    return m, log


def files_for(model, calib, stem: int, tag: str, log):
    """(tflite Runner, onnx Runner) of one Keras model, the first `stem` convs kept float."""
    from lab.quant import quick
    from tledge.quant import selective as sel

    t = time.perf_counter()
    cal = sel.calibrate_tflite(model, calib)
    tfl = sel.quantize_tflite(cal, keep_float=sel.tflite_stem(cal, stem))
    fo = quick.onnx_float(model)
    onx = quick.onnx_int8(fo, calib, exclude=sel.onnx_stem(fo, stem))
    log(f"  converted {tag} in {time.perf_counter() - t:.0f}s "
        f"(TFLite {len(tfl) / 1e6:.2f} MB, ONNX {len(onx) / 1e6:.2f} MB)")
    return {f"{tag} tflite": quick.Runner(tfl, "tflite"), f"{tag} onnx": quick.Runner(onx, "onnx")}


def run_family(name, model, calib, xv, yv, stems, steps, cache, log):
    from tledge.quant import repair

    ref = repair.predict(model, xv.astype("float32"))
    rows = {"keras": {**metrics(ref, ref, yv), "latency_ms": None}}
    from lab.quant import quick
    from tledge.quant import selective as sel

    fo = quick.onnx_float(model)
    runners = {"fp32 tflite": quick.Runner(sel.tflite_fp32(model), "tflite"), "fp32 onnx": quick.Runner(fo, "onnx")}
    runners |= files_for(model, calib, 0, "plain int8", log)
    if max(stems) > 0:
        runners |= files_for(model, calib, max(stems), f"plain int8 stem{max(stems)}", log)
    for stem in stems:
        t = time.perf_counter()
        m, rlog = repaired(model, calib, cache, name, stem, steps)
        log(f"  repair stem {stem}: {time.perf_counter() - t:.0f}s" + (f" - {rlog.summary()}" if rlog else " (cached)"))
        label = "repaired int8" + (f" stem{stem}" if stem else "")
        rows[label + " keras-float"] = {**metrics(repair.predict(m, xv.astype("float32")), ref, yv), "latency_ms": None}
        runners |= files_for(m, calib, stem, label, log)
    for k, r in runners.items():
        rows[k] = metrics(r.predict(xv.astype("float32")), ref, yv)
    from lab.quant.quick import compare_latency

    for k, v in compare_latency(runners, xv.astype("float32")).items():
        rows[k]["latency_ms"] = v
    return rows


def table(rows: dict) -> str:
    lines = ["| variant | top-1 agreement | accuracy | max abs | median per-image max abs | latency ms |",
             "|---|---|---|---|---|---|"]
    for k, r in rows.items():
        lat = "–" if r.get("latency_ms") is None else f"{r['latency_ms']:.2f}"
        lines.append(f"| {k} | {r['agreement']:.3f} | {r['accuracy']:.3f} | {r['max_abs']:.3f} | "
                     f"{r['median_abs']:.4f} | {lat} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--assets", type=Path,
                    default=Path(os.environ.get("TLEDGE_SHARED_ASSETS", REPO.parent / "shared" / "assets")))
    ap.add_argument("--cache", type=Path, default=Path("/tmp/tledge-int8-cache"))
    ap.add_argument("--stems", default="0,4", help="float stems to try for the repaired model (convs kept float)")
    ap.add_argument("--steps", default=",".join(("fold", "exact_input", "adaptive", "bias_correction")))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--families", default="mnv1,mnv2", help="mnv1 (the issue's model), mnv2 (healthy check)")
    ap.add_argument("--quick", action="store_true", help="only the issue's model, repaired all-int8 (--families "
                                                         "mnv1 --stems 0)")
    args = ap.parse_args(argv)
    if args.quick:
        args.families, args.stems = "mnv1", "0"
    for need in (args.assets / WEIGHTS, args.assets / "hymenoptera_data" / "train",
                 args.assets / "hymenoptera_data" / "val"):
        if not need.exists():
            why = f"shared asset not available: {need}"
            print(f"skipped: {why}", file=sys.stderr)
            if args.json:
                args.json.write_text(json.dumps({"skipped": why}) + "\n")
                return 0
            return 2
    args.cache.mkdir(parents=True, exist_ok=True)
    stems, steps = [int(s) for s in args.stems.split(",")], tuple(args.steps.split(","))

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    xt, yt = load_split(args.assets, "train", 224, args.cache)
    xv, yv = load_split(args.assets, "val", 224, args.cache)
    out = {"steps": steps, "stems": stems, "families": {}, "seconds": {}, "cache": str(args.cache)}
    families = args.families.split(",")
    if "mnv1" in families:
        log("MobileNet v1 0.25 @224 (ImageNet weights, frozen, head trained)")
        t = time.perf_counter()
        model = build_mobilenet(args.assets, xt, yt, args.cache)
        out["families"]["mobilenet_v1_025_224"] = run_family("mnv1", model, xt.astype("float32"), xv, yv, stems,
                                                             steps, args.cache, log)
        out["seconds"]["mobilenet_v1_025_224"] = round(time.perf_counter() - t, 1)
        print(f"\n### mobilenet_v1_025_224\n\n{table(out['families']['mobilenet_v1_025_224'])}", flush=True)
    if "mnv2" in families:
        log("MobileNetV2 0.35 @96 on generated shapes (random init, BN recalibrated, trained 15 epochs)")
        t = time.perf_counter()
        st, sy, sv, svy = shapes_data(args.cache)
        m2 = build_mobilenet_v2(st, sy, args.cache)
        out["families"]["mobilenet_v2_035_96"] = run_family("mnv2", m2, st.astype("float32"), sv, svy, stems,
                                                            steps, args.cache, log)
        out["seconds"]["mobilenet_v2_035_96"] = round(time.perf_counter() - t, 1)
        print(f"\n### mobilenet_v2_035_96\n\n{table(out['families']['mobilenet_v2_035_96'])}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
