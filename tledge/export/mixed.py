"""Sensitivity-driven mixed precision for the int8 fidelity loop (issue 11): the export side.

tledge.quant.sensitivity measures and chooses on the float ONNX graph of the model a rung converts
(the repaired Keras model, or the export's own fp32 ONNX graph when there is no Keras 3 model); this
module gives it that graph and the export's quantiser, caches the choice per source (both formats of
one rung share it), and states the result for the file's contract and parity.md. TFLite without a
Keras 3 model (SavedModels): the export's traced function is calibrated (fidelity) and the ops around
the chosen activations denylisted (`tflite_keep`, by the layer names both graphs carry).
"""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from tledge.artifacts import filename_of
from tledge.export import onnx as onnx_export

AIM = 0.995  # expected top-1 agreement on the held-out calibration split (the target: 0.99)
BUDGET = {"max_float_macs": 0.2, "max_layers": 8}  # float cost cap; 40 % / 12 measured: no better (docs)


def scheme(ctx):
    """The plain int8 ONNX file's scheme (what the rung's file will use), U8S8 without one."""
    plain = ctx.out / filename_of("onnx", "int8")
    return onnx_export.scheme_of(plain) if plain.is_file() else onnx_export.SCHEMES[onnx_export.DEFAULT_SCHEME]


def selection(model, ctx, shared, stem: int = 0, ranges: str = "minmax"):
    """The chosen layers for this source model (cached: both formats of a rung use one choice); a
    float stem of `stem` convolutions stays float in the measured graph too, whose activation grids have the
    rung's `ranges` (tledge.quant.ranges). `shared`: the loop's tledge.export.rungs.Shared (its float ONNX graphs
    are reused, its `mixed` table keeps the choice)."""
    from tledge.quant import selective, sensitivity

    key = ("sensitivity", id(model))
    if key not in shared.mixed:
        conv = onnx_export.Conventions.of(ctx.contract)
        with tempfile.TemporaryDirectory(prefix="tledge-mixed-") as tmp:
            src = Path(tmp) / "fp32.onnx"
            src.write_bytes(shared.onnx_float(model, None if model is None else stem, ranges))
            raw = src.read_bytes()
            exclude = selective.with_activations(raw, selective.onnx_stem(raw, stem)) if stem else ()
            quantize = functools.partial(onnx_export.quantize_int8, scheme=scheme(ctx), nodes_to_exclude=exclude,
                                         act_ranges=ranges)
            original = None  # the target: the original model, not the repaired one: the fp32 ONNX file's graph, or
            # the traced function converted once where the export wrote none (`--formats tflite`: it measured
            # against the repaired model)
            if model is not None:
                original = Path(tmp) / "original.onnx"
                original.write_bytes(shared.onnx_float(None, None))
            shared.mixed[key] = sensitivity.select(src, quantize, conv.calib(ctx.calib), workdir=Path(tmp), aim=AIM,
                                                   reference=original, stop=shared.stop,
                                                   independent=ctx.contract.independent, **BUDGET)
    return shared.mixed[key]


def float_weights(cache, stem: int, sel, ranges: str = "minmax"):
    """(the weight repair run with the layers around the chosen activations kept float, as the TFLite file runs
    them: original weights there, and every later layer fitted to that; the linear layers on original weights).
    Putting original weights back after the repair (the earlier way) undid the repair's compensation downstream:
    EfficientNetB0 seed 1 453 flips of 1300 against 90 this way (docs/int8-fidelity.md)."""
    from tledge.quant import floatweights, repair

    repaired = cache.repaired_model(stem, tuple(sel.layers), ranges)  # (folded and flat: float_set reads it as is)
    kept = floatweights.float_set(repaired, sel.layers)
    return repaired, [n for n in kept if repair.linear_kind(repaired.get_layer(n))]


def tflite_keep(calibrated: bytes, layers) -> tuple[list[str], list[str]]:
    """(denylist for the calibrated TFLite model, chosen layers not found in it)."""
    from tledge.quant import selective, sensitivity

    ops = selective.tflite_graph(calibrated)
    missing = [name for name in layers if not sensitivity.tflite_keep_float(ops, [name])]
    return sensitivity.tflite_keep_float(ops, layers), missing


def contract_extra(sel, kind: str) -> dict:
    """What the file's contract records: every candidate layer's final precision."""
    high = "float" if kind == "tflite" else "int16 or float activations (float op on int8 weights)"
    return {"float_layers": list(sel.layers), "layer_precision": sel.precision(high),
            "sensitivity": sel.summary()}


def left_int8(applied: dict, names) -> None:
    """The chosen layers the TFLite graph does not have stay int8, and the file's contract says so (it listed them
    as float layers while the note said "left int8")."""
    if not names:
        return
    applied["float_layers"] = [n for n in applied.get("float_layers", []) if n not in names]
    if "layer_precision" in applied:
        applied["layer_precision"] = {k: "int8" if k in names else v for k, v in applied["layer_precision"].items()}


def note(file: str, sel, kind: str, unmatched: list[str]) -> str:
    how = "kept float (denylisted ops)" if kind == "tflite" else \
        "int16 activations (TensorQuantOverrides), float where an int8-weight Conv writes or reads them"
    text = f"{file}: {sel.summary()}; in the file: {how}"
    if unmatched:
        text += f"; not found in the TFLite graph (left int8): {', '.join(unmatched)}"
    return text
