"""Keras 3's random augmentation layers left in a model, replaced by nothing for export.

They return their input unchanged at inference (`training=False`), but RandomHue, RandomSaturation, RandomGrayscale,
RandomSharpness, RandomPosterization and RandomColorDegeneration still advance their random seed when traced (an
AssignVariableOp in the graph): the graph did not freeze, so the model's Rescaling behind them was read as "does
not bake its preprocessing" (whose advice, --preprocess tf, normalised twice), and then every converter failed
with a TensorFlow-internal message, exit 1. The model is cloned with every random augmentation layer an Identity,
and kept only when the clone computes the same as the model at inference.
"""
from __future__ import annotations

import numpy as np

from tledge.export.baked import walk

TRACED_STATE = frozenset({"RandomHue", "RandomSaturation", "RandomGrayscale", "RandomSharpness", "RandomPosterization",
                          "RandomColorDegeneration"})  # the kinds that write their seed when traced at inference
AUGMENTATION = frozenset({"RandAugment", "AugMix"})  # besides keras's Random* layers


def _augmenting(layer) -> bool:
    kind = type(layer).__name__
    return type(layer).__module__.startswith("keras.") and (kind.startswith("Random") or kind in AUGMENTATION)


def strip(model) -> tuple[object, str | None]:
    """(model, note): `model` with its random augmentation layers replaced by Identity when one of them writes its
    seed at inference (TRACED_STATE), else the model as is."""
    found = sorted({type(layer).__name__ for layer in walk(model) if _augmenting(layer)})
    if not TRACED_STATE.intersection(found):
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
