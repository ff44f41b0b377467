"""The Keras 3 model the int8 weight repairs work on (tledge.export.fidelity): the loaded model with the export's
preprocessing in front, a tf_keras model rebuilt as Keras 3 first (tledge.quant.rebuild, checked equal)."""
from __future__ import annotations

import warnings

import numpy as np

from tledge._deps import require


def pixel_model(ctx):
    """A Keras 3 model taking float32 pixels with the preprocessing inside, or None (ctx: a
    tledge.export.fidelity.FidelityContext)."""
    keras = require("keras", extra="export")
    from tledge.layers import for_contract

    inner = ctx.lm.model
    if ctx.lm.kind == "tf_keras":
        inner = rebuilt(ctx.lm.model)
    elif not ctx.lm.is_keras3:
        return None
    if inner is None:
        return None
    c = ctx.contract
    inp = keras.Input((c.height, c.width, c.channels), dtype="float32", name="pixels")
    x = inp
    if ctx.add_norm:
        norm = c.replace(norm=ctx.add_norm, baked=False)
        x = for_contract(norm)(x)
    y = inner(x)
    if isinstance(y, (list, tuple)):
        y = y[0]
    return keras.Model(inp, y, name="tledge_pixels")


def rebuilt(tf_keras_model):
    """A verified Keras 3 copy of a tf_keras model (tledge.quant.rebuild), or None."""
    from tledge.quant import rebuild

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        copy = rebuild.from_tf_keras(tf_keras_model)
        shape = (4,) + tuple(int(d) for d in tf_keras_model.inputs[0].shape[1:])
        probe = np.random.default_rng(0).uniform(-1.0, 1.0, shape).astype(np.float32)
        if copy is None or not rebuild.verified(tf_keras_model, copy, probe):
            return None
    return copy
