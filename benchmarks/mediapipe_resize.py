"""MediaPipe Tasks ImageClassifier against the tledge runtime on raw photos (any size), for each resize tledge
could use: which one agrees with MediaPipe, and what it costs against the Keras model (trained on INTER_AREA
images). Needs `mediapipe` (its own venv: docs/tflite-metadata.md); `--keras` also needs TensorFlow there.

    python benchmarks/mediapipe_resize.py EXPORT_DIR hymenoptera_data/val [--keras MODEL.h5 --keras-norm tf] [--json]

For every .tflite in EXPORT_DIR (and rejected/) and every candidate resize (stretch to the input size):
top-1 agreement of `tledge run` with MediaPipe, with Keras given the same pixels (what export parity
measures), with Keras given INTER_AREA pixels (what the model was trained on), and accuracies.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

CANDIDATES = ("area", "linear", "warp-linear")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("export", type=Path, help="an export folder (its .tflite files)")
    p.add_argument("images", type=Path, help="a folder of class folders")
    p.add_argument("--keras", type=Path, help="the Keras model the export came from")
    p.add_argument("--keras-norm", default="tf", help="its normalisation when not baked in (default tf)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        import mediapipe  # noqa: F401
    except ImportError:
        print("mediapipe is not installed here: run this in a venv with mediapipe", file=sys.stderr)
        return 2
    from tledge.clients import mediapipe_scores
    from tledge.images import labelled_images
    from tledge.images import load as load_image
    from tledge.runtime import load

    t0 = time.time()
    files, y, _ = labelled_images(args.images)
    photos = [np.ascontiguousarray(load_image(f)) for f in files]
    models = sorted(args.export.glob("*.tflite")) + sorted(args.export.glob("rejected/*.tflite"))
    keras = _keras_scores(args.keras, args.keras_norm, photos, load(models[0]).contract) if args.keras else None
    rows = []
    for path in models:
        model = load(path)
        theirs = mediapipe_scores(path, photos)
        for cand in CANDIDATES:
            c = model.contract.replace(resize=cand)
            ours = np.stack([model.scores(model.predict(c.prepare(im)[None]))[0] for im in photos])
            row = {"file": str(path.relative_to(args.export)), "resize": cand, "images": len(photos),
                   "tledge_mediapipe": _agree(ours, theirs), "tledge_accuracy": _acc(ours, y),
                   "mediapipe_accuracy": _acc(theirs, y)}
            if keras is not None:
                row.update(tledge_keras_same_pixels=_agree(ours, keras[cand]), tledge_keras_area=_agree(ours, keras["area"]),
                           keras_accuracy=_acc(keras[cand], y), keras_vs_keras_area=_agree(keras[cand], keras["area"]),
                           mediapipe_keras_area=_agree(theirs, keras["area"]))
            rows.append(row)
    result = {"machine": _machine(), "seconds": round(time.time() - t0, 1), "rows": rows}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(result["machine"])
    cols = [k for k in rows[0] if k not in ("file", "resize", "images")]
    print(" | ".join(["file", "resize"] + cols))
    for r in rows:
        print(" | ".join([r["file"], r["resize"]] + [_fmt(r[k], r["images"]) for k in cols]))
    return 0


def _keras_scores(model_path: Path, norm: str, photos, contract) -> dict[str, np.ndarray]:
    """Keras outputs on the photos prepared with each candidate resize (normalisation added when the
    model does not bake it)."""
    import keras

    from tledge.contract import Contract

    model = keras.models.load_model(model_path, compile=False)
    out = {}
    for cand in CANDIDATES:
        c = Contract(contract.height, contract.width, norm=norm, baked=False, resize=cand)
        x = np.stack([c.prepare(im) for im in photos])
        out[cand] = np.asarray(model.predict(x, batch_size=32, verbose=0), np.float32)
    return out


def _agree(a: np.ndarray, b: np.ndarray) -> int:
    return int((a.argmax(1) == b.argmax(1)).sum())


def _acc(s: np.ndarray, y) -> int | None:
    return None if y is None else int((s.argmax(1) == np.asarray(y)).sum())


def _fmt(v, n) -> str:
    return "-" if v is None else f"{v}/{n} ({v / n:.3f})"


def _machine() -> str:
    import os

    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor())
    try:
        import mediapipe
        mp_version = mediapipe.__version__
    except Exception:  # noqa: BLE001
        mp_version = "?"
    return (f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}; mediapipe {mp_version}; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


if __name__ == "__main__":
    sys.exit(main())
