"""Regenerate tests/assets/tiny/: a tiny trained classifier exported to fp32/int8 TFLite and ONNX, so
runtime tests run without TensorFlow (the runtime-only venv of ci/runtime_venv.sh).

    python -m tests.assets.make          # from the repository root, with tledge[all] installed

What it writes (about 330 KB in all): the export folder as `tledge export --int8 --fp16 --dynamic` writes
it (model_fp32/int8/fp16/dynamic.tflite with the contract and the standard TFLite metadata, a serving_default
signature and batch 1; model_fp32/int8.onnx; tledge.json, labels.txt, parity.json, parity.md, golden.npz,
manifest.json), foreign/ (model_int8.tflite and model_fp32.onnx with no metadata at all: files "made
elsewhere"; fixed_batch4.tflite, the model with a fixed batch of 4), images/ (every generated val image,
8 per class, named CLASS_FILE) and reference.json: the Keras model's probabilities on those images, the
ground truth runtime tests compare with (tests/tiny.py reads it). Training and conversion are seeded but
the converters' bytes may differ between runs: regenerate only when the export format changes.
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
KEEP = ("model_fp32.tflite", "model_int8.tflite", "model_fp16.tflite", "model_dynamic.tflite", "model_fp32.onnx",
        "model_int8.onnx", "tledge.json", "labels.txt", "parity.json", "parity.md", "golden.npz", "manifest.json")


def write_foreign(export_dir: Path, out: Path, keras_model) -> None:
    """model_int8.tflite and model_fp32.onnx as a converter alone writes them: every metadata entry
    (tledge's contract, labels, the standard TFLite metadata and its packed labels.txt) left out; and
    fixed_batch4.tflite: the Keras model re-wrapped with a fixed batch of 4, converted with no metadata."""
    import flatbuffers
    import keras
    import onnx
    import tensorflow as tf
    from ai_edge_litert import schema_py_generated as schema

    out.mkdir()
    data = (export_dir / "model_int8.tflite").read_bytes()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
    for md in model.metadata or []:
        if md.name.decode() in ("tledge_contract", "labels", "TFLITE_METADATA"):
            model.buffers[md.buffer] = schema.BufferT()  # emptied: the index stays valid
    model.metadata = [md for md in model.metadata or []
                      if md.name.decode() not in ("tledge_contract", "labels", "TFLITE_METADATA")]
    builder = flatbuffers.Builder(len(data))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    (out / "model_int8.tflite").write_bytes(bytes(builder.Output()))
    m = onnx.load(str(export_dir / "model_fp32.onnx"))
    del m.metadata_props[:]
    m.producer_name, m.producer_version = "tf2onnx", "1.17.0"  # as tf2onnx writes it: tledge's producer name with no
    onnx.save(m, str(out / "model_fp32.onnx"))  # contract is a stripped tledge file, said so (tledge.runtime.foreign)
    inp = keras.Input((48, 48, 3), batch_size=4)
    fixed = keras.Model(inp, keras_model(inp))
    (out / "fixed_batch4.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(fixed).convert())


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
        res = export(Path(tmp) / "model.keras", ExportConfig(out=Path(tmp) / "export", int8=True, fp16=True,
                                                           dynamic=True, calib=str(data / "train"),
                                                           val=str(data / "val")))
        if not res.passed:
            print("the export's parity check failed: assets not written", file=sys.stderr)
            return 1
        files, _, _ = labelled_images(data / "val")
        new = Path(tmp) / "tiny"
        (new / "images").mkdir(parents=True)
        for name in KEEP:
            shutil.copy2(res.out / name, new / name)
        write_foreign(res.out, new / "foreign", model)
        ref = {}
        for f in files:
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
