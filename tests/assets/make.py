"""Regenerate tests/assets/tiny/: a tiny trained classifier exported to fp32/int8 TFLite and ONNX, so
runtime tests run without TensorFlow (the runtime-only venv of ci/runtime_venv.sh).

    python -m tests.assets.make          # from the repository root, with tledge[all] installed

What it writes (about 100 KB in all): model_fp32.tflite, model_int8.tflite, model_fp32.onnx,
model_int8.onnx with the contract embedded, tledge.json, labels.txt, parity.json (the export's own
parity check against Keras), images/ (two generated val images per class, PNG) and reference.json:
the Keras model's probabilities on those images, the ground truth runtime tests compare with.
The model: tests/conftest.py's tiny conv net (48 px, tf preprocessing baked in) trained on the
generated 3-class shapes set (tledge.datasets.make_split_shapes), seed 0.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "tiny"
KEEP = ("model_fp32.tflite", "model_int8.tflite", "model_fp32.onnx", "model_int8.onnx", "tledge.json",
        "labels.txt", "parity.json", "parity.md", "manifest.json")


def main() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
    sys.path.insert(0, str(HERE.parent))
    import numpy as np
    from conftest import build_tiny_classifier, train_tiny

    from tledge.contract import Contract
    from tledge.datasets import make_split_shapes
    from tledge.export.pipeline import ExportConfig, export
    from tledge.images import labelled_images

    with tempfile.TemporaryDirectory(prefix="tledge-assets-") as tmp:
        data = make_split_shapes(Path(tmp) / "shapes")
        labels = ("circle", "hstripes", "vstripes")
        contract = Contract(48, 48, norm="tf", baked=True, input_dtype="float32", labels=labels)
        model = train_tiny(build_tiny_classifier(seed=0), data / "train", contract)
        model.save(Path(tmp) / "model.keras")
        res = export(Path(tmp) / "model.keras", ExportConfig(out=Path(tmp) / "export", int8=True,
                                                           calib=str(data / "train"), val=str(data / "val")))
        if not res.passed:
            print("the export's parity check failed: assets not written", file=sys.stderr)
            return 1
        files, y, _ = labelled_images(data / "val")
        picked = [f for c in range(len(labels)) for f in [f for f, t in zip(files, y) if t == c][:2]]
        new = Path(tmp) / "tiny"
        (new / "images").mkdir(parents=True)
        for name in KEEP:
            shutil.copy2(res.out / name, new / name)
        ref = {}
        for f in picked:
            name = f"{Path(f).parent.name}_{Path(f).name}"
            shutil.copy2(f, new / "images" / name)
            probs = model.predict(contract.prepare(f)[None].astype("float32"), verbose=0)[0]
            ref[name] = [round(float(p), 7) for p in np.asarray(probs)]
        (new / "reference.json").write_text(json.dumps(
            {"labels": list(labels), "keras_probabilities": ref,
             "made_by": "python -m tests.assets.make"}, indent=1) + "\n")
        if OUT.exists():
            shutil.rmtree(OUT)
        shutil.copytree(new, OUT)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
