"""The Keras 3 "pixel model" the Keras-level int8 repairs work on (tledge.quant.repair), for any loader:

- Keras 3 models: the model itself, behind the preprocessing the export adds (`ctx.add_norm`);
- tf_keras models: rebuilt as Keras 3 from their config and weights (tledge.quant.rebuild), checked equal;
- SavedModels (no Keras model at all): rebuilt from the export's float TFLite graph, its `model_fp32.tflite` or,
  where the export writes no TFLite file (`--formats onnx`), the same conversion made for the loop and written
  nowhere (`FidelityContext.float_tflite`) (tledge.quant.from_tflite: data only, a whitelist of ops), checked
  equal to that graph on calibration images. It was converted from the export's own traced function, so its
  input is the export's: float pixels with the preprocessing already inside; nothing is added in front of it.

`pixel_model_and_note(ctx)` also says what was done (for parity.md).
"""
from __future__ import annotations

import warnings

import numpy as np

from tledge._deps import require
from tledge.errors import TledgeError

TFLITE_TOLERANCE = 1e-4  # max abs difference to the float TFLite file, x max(1, max |output|)
CHECK_IMAGES = 8


def pixel_model(ctx):
    """A Keras 3 model taking float32 pixels with the preprocessing inside, or None."""
    return pixel_model_and_note(ctx)[0]


def pixel_model_and_note(ctx) -> tuple[object | None, str]:
    """(pixel model or None, a sentence for parity.md, "" when there is nothing to say)."""
    if ctx.lm.kind == "saved_model":
        return from_float_tflite(ctx)
    keras = require("keras", extra="export")
    from tledge.layers import for_contract

    inner = ctx.lm.model
    if ctx.lm.kind == "tf_keras":
        inner = _rebuilt(ctx)
    elif not ctx.lm.is_keras3:
        return None, _missing(ctx, "")
    if inner is None:
        return None, _missing(ctx, "")
    c = ctx.contract
    inp = keras.Input((c.height, c.width, c.channels), dtype="float32", name="pixels")
    x = inp
    if ctx.add_norm:
        norm = c.replace(norm=ctx.add_norm, baked=False)
        x = for_contract(norm)(x)
    y = inner(x)
    if isinstance(y, (list, tuple)):
        y = y[0]
    if ctx.lm.binary:  # the traced function's two class scores (tledge.export.binary)
        from tledge.export.binary import keras_head
        y = keras_head(keras, y, ctx.lm.binary)
    note = "the tf_keras model was rebuilt as Keras 3 for the int8 repairs (outputs checked equal)" \
        if ctx.lm.kind == "tf_keras" else ""
    return keras.Model(inp, y, name="tledge_pixels"), note


def _missing(ctx, why: str) -> str:
    return (f"Keras-level int8 repairs need a Keras 3 model ({ctx.lm.kind} given, and it could not be rebuilt as "
            f"one{why}): only graph-level repairs (onnx-bias, tflite-bias, tflite-rounding, sensitive) and "
            "calibration choices apply")


def _rebuilt(ctx):
    """A verified Keras 3 copy of a tf_keras model (tledge.quant.rebuild), or None."""
    from tledge.quant import rebuild

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        copy = rebuild.from_tf_keras(ctx.lm.model)
        shape = (4,) + tuple(int(d) for d in ctx.lm.model.inputs[0].shape[1:])
        probe = np.random.default_rng(0).uniform(-1.0, 1.0, shape).astype(np.float32)
        if copy is None or not rebuild.verified(ctx.lm.model, copy, probe):
            return None
    return copy


def from_float_tflite(ctx) -> tuple[object | None, str]:
    """The export's fp32 TFLite graph (`ctx.float_tflite()`) rebuilt as Keras 3 and checked equal to it, or
    (None, why)."""
    from tledge.quant import from_tflite

    try:
        data = ctx.float_tflite()  # the export's model_fp32.tflite, or converted for the loop (`--formats onnx`)
    except TledgeError as exc:
        return None, _missing(ctx, f": no float TFLite graph to rebuild it from ({str(exc)[:120]})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = from_tflite.build(data, name="tledge_pixels")
            diff, scale = tflite_difference(model, data, np.asarray(ctx.calib[:CHECK_IMAGES], np.float32))
    except (from_tflite.Unsupported, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        return None, _missing(ctx, f" from its float TFLite graph: {str(exc)[:120]}")
    if not diff < TFLITE_TOLERANCE * scale:
        return None, _missing(ctx, f" from its float TFLite graph: the copy differs by {diff:.3g} (max abs)")
    return model, ("the SavedModel was rebuilt as Keras 3 from its float TFLite graph for the int8 "
                   f"repairs (outputs checked equal on {min(len(ctx.calib), CHECK_IMAGES)} calibration images: "
                   f"max abs {diff:.2g})")


def tflite_difference(model, data: bytes, x: np.ndarray) -> tuple[float, float]:
    """(max abs difference between `model` and the TFLite file `data` on `x`, max(1, max |file output|))."""
    from tledge.quant.tflite_bias import interpreter

    it = interpreter(data)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    ref = []
    for img in x:
        it.set_tensor(inp["index"], img.reshape(inp["shape"]).astype(inp["dtype"]))
        it.invoke()
        ref.append(np.array(it.get_tensor(out["index"])).reshape(-1))
    ref = np.stack(ref)
    got = np.asarray(model(x, training=False)).reshape(len(x), -1)
    if got.shape != ref.shape:
        raise ValueError(f"output shape {got.shape[1:]} vs the file's {ref.shape[1:]}")
    return float(np.max(np.abs(got - ref))), max(1.0, float(np.max(np.abs(ref))))
