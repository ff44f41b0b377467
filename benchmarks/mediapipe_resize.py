"""MediaPipe Tasks ImageClassifier against the tledge runtime on raw photos (any size): how far apart do
their resizes put them? Needs `mediapipe` (its own venv: see docs/tflite-metadata.md).

    python benchmarks/mediapipe_resize.py EXPORT/model_fp32.tflite hymenoptera_data/val [--json]

Prints, for each OpenCV interpolation tledge could use (stretch to the input size), the top-1 agreement
with MediaPipe and the mean absolute difference of the scores, and MediaPipe's agreement with tledge's
default when MediaPipe is given photos tledge already resized (its own resize then does nothing).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

INTERPOLATIONS = ("INTER_AREA", "INTER_LINEAR", "INTER_NEAREST", "INTER_CUBIC", "INTER_LANCZOS4")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path)
    p.add_argument("images", type=Path, help="a folder of class folders")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision
    except ImportError:
        print("mediapipe is not installed here: run this in a venv with mediapipe", file=sys.stderr)
        return 2
    import cv2

    from tledge.images import labelled_images
    from tledge.images import load as load_image
    from tledge.runtime import load

    files, y, _ = labelled_images(args.images)
    model = load(args.model)
    h, w = model.contract.height, model.contract.width
    photos = [np.ascontiguousarray(load_image(f)) for f in files]
    opts = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(args.model)), max_results=-1)
    with vision.ImageClassifier.create_from_options(opts) as clf:
        def scores(rgb):
            cats = clf.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)).classifications[0].categories
            out = np.zeros(len(cats), np.float32)
            for c in cats:
                out[c.index] = c.score
            return out
        theirs = np.stack([scores(im) for im in photos])
        pre = np.stack([scores(np.ascontiguousarray(model.contract.geometry(im))) for im in photos])
    default = np.stack([model.scores(model.run_inputs(model.to_input(im)[None]))[0] for im in photos])
    result = {"model": args.model.name, "images": len(files), "mediapipe_accuracy": _acc(theirs, y),
              "tledge_default_accuracy": _acc(default, y),
              "mediapipe_given_tledge_resized_photos_top1_agreement": _agree(pre, default), "interpolations": {}}
    for name in INTERPOLATIONS:
        ours = np.stack([model.scores(model.predict(model.contract.prepare(cv2.resize(
            im, (w, h), interpolation=getattr(cv2, name)))[None]))[0] for im in photos])
        result["interpolations"][name] = {"top1_agreement": _agree(ours, theirs), "accuracy": _acc(ours, y),
                                          "mean_abs_score_diff": round(float(np.abs(ours - theirs).mean()), 4)}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{result['model']} on {result['images']} photos: MediaPipe accuracy {result['mediapipe_accuracy']}, "
              f"tledge {result['tledge_default_accuracy']}; MediaPipe on photos tledge resized: top-1 agreement "
              f"{result['mediapipe_given_tledge_resized_photos_top1_agreement']}")
        print(f"{'tledge resize':<16} {'agree':>6} {'acc':>6} {'|d score|':>9}")
        for name, r in result["interpolations"].items():
            print(f"{name:<16} {r['top1_agreement']:>6} {r['accuracy']:>6} {r['mean_abs_score_diff']:>9}")
    return 0


def _agree(a: np.ndarray, b: np.ndarray) -> float:
    return round(float((a.argmax(1) == b.argmax(1)).mean()), 4)


def _acc(s: np.ndarray, y) -> float | None:
    return None if y is None else round(float((s.argmax(1) == np.asarray(y)).mean()), 4)


if __name__ == "__main__":
    sys.exit(main())
