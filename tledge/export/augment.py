"""Keras 3 augmentation layers that write their random seed when traced, replaced by nothing for export.

RandomHue, RandomSaturation, RandomGrayscale, RandomSharpness, RandomPosterization and RandomColorDegeneration
return their input unchanged at inference (`training=False`) but still advance their seed when traced (an
AssignVariableOp in the graph): the graph did not freeze, so the model's Rescaling behind them was read as "does
not bake its preprocessing" (whose advice, --preprocess tf, normalised twice), and then every converter failed
with a TensorFlow-internal message, exit 1. The model is cloned with those layers an Identity (the other Random*
layers convert as they are; RandomCrop is no identity at inference: it crops), and the clone is kept only when it
computes the same as the model at inference.
"""
from __future__ import annotations

import numpy as np

from tledge.export.baked import walk

TRACED_STATE = frozenset({"RandomHue", "RandomSaturation", "RandomGrayscale", "RandomSharpness", "RandomPosterization",
                          "RandomColorDegeneration"})  # the kinds that write their seed when traced at inference


def _augmenting(layer) -> bool:
    return type(layer).__module__.startswith("keras.") and type(layer).__name__ in TRACED_STATE


def strip(model) -> tuple[object, str | None]:
    """(model, note): `model` with its TRACED_STATE layers replaced by Identity, else the model as is."""
    found = sorted({type(layer).__name__ for layer in walk(model) if _augmenting(layer)})
    if not found:
        return model, None
    import keras

    def clone(layer):
        if _augmenting(layer):
            return keras.layers.Identity(name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    try:
        copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
        copy.set_weights(model.get_weights())
        shape = (2,) + tuple(int(d or 32) for d in model.inputs[0].shape[1:])
        x = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
        diff = float(np.max(np.abs(np.asarray(model(x, training=False)) - np.asarray(copy(x, training=False)))))
    except Exception as exc:  # noqa: BLE001 - the model converts as it is (and fails there, saying why)
        return model, f"augmentation layers ({', '.join(found)}) could not be taken out ({type(exc).__name__})"
    if not diff <= 1e-5:
        return model, f"augmentation layers ({', '.join(found)}) kept: the model without them differs by {diff:.3g}"
    return copy, f"augmentation layers taken out (they do nothing at inference): {', '.join(found)}"
