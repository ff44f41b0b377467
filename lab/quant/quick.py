"""Whole-model int8 conversions and a model runner for experiments, benchmarks and tests (moved out of
tledge.quant.selective: the product converts through tledge.export and runs through tledge.runtime, with more
than these do: the pixel-grid plan, the scheme, range overrides, its own input and output names)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from tledge._deps import require
from tledge.errors import ExportError
from tledge.io import shape_inference_scratch
from tledge.paths import loadable
from tledge.quant.selective import (CalibrationReader, calibrate_tflite, quantize_tflite, tflite_converter,
                                    with_activations)


def tflite_int8(model, calib, *, keep_float: Sequence[str] = (), io: str = "uint8") -> bytes:
    """Full-integer int8 TFLite (TFLiteConverter defaults: per-channel symmetric weights)."""
    if not keep_float:
        return tflite_converter(model, calib, io=io).convert()
    return quantize_tflite(calibrate_tflite(model, calib), keep_float=keep_float, io=io)


def onnx_float(model, *, opset: int = 17) -> bytes:
    """tf2onnx export of a Keras model (input named as the Keras input, output 'probabilities')."""
    tf2onnx = require("tf2onnx", purpose="ONNX export")
    tf = require("tensorflow")
    name = model.inputs[0].name
    fn = tf.function(lambda x: {"probabilities": model(x, training=False)})
    spec = (tf.TensorSpec([None] + list(model.inputs[0].shape[1:]), tf.float32, name=name),)
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=opset)
    return proto.SerializeToString()


def onnx_int8(float_onnx: bytes, calib, *, exclude: Sequence[str] = (), per_channel: bool = True,
              float_softmax: bool = True) -> bytes:
    """onnxruntime quantize_static: QDQ, per-channel QInt8 weights, QUInt8 activations, MinMax.
    `exclude`: node names kept float (their Relu/Clip are kept float with them); the final Softmax
    stays float by default, as tledge.export.onnx does."""
    ort = require("onnxruntime", purpose="ONNX int8")
    q = require("onnxruntime.quantization", purpose="ONNX int8")
    with tempfile.TemporaryDirectory() as tmp:
        src, pre, dst = (Path(tmp) / n for n in ("f.onnx", "p.onnx", "q.onnx"))
        src.write_bytes(float_onnx)
        try:
            from onnxruntime.quantization.shape_inference import quant_pre_process
            with shape_inference_scratch():  # its sym_shape_infer_temp.onnx, when it gives up, not in the user's folder
                quant_pre_process(str(src.resolve()), str(pre.resolve()))
        except Exception:  # needs sympy; pre-processing only helps fusion, it is not required
            pre = src
        name = ort.InferenceSession(loadable(pre), providers=["CPUExecutionProvider"]).get_inputs()[0].name
        import onnx

        from tledge.quant.constadds import constant_adds

        graph = onnx.load(str(pre))
        exclude = list(exclude) + constant_adds(graph)  # as tledge.export.onnx does
        if float_softmax:
            exclude += [n.name for n in graph.graph.node if n.op_type == "Softmax"]
        q.quantize_static(str(pre), str(dst), CalibrationReader(name, calib), quant_format=q.QuantFormat.QDQ,
                          per_channel=per_channel, activation_type=q.QuantType.QUInt8,
                          weight_type=q.QuantType.QInt8, nodes_to_exclude=with_activations(float_onnx, exclude),
                          calibrate_method=q.CalibrationMethod.MinMax)
        return dst.read_bytes()


# ---- running and timing -------------------------------------------------------------------------
class Runner:
    """Run a TFLite or ONNX model (bytes) on float32 pixels; returns float outputs (dequantised)."""

    def __init__(self, content: bytes, fmt: str, threads: int = 2):
        self.fmt = fmt
        if fmt == "tflite":
            from ai_edge_litert.interpreter import Interpreter

            self.it = Interpreter(model_content=content, num_threads=threads)
            self.it.allocate_tensors()
            self.inp, self.out = self.it.get_input_details()[0], self.it.get_output_details()[0]
        elif fmt == "onnx":
            ort = require("onnxruntime")
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            self.sess = ort.InferenceSession(content, opts, providers=["CPUExecutionProvider"])
            self.name = self.sess.get_inputs()[0].name
        else:
            raise ExportError(f"unknown format {fmt!r}")

    def _feed(self, x: np.ndarray) -> np.ndarray:
        d = self.inp
        if d["dtype"] == np.float32:
            return x.astype(np.float32)
        scale, zp = d["quantization"]
        info = np.iinfo(d["dtype"])
        return np.clip(np.round(x / scale + zp), info.min, info.max).astype(d["dtype"])

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self.fmt == "onnx":
            return self.sess.run(None, {self.name: x})[0]
        self.it.set_tensor(self.inp["index"], x)
        self.it.invoke()
        return self.it.get_tensor(self.out["index"])

    def one(self, x: np.ndarray) -> np.ndarray:
        if self.fmt == "onnx":
            return self._run(x.astype(np.float32))
        y = self._run(self._feed(x))
        if self.out["dtype"] != np.float32:
            scale, zp = self.out["quantization"]
            y = (y.astype(np.float32) - zp) * scale
        return y

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([self.one(x[i:i + 1]) for i in range(len(x))])

    def latency_ms(self, x: np.ndarray, runs: int = 50, warmup: int = 5) -> float:
        """Median batch-1 latency in ms over `runs` invocations."""
        from tledge.runtime.bench import time_calls

        one = x[:1].astype(np.float32) if self.fmt == "onnx" else self._feed(x[:1])
        return float(np.median(time_calls(lambda: self._run(one), runs, warmup)) * 1e3)


def compare_latency(runners: dict, x: np.ndarray, rounds: int = 5, runs: int = 40) -> dict:
    """Batch-1 latency (ms) of several runners measured interleaved, so load from other processes
    hits them alike: the best over `rounds` of the median over `runs`."""
    from tledge.runtime.bench import best_in_turns

    return best_in_turns({k: (lambda r=r: r.latency_ms(x, runs=runs, warmup=3)) for k, r in runners.items()}, rounds)
