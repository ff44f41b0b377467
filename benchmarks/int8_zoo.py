"""`tledge export --int8` on a zoo of models nobody tuned the fidelity loop for (issue 11).

Per model and format: plain vs final int8 agreement with its 95 % Wilson interval, top-5 agreement,
the top-1 change against the Keras model (McNemar interval), batch-1 latency vs plain int8 and vs fp32 (when a
rung ships, the three files measured in turns at the end of the ladder; else parity's own batch-1 medians, taken
one file after another), export time, and what the loop kept. For the
2-class models also the final int8 file's agreement with the fp32 file on the 1300 imagenet_val1300 photos
(unlabelled, outside their task, never seen by the export): one image there is 0.08 points, not 0.65.

Zoo (from ../shared/assets; models are built once into --cache):
  imagenet-mnv1   keras_imagenet_models/mobilenet_v1_0.25_224.h5 (Keras 2.8 file, loads through
                  tf_keras, 1000 classes) on imagenet_val1300, calibrated on 300 photos and checked on the
                  other 1000 (a fixed split: every 13th photo at offsets 0, 4, 8 calibrates)
  hym-mnv1-s{0,1,2}  MobileNet v1 0.25 ImageNet features + Dense(2) trained on hymenoptera (three seeds;
                  s7, s11: held-out seeds, and hym-mnv2-s3 for MobileNetV2, never used while tuning)
  hym-tfkeras     the same architecture built and saved by tf_keras (loads only through tf_keras)
  hym-tutorial    TensorFlow's transfer-learning tutorial layout saved by tf_keras: augmentation layers,
                  preprocess_input as TFOpLambda arithmetic, the frozen MobileNet v1 0.25, ONE logit output
  hym-savedmodel  hym-mnv1-s1 exported as a TensorFlow SavedModel (no Keras model: graph-level rungs only)
  hym-mnv2        MobileNetV2 1.0 with REAL ImageNet features (dequantised from Google's Coral
                  tf2_mobilenet_v2_1.0_224_ptq.tflite, benchmarks/zoo_models.py) + Dense(2) trained on
                  hymenoptera, preprocessing baked in (a .keras as `tledge train` saves it)
  hym-mnv1-0.5-160  the same recipe on MobileNet v1 0.5 at 160 px (Coral mobilenet_v1_0.5_160_quant.tflite)
  imagenet-mnv2   the same float MobileNetV2 with the Coral file's own classifier (background class
                  dropped: 1000 classes) on the imagenet_val1300 split of imagenet-mnv1 (slow: ~6+ min)
  hym-effb0       EfficientNetB0 (swish, squeeze-excite, its own Rescaling + Normalization) and
  hym-resnet50    ResNet50 (caffe BGR preprocessing baked as a 1x1 conv, Add, ZeroPadding, MaxPooling), 128 px,
                  TRAINED FROM RANDOM INIT on the 245 hymenoptera train photos (flips + random crops,
                  benchmarks/zoo_models.py scratch_model): ../shared/assets has no ImageNet weights for them and
                  there is no network. Their val accuracy is well below an ImageNet backbone's (keras_val.json
                  beside each model: val accuracy and the top-1 probability distribution), but their outputs are
                  confident, so int8 agreement on them measures the architectures' quantisation, not near-ties.
  hym-effb0-s1    hym-effb0's recipe with seed 1: held out for the twenty-first session's sigmoid simulation
  hym-mnv3s-s1    hym-mnv3s's recipe with seed 1: held out for the twenty-fifth session's float HARD_SWISH
  hym-train-s{3,4}  the product's own flow, held out (twenty-sixth session): `tledge train` in another process
                  (shared MobileNet 0.25 weights, its default recipe: head, then the top 30 % fine-tuned, with
                  augmentation), exported from its model.keras (s3) or model.h5 (s4) with no --preprocess

    python benchmarks/int8_zoo.py [--only imagenet-mnv1,hym-mnv1-s0] [--json out.json] [--fidelity 0.99]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

ASSETS = Path(os.environ.get("TLEDGE_SHARED_ASSETS", REPO.parent / "shared" / "assets"))
IMAGENET = "imagenet_val1300"


def imagenet_split(cache: Path) -> tuple[Path, Path]:
    """Symlinked calib (300) / eval (1000) class folders of imagenet_val1300, disjoint."""
    calib, ev = cache / "imagenet_calib", cache / "imagenet_eval"
    if not calib.is_dir():
        src = ASSETS / IMAGENET
        files = sorted(p for p in src.rglob("*") if p.is_file() and p.parent != src)
        for i, f in enumerate(files):
            d = (calib if i % 13 in (0, 4, 8) else ev) / f.parent.name
            d.mkdir(parents=True, exist_ok=True)
            (d / f.name).symlink_to(f)
    return calib, ev


def tf_keras_hymenoptera(out: Path, seed: int = 0) -> Path:
    """MobileNet v1 0.25 + Dense(2) built, trained and saved by tf_keras (a Keras 2 .h5)."""
    path = out / "hym_tfkeras.h5"
    if path.is_file():
        return path
    import numpy as np
    import tf_keras

    from tledge.contract import Contract
    from tledge.images import labelled_images

    tf_keras.utils.set_random_seed(seed)
    base = tf_keras.applications.MobileNet(input_shape=(224, 224, 3), alpha=0.25, include_top=False, pooling="avg",
                                           weights=str(ASSETS / "keras_imagenet_weights/mobilenet_2_5_224_tf_no_top.h5"))
    base.trainable = False
    inp = tf_keras.Input((224, 224, 3))
    x = tf_keras.layers.Dropout(0.2)(base(inp, training=False))
    model = tf_keras.Model(inp, tf_keras.layers.Dense(2, activation="softmax")(x))
    c = Contract(224, 224, norm="tf", baked=False)
    files, y, _ = labelled_images(ASSETS / "hymenoptera_data" / "train")
    model.compile(tf_keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    model.fit(np.stack([c.prepare(f) for f in files]), y, epochs=8, batch_size=32, verbose=0)
    out.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def tf_tutorial_hymenoptera(out: Path, seed: int = 0) -> Path:
    """TensorFlow's transfer-learning tutorial layout, saved by tf_keras: a data_augmentation Sequential
    (RandomFlip, RandomRotation), `preprocess_input` as TFOpLambda arithmetic, the frozen MobileNet v1 0.25
    (shared ImageNet weights) called with training=False, GAP, Dropout and ONE logit (`from_logits=True`)."""
    path = out / "hym_tutorial.h5"
    if path.is_file():
        return path
    import numpy as np
    import tf_keras

    from tledge.contract import Contract
    from tledge.images import labelled_images

    L = tf_keras.layers
    tf_keras.utils.set_random_seed(seed)
    base = tf_keras.applications.MobileNet(input_shape=(224, 224, 3), alpha=0.25, include_top=False,
                                           weights=str(ASSETS / "keras_imagenet_weights/mobilenet_2_5_224_tf_no_top.h5"))
    base.trainable = False
    inp = tf_keras.Input((224, 224, 3))
    x = tf_keras.Sequential([L.RandomFlip("horizontal"), L.RandomRotation(0.2)], name="data_augmentation")(inp)
    x = tf_keras.applications.mobilenet.preprocess_input(x)
    x = L.Dropout(0.2)(L.GlobalAveragePooling2D()(base(x, training=False)))
    model = tf_keras.Model(inp, L.Dense(1)(x))
    c = Contract(224, 224, norm="raw", baked=True)
    files, y, _ = labelled_images(ASSETS / "hymenoptera_data" / "train")
    model.compile(tf_keras.optimizers.Adam(1e-3), tf_keras.losses.BinaryCrossentropy(from_logits=True))
    model.fit(np.stack([c.prepare(f) for f in files]), np.asarray(y, "float32"), epochs=10, batch_size=16, verbose=0)
    out.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def tledge_trained(out: Path, seed: int, file: str) -> Path:
    """`tledge train` on the hymenoptera photos, run as a user runs it (another process, the default recipe, the
    shared MobileNet 0.25 ImageNet weights); `file` (model.keras or model.h5) of its output folder."""
    import subprocess

    path = out / file
    if not path.is_file():
        subprocess.run([sys.executable, "-m", "tledge", "train", str(ASSETS / "hymenoptera_data"), "--alpha", "0.25",
                        "--weights", str(ASSETS / "keras_imagenet_weights/mobilenet_2_5_224_tf_no_top.h5"),
                        "--seed", str(seed), "--out", str(out), "--quiet"], check=True)
    return path


def zoo(cache: Path) -> dict:
    """name -> (model path builder, export options)."""
    from realdata import hymenoptera_mobilenet, savedmodel_of
    from zoo_models import hymenoptera_model, imagenet_model, scratch_model

    hym = {"calib": str(ASSETS / "hymenoptera_data" / "train"), "val": str(ASSETS / "hymenoptera_data" / "val"),
           "preprocess": "tf"}

    def baked():  # preprocessing baked into the model: no --preprocess
        return {k: v for k, v in hym.items() if k != "preprocess"}
    entries = {
        "imagenet-mnv1": (lambda: ASSETS / "keras_imagenet_models" / "mobilenet_v1_0.25_224.h5",
                          lambda: dict(zip(("calib", "val"), map(str, imagenet_split(cache))),
                                       labels=str(ASSETS / IMAGENET / "labels1000.txt"), preprocess="tf")),
        "hym-tfkeras": (lambda: tf_keras_hymenoptera(cache / "hym-tfkeras"), lambda: hym),
        "hym-tutorial": (lambda: tf_tutorial_hymenoptera(cache / "hym-tutorial"), lambda: {**hym, "preprocess": "raw"}),
        "imagenet-mnv2": (lambda: imagenet_model(cache / "imagenet-mnv2", "mnv2"),
                          lambda: dict(zip(("calib", "val"), map(str, imagenet_split(cache))),
                                       labels=str(ASSETS / IMAGENET / "labels1000.txt"))),
    }
    for arch in ("mnv2", "mnv1-0.5-160"):  # preprocessing baked in: no --preprocess
        entries[f"hym-{arch}"] = (lambda a=arch: hymenoptera_model(cache, a), baked)
    for arch in ("effb0", "resnet50", "mnv3s"):  # trained from scratch, preprocessing baked in
        entries[f"hym-{arch}"] = (lambda a=arch: scratch_model(cache, a), baked)
    for seed in (0, 1, 2, 7, 11):  # 7 and 11: held out, first run after the loop was frozen (eleventh session)
        entries[f"hym-mnv1-s{seed}"] = (
            lambda s=seed: hymenoptera_mobilenet(ASSETS, cache / f"hym-s{s}", seed=s), lambda: hym)
    entries["hym-mnv2-s3"] = (lambda: hymenoptera_model(cache, "mnv2", seed=3), baked)  # held out, as seeds 7, 11
    entries["hym-effb0-s1"] = (lambda: scratch_model(cache, "effb0", seed=1), baked)  # held out (21st session)
    entries["hym-mnv3s-s1"] = (lambda: scratch_model(cache, "mnv3s", seed=1), baked)  # held out (25th session)
    for seed, file in ((3, "model.keras"), (4, "model.h5")):  # held out (26th session): tledge train's own models
        entries[f"hym-train-s{seed}"] = (lambda s=seed, f=file: tledge_trained(cache / f"hym-train-s{s}", s, f), baked)
    entries["hym-savedmodel"] = (  # seed 1's model as a SavedModel
        lambda: savedmodel_of(hymenoptera_mobilenet(ASSETS, cache / "hym-s1", seed=1), cache / "hym-s1-savedmodel"),
        lambda: hym)
    return entries


def at_int8_loop(name: str, cache: Path, out: Path, measure) -> None:
    """Export zoo model `name` (TFLite only) up to its int8 loop and call `measure(ctx)` there instead of the loop:
    the model, contract, calibration and val images the loop would get (the lab scripts' entry point)."""
    from tledge.export import fidelity
    from tledge.export.pipeline import ExportConfig, export

    build, opts = zoo(cache)[name]

    def improve(failing, ctx):
        measure(ctx)
        return fidelity.FidelityOutcome(results={})

    fidelity.improve = improve
    export(Path(build()), ExportConfig(out=out / name, int8=True, calib_limit=300, threads=2, formats=("tflite",),
                                       explain=True, **opts()))


def run_one(name: str, model: Path, opts: dict, out: Path, formats=("tflite", "onnx")) -> list[dict]:
    from tledge.export.pipeline import ExportConfig, export

    cfg = ExportConfig(out=out, int8=True, calib_limit=300, threads=2, formats=tuple(formats), **opts)
    start = time.perf_counter()
    res = export(model, cfg)
    seconds = time.perf_counter() - start
    found = rows(name, res.report, seconds, res.seconds)
    if all(r["classes"] < 1000 for r in found):  # the 2-class models: agreement on photos outside their task
        for r in found:
            r["other_agreement"], r["other_n"], r["other_near_tie_flips"] = other_photos(out, r["format"])
    return found


def other_photos(out: Path, kind: str) -> tuple[float | None, int, int | None]:
    """Top-1 agreement of the export's final int8 file with its fp32 file on the 1300 imagenet_val1300 photos:
    unlabelled, outside a 2-class model's task, and never seen by the export. On 153 val photos one image is
    0.65 points; on 1300 it is 0.08, so this tells rungs apart that the val set cannot. Also how many of the flips
    are near-ties (tledge.parity.NEAR_TIE)."""
    import numpy as np

    from tledge.images import iter_image_files, prepare_all
    from tledge.parity import Thresholds, compare
    from tledge.runtime.model import load

    int8 = next((p for p in (out / f"model_int8.{kind}", out / "rejected" / f"model_int8.{kind}") if p.is_file()), None)
    files = sorted(iter_image_files(ASSETS / IMAGENET)) if (ASSETS / IMAGENET).is_dir() else []
    if int8 is None or not files:
        return None, 0, None
    outs = []
    for path in (out / f"model_fp32.{kind}", int8):
        m = load(path)
        outs.append(np.concatenate([m.predict(np.stack(prepare_all(m.prepare, files[i:i + 64])))
                                    for i in range(0, len(files), 64)]))
    r = compare(outs[0], outs[1], file=int8.name, format=kind, precision="int8", thresholds=Thresholds())
    return r.top1_agreement, len(files), r.near_tie_flips


def rows(name: str, report, seconds: float, parts: dict) -> list[dict]:
    by_file = {r.file: r for r in report.results}
    plain = {a["file"]: a for a in report.fidelity if a["rung"] == "plain"}
    out = []
    for kind, fp32 in (("tflite", "model_fp32.tflite"), ("onnx", "model_fp32.onnx")):
        int8 = f"model_int8.{kind}"
        final = by_file.get(int8) or by_file.get(f"rejected/{int8}")
        if final is None:
            continue
        first = plain.get(int8)
        kept = [a["rung"] for a in report.fidelity if a["file"] == int8 and a.get("kept")]
        turns = next((a["latency_in_turns_ms"] for a in report.fidelity  # the kept file, plain and fp32 in turns
                      if a["file"] == int8 and a.get("kept") and "latency_in_turns_ms" in a), {})
        out.append({
            "model": name, "format": kind, "classes": final.classes, "images": final.images,
            "plain_agreement": first["agreement"] if first else final.top1_agreement,
            "plain_latency_ms": turns.get("plain") or (first["latency_ms"] if first else final.latency_ms),
            "agreement": final.top1_agreement, "agreement_ci": final.agreement_ci,
            "topk_agreement": final.topk_agreement, "accuracy": final.accuracy,
            "reference_accuracy": final.reference_accuracy, "accuracy_change": final.accuracy_change,
            "accuracy_change_ci": final.accuracy_change_ci, "mcnemar_p": final.mcnemar_p,
            "latency_ms": turns.get("kept") or final.latency_ms, "latency_in_turns": bool(turns),
            "fp32_latency_ms": turns.get("fp32") or (by_file[fp32].latency_ms if fp32 in by_file else None),
            "passed": final.passed, "kept": kept[0] if kept else ("plain" if final.passed else "none"),
            "rungs": {a["rung"]: a.get("seconds") for a in report.fidelity if a["file"] == int8},
            "export_s": round(seconds, 1), "loop_s": parts.get("int8 fidelity"),
            "failures": final.failures, "notes": [n for n in report.notes if "kernel paths" in n and int8 in n],
        })
    return out


def markdown(all_rows: list[dict], machine: str) -> str:
    from tledge import stats

    lines = [f"Machine: {machine}", "",
             "| model | format | plain agreement | final agreement [95 %] | on 1300 other photos [95 %] | top-5 | "
             "top-1 change vs Keras [95 %] | latency vs plain int8 / fp32 | export s (loop s) | kept | result |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in all_rows:
        ci = stats.fmt_interval(*r["agreement_ci"]) if r["agreement_ci"] else ""
        change = stats.fmt_points(r["accuracy_change"], *r["accuracy_change_ci"]) if r["accuracy_change_ci"] else "-"
        lat = (f"{r['latency_ms'] / r['plain_latency_ms']:.2f}x / "
               f"{r['latency_ms'] / r['fp32_latency_ms']:.2f}x") if r["fp32_latency_ms"] and r["plain_latency_ms"] else "-"
        top5 = f"{r['topk_agreement']:.3f}" if r["topk_agreement"] is not None else "-"
        other = "-"
        if r.get("other_agreement") is not None:
            n = r["other_n"]
            other = f"{r['other_agreement']:.3f} {stats.fmt_interval(*stats.wilson(round(r['other_agreement'] * n), n))}"
            if r.get("other_near_tie_flips") is not None:
                other += f" ({r['other_near_tie_flips']} of {round((1 - r['other_agreement']) * n)} flips near-ties)"
        lines.append(f"| {r['model']} | {r['format']} | {r['plain_agreement']:.3f} | {r['agreement']:.3f} {ci} | {other} | "
                     f"{top5} | "
                     f"{change} | {lat} | {r['export_s']:.0f} ({r['loop_s'] or 0:.0f}) | {r['kept']} | "
                     f"{'pass' if r['passed'] else 'FAIL'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from int8_onnx_kernels import cpu_line

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/tledge-int8-zoo"))
    ap.add_argument("--only", default="")
    ap.add_argument("--formats", default="tflite,onnx")
    ap.add_argument("--robust-scheme", help="ONNX scheme when U8S8 would saturate (tledge.export.onnx.SCHEMES)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--fidelity", "--min-agreement", type=float, help="int8 top-1 agreement target (export --fidelity; the issue's "
                                                   "2-class target is 0.99); exports go to exports/NAME-fFIDELITY")
    ap.add_argument("--repair-time", type=float, default=float("inf"),
                    help="export --repair-time (default inf: every rung the loop needs, as the rows before the budget)")
    args = ap.parse_args(argv)
    if args.robust_scheme:
        from tledge.export import onnx as onnx_export

        onnx_export.ROBUST_SCHEME = args.robust_scheme
    entries = zoo(args.cache)
    names = [n for n in args.only.split(",") if n] or list(entries)
    all_rows = []
    for name in names:
        build, opts = entries[name]
        extra, folder = ({"fidelity": args.fidelity}, f"{name}-f{args.fidelity}") if args.fidelity else ({}, name)
        extra["repair_time"] = args.repair_time
        all_rows += run_one(folder, Path(build()), {**opts(), **extra}, args.cache / "exports" / folder,
                            args.formats.split(","))
        print(markdown(all_rows[-2:], cpu_line()), flush=True)
    text = markdown(all_rows, cpu_line())
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"machine": cpu_line(), "rows": all_rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
