"""The int8 techniques tledge can apply, one typed entry each (what it works on, which formats, whether
it keeps every op int8). tledge/export/fidelity.py builds its ladder from these names and checks each
rung against this table; docs and `parity.md` name techniques by these keys."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Technique:
    name: str
    module: str  # tledge.quant.<module> that implements it ("" for a converter option)
    works_on: str  # "keras3" (a Keras 3 model, any loader through `rebuild`), "onnx-graph", "tflite-graph", "converter"
    formats: tuple[str, ...]  # exported file kinds it can improve
    all_int8: bool  # the result keeps every op int8 (usable for Edge TPU and other int8-only targets)
    summary: str


TECHNIQUES: dict[str, Technique] = {t.name: t for t in (
    Technique("weight-repair", "repair", "keras3", ("tflite", "onnx"), True,
              "BN folding, exact input grid, adaptive rounding + bias correction of every kernel"),
    Technique("float-layers", "selective", "converter", ("tflite", "onnx"), False,
              "chosen layers (a stem, or the most sensitive ones) stay float in the converted file"),
    Technique("onnx-bias", "onnx_bias", "onnx-graph", ("onnx",), True,
              "bias correction on the float ONNX graph for the int8 file's own weight grid"),
    Technique("tflite-bias", "tflite_bias", "tflite-graph", ("tflite",), True,
              "bias correction of the converted int8 TFLite file's int32 biases for its own int8 weights"),
    Technique("tflite-rounding", "tflite_rounding", "tflite-graph", ("tflite",), True,
              "adaptive rounding + bias correction of the converted int8 TFLite file's weights on its own int8 "
              "activations, op by op"),
    Technique("percentile-calibration", "", "converter", ("onnx",), True,
              "onnxruntime's Percentile calibration instead of MinMax"),
    Technique("sensitive-precision", "sensitivity", "onnx-graph", ("tflite", "onnx"), False,
              "activations whose rounding moves the output most (held-out calibration images) kept precise: "
              "float ops (TFLite) / int16 activations (ONNX)"),
    Technique("mse-ranges", "ranges", "keras3", ("tflite", "onnx"), True,
              "each activation's upper bound cut where its squared rounding + clipping error is least, in the "
              "repair and in the file"),
    Technique("tflite-translation", "", "converter", ("onnx",), True,
              "the ONNX file translated from the rung's int8 TFLite file (tf2onnx), so it computes the TFLite file's "
              "grids and weights; uint8 activations, the kernel-robust weight scheme"),
    Technique("kernel-robust-scheme", "saturation", "onnx-graph", ("onnx",), True,
              "U8U8 on the symmetric int8 weight grid when U8S8 would saturate on AVX2 without VNNI"),
    Technique("float-constant-adds", "constadds", "onnx-graph", ("onnx",), False,
              "Adds of a constant kept float, so every onnxruntime kernel path computes the file's QDQ arithmetic"),
    Technique("pixel-grid", "pixelgrid", "onnx-graph", ("onnx",), False,
              "the baked preprocessing kept float, the first convolution's input on a grid keeping pixel levels apart"),
)}


def check(names, kind: str, *, int8_only: bool) -> str | None:
    """Why this combination of techniques cannot apply to a `kind` file (None: it can). A str is one name (it was
    read letter by letter: "unknown technique 'w'")."""
    for name in (names,) if isinstance(names, str) else names:
        t = TECHNIQUES.get(name)
        if t is None:
            return f"unknown technique {name!r}; known: {', '.join(TECHNIQUES)}"
        if kind not in t.formats:
            return f"{name} does not apply to {kind} files"
        if int8_only and not t.all_int8:
            return f"{name} keeps ops float: not for an int8-only target"
    return None
