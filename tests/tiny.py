"""The committed tiny export (tests/assets/tiny, made by `python -m tests.assets.make`): what runtime tests
use instead of models converted with TensorFlow at test time, so they also run in the tledge[runtime]-only
venv (ci/runtime_venv.sh). The ground truth is the Keras model's own outputs (reference.json), not labels."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

TINY = Path(__file__).resolve().parent / "assets" / "tiny"
REF = json.loads((TINY / "reference.json").read_text())
CLASSES = tuple(REF["labels"])
IMAGES = sorted((TINY / "images").iterdir())
MODELS = ("model_fp32.tflite", "model_fp16.tflite", "model_dynamic.tflite", "model_int8.tflite",
          "model_fp32.onnx", "model_int8.onnx")
FOREIGN = TINY / "foreign"  # model_int8.tflite and model_fp32.onnx with no metadata at all


def keras_probs(images) -> np.ndarray:
    """The Keras model's probabilities on these images of tests/assets/tiny/images (paths or names)."""
    return np.array([REF["keras_probabilities"][Path(p).name] for p in images], np.float32)


def keras_label(image) -> str:
    """The Keras model's top-1 label for one image of tests/assets/tiny/images."""
    return CLASSES[int(np.argmax(REF["keras_probabilities"][Path(image).name]))]


def images_of(cls: str) -> list[Path]:
    """The images generated as class `cls` (named CLASS_FILE)."""
    return [p for p in IMAGES if p.name.startswith(cls + "_")]


def need(name: str) -> None:
    """Skip unless a backend for this model file is installed."""
    if str(name).endswith(".tflite"):
        try:
            import ai_edge_litert  # noqa: F401
        except ImportError:
            pytest.importorskip("tflite_runtime")
    else:
        pytest.importorskip("onnxruntime")


def edgetpu_stand_in(int8_file: Path) -> bytes:
    """What stands in for edgetpu_compiler's output here (no compiler): the int8 file with the Edge TPU's custom
    operator code added (unused), which is what tledge bundle checks a hand-compiled file for."""
    import flatbuffers

    from tledge._deps import tflite_schema

    s = tflite_schema()
    model = s.ModelT.InitFromPackedBuf(Path(int8_file).read_bytes(), 0)
    code = s.OperatorCodeT()
    code.customCode, code.builtinCode, code.deprecatedBuiltinCode = ("edgetpu-custom-op", s.BuiltinOperator.CUSTOM,
                                                                     s.BuiltinOperator.CUSTOM)
    model.operatorCodes.append(code)
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())
