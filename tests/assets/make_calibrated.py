"""tests/assets/calibrated: a TFLite file whose standard metadata carries score calibration (TFLite Support's
ScoreCalibrationOptions and a TENSOR_AXIS_SCORE_CALIBRATION file), written by TFLite Support's own metadata writer
onto the tiny foreign int8 file, and the TFLite Task Library's ImageClassifier scores for the tiny images: what
the client tledge follows gives, the reference tests/test_score_calibration.py checks `tledge run` against.

Run from the checkout with the project venv, naming a Python that has tflite-support 0.4.4 (Python 3.11 at most,
numpy < 2; its C++ part needs libusb-1.0, e.g. the libusb-package wheel and LD_LIBRARY_PATH):

    python -m tests.assets.make_calibrated /path/to/tflite-support-venv/bin/python
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TINY = HERE / "tiny"
OUT = HERE / "calibrated"
# per label: scale,slope,offset[,min_uncalibrated_score] (under it: the default score); the third flips vstripes
# images to hstripes (the default score over a calibrated 0.03)
LINES = ["0.9,1.0,-2.0", "1.0,0.5,1.0,0.3", "1.0,1.0,-8.0"]
TRANSFORM, DEFAULT_SCORE = "INVERSE_LOGISTIC", 0.05

WRITE_AND_CLASSIFY = r'''
import json, sys
import numpy as np
from tflite_support import metadata_schema_py_generated as S
from tflite_support.metadata_writers import image_classifier, metadata_info, writer_utils
from tflite_support.task import core, processor, vision
src, labels, calib, out, pixels, transform, default, result = sys.argv[1:]
cal = metadata_info.ScoreCalibrationMd(getattr(S.ScoreTransformationType, transform), float(default), calib)
w = image_classifier.MetadataWriter.create_for_inference(writer_utils.load_file(src), [0.0], [1.0], [labels],
                                                         score_calibration_md=cal)
writer_utils.save_file(w.populate(), out)
opts = vision.ImageClassifierOptions(base_options=core.BaseOptions(file_name=out, num_threads=1),
                                     classification_options=processor.ClassificationOptions(max_results=-1))
clf = vision.ImageClassifier.create_from_options(opts)
d = np.load(pixels)
rows = {}
for name, x in zip(d["names"], d["x"]):
    cats = clf.classify(vision.TensorImage.create_from_array(np.ascontiguousarray(x))).classifications[0].categories
    rows[str(name)] = {int(c.index): float(c.score) for c in cats}
json.dump(rows, open(result, "w"), indent=1, sort_keys=True)
'''


def main(python: str) -> None:
    from tledge.runtime import load

    OUT.mkdir(exist_ok=True)
    src = TINY / "foreign" / "model_int8.tflite"
    m = load(src)
    images = sorted((TINY / "images").iterdir())
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "labels.txt").write_text((TINY / "labels.txt").read_text())
        (t / "calibration.txt").write_text("\n".join(LINES))
        x = np.stack([m.prepare(p) for p in images])  # raw pixels (the file takes uint8: mean 0, std 1)
        assert np.array_equal(x, np.rint(x)) and x.min() >= 0 and x.max() <= 255
        np.savez(t / "pixels.npz", x=x.astype(np.uint8), names=[p.name for p in images])
        subprocess.run([python, "-c", WRITE_AND_CLASSIFY, str(src), str(t / "labels.txt"), str(t / "calibration.txt"),
                        str(OUT / "model_int8.tflite"), str(t / "pixels.npz"), TRANSFORM, str(DEFAULT_SCORE),
                        str(OUT / "task_library.json")], check=True)
    meta = json.loads((OUT / "task_library.json").read_text())
    print(f"wrote {OUT / 'model_int8.tflite'} and the Task Library's scores for {len(meta)} images")


if __name__ == "__main__":
    main(sys.argv[1])
