"""Inference backends, one table looked up by name. No TensorFlow import at module level.

Each backend opens a file and exposes `inp` / `out` TensorInfo and `run(x) -> y` on arrays in
the tensor's own dtype; quantisation at the boundary is done by EdgeModel.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tledge.contract import Quant
from tledge.errors import MissingDependency, ModelLoadError, TledgeWarning


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple  # -1 / None for dynamic
    dtype: str
    quant: Quant | None = None


def default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class TFLiteBackend:
    """LiteRT (ai-edge-litert), else tflite_runtime (slow, warned), else tensorflow.lite if present."""

    format = "tflite"

    def __init__(self, path: Path, threads: int | None = None, delegates: Sequence = ()):
        Interpreter, self.provider = _tflite_interpreter_class()
        try:
            self._it = Interpreter(model_path=str(path), num_threads=threads or default_threads(),
                                   experimental_delegates=list(delegates) or None)
            self._it.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"cannot load TFLite model {path}: {exc}") from None
        self.inp = self._info(self._it.get_input_details()[0])
        self.out = self._info(self._it.get_output_details()[0])
        self._batch = self._it.get_input_details()[0]["shape"][0]

    @staticmethod
    def _info(d) -> TensorInfo:
        scale, zp = d.get("quantization", (0.0, 0))
        dtype = np.dtype(d["dtype"]).name
        quant = Quant(float(scale), int(zp), dtype) if scale and dtype in ("uint8", "int8", "int16") else None
        shape = tuple(int(v) for v in d.get("shape_signature", d["shape"]))
        return TensorInfo(d["name"], shape, dtype, quant)

    def run(self, x: np.ndarray) -> np.ndarray:
        it = self._it
        ind = it.get_input_details()[0]
        if x.shape[0] != self._batch and self.inp.shape[0] != -1:
            # a fixed-batch file (most files made elsewhere): one image at a time
            return np.concatenate([self.run(x[i:i + 1]) for i in range(x.shape[0])])
        if x.shape[0] != self._batch:
            it.resize_tensor_input(ind["index"], list(x.shape), strict=False)
            it.allocate_tensors()
            self._batch = x.shape[0]
        it.set_tensor(ind["index"], x)
        it.invoke()
        return it.get_tensor(it.get_output_details()[0]["index"])

    @property
    def interpreter(self):
        return self._it


def _tflite_interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai_edge_litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        warnings.warn("using tflite_runtime: it is 10-40x slower than ai-edge-litert for int8 models and "
                      "cannot load files made with newer op versions; pip install ai-edge-litert",
                      TledgeWarning, stacklevel=3)
        return Interpreter, "tflite_runtime"
    except ImportError:
        pass
    import sys

    if "tensorflow" in sys.modules:  # only if the caller already paid for TensorFlow
        return sys.modules["tensorflow"].lite.Interpreter, "tensorflow.lite"
    raise MissingDependency("no TFLite interpreter installed: pip install 'tledge[runtime]' (ai-edge-litert)")


class OnnxBackend:
    format = "onnx"
    DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

    def __init__(self, path: Path, threads: int | None = None, providers: Sequence | None = None):
        from tledge._deps import require

        ort = require("onnxruntime", extra="runtime")
        wanted = list(providers or self.DEFAULT_PROVIDERS)
        have = set(ort.get_available_providers())
        chosen = [p for p in wanted if (p[0] if isinstance(p, tuple) else p) in have] or ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or default_threads()
        opts.log_severity_level = 3
        try:
            self._sess = ort.InferenceSession(str(path), opts, providers=chosen)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelLoadError(f"cannot load ONNX model {path}: {exc}") from None
        self.provider = self._sess.get_providers()[0]
        i, o = self._sess.get_inputs()[0], self._sess.get_outputs()[0]
        self.inp = TensorInfo(i.name, tuple(d if isinstance(d, int) else -1 for d in i.shape), _ort_dtype(i.type))
        self.out = TensorInfo(o.name, tuple(d if isinstance(d, int) else -1 for d in o.shape), _ort_dtype(o.type))

    def run(self, x: np.ndarray) -> np.ndarray:
        return self._sess.run([self.out.name], {self.inp.name: x})[0]


def _ort_dtype(t: str) -> str:
    return {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(int8)": "int8",
            "tensor(float16)": "float16"}.get(t, t)


@dataclass(frozen=True)
class BackendSpec:
    name: str
    suffix: str
    opener: Callable


BACKENDS: dict[str, BackendSpec] = {
    "tflite": BackendSpec("tflite", ".tflite", TFLiteBackend),
    "onnx": BackendSpec("onnx", ".onnx", OnnxBackend),
}


def backend_for(path: Path) -> BackendSpec:
    for spec in BACKENDS.values():
        if path.suffix.lower() == spec.suffix:
            return spec
    raise ModelLoadError(f"unknown model file type {path.suffix!r} for {path}: expected .tflite or .onnx")
