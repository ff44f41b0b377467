"""The per-layer diagnosis of an int8 export's plain files (tledge.quant.explain), as the markdown the report
carries: for `--explain`, or when the int8 fidelity loop (tledge.export.fidelity) could not deliver."""
from __future__ import annotations

import warnings

from tledge.artifacts import filename_of


def explain(ctx, model, plain_onnx: bytes | None, concrete) -> str:
    """Per-layer error tables of the plain int8 files: TFLite QuantizationDebugger, and onnxruntime's
    QDQ debugging when an int8 ONNX file is there (before any repair replaces it)."""
    from tledge.quant import explain

    n = min(32, len(ctx.calib))
    parts = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            source = model if model is not None else concrete()
            rows = explain.tflite_layer_errors(source, ctx.calib, debug_images=n)
        parts.append("Plain int8 TFLite, per layer (`rmse/scale` is the layer's own error in int8 steps; ~0.3 "
                     "is the rounding floor, well above 1 means the layer loses information):\n\n"
                     + explain.markdown(rows, top=12))
    except Exception as exc:  # diagnosis must never break an export
        parts.append(f"(TFLite per-layer diagnosis unavailable: {exc.__class__.__name__}: {str(exc)[:200]})")
    fp32 = ctx.out / filename_of("onnx", "fp32")
    if fp32.is_file() and plain_onnx is not None:
        try:
            from tledge.export.onnx import Conventions, float_input

            rows = explain.onnx_layer_errors(float_input(fp32.read_bytes()), float_input(plain_onnx),
                                             Conventions.of(ctx.contract).calib(ctx.calib), debug_images=n)
            parts.append("Plain int8 ONNX, per activation (SQNR in dB of the QDQ model against the float "
                         "model, accumulated; lowest first):\n\n" + explain.markdown(rows, top=12))
        except Exception as exc:
            parts.append(f"(ONNX per-activation diagnosis unavailable: {exc.__class__.__name__}: {str(exc)[:200]})")
    return "\n\n".join(parts) + "\n"
