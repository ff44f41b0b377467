"""int8 quantisation techniques that work on the converted graph, whatever loaded the model.

Each technique is one module; `TECHNIQUES` names them for the fidelity loop and the benchmarks.
The Keras-level repairs of issue 7 still live in tledge/export (repair, selective, explain, cle, qat).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Technique:
    name: str
    module: str  # tledge.quant.<module>
    formats: tuple[str, ...]
    int8_only_safe: bool  # keeps every op int8 (Edge TPU and other int8-only targets)
    summary: str


TECHNIQUES = {
    "onnx-bias": Technique("onnx-bias", "onnx_bias", ("onnx",), True,
                           "empirical bias correction on the float ONNX graph: every Conv/MatMul bias absorbs "
                           "the mean output shift its int8 version shows on the calibration images"),
}
