"""The normalisation a model bakes in, read from its layers (tledge's Preprocess layer, Rescaling / Normalization at
the input) or from its traced graph (a SavedModel's, or a Keras model's whose layers show none: tf.keras 2's
preprocess_input as TensorFlow calls)."""
from __future__ import annotations


def baked_mode(model) -> str | None:
    """The mode of the model's baked preprocessing: tledge's built-in `tledge_preprocess` layer (or the
    older `Preprocess` layer), recognised from its config and weights (tledge.layers.baked_norm)."""
    if not hasattr(model, "layers"):
        return None
    from tledge.layers import baked_norm, input_rescaling

    for layer in walk(model):
        found = baked_norm(layer)
        if found is not None:
            return found[0]
    return input_rescaling(model)  # a plain Rescaling at the input (Keras 3 code, tf.keras 2's preprocess_input)


def graph_mode(fn, channels: int) -> tuple[str | None, str | None]:
    """(mode, unread): a SavedModel's baked normalisation when its graph starts with a named mode's map (it has no
    layers to read: a Rescaling inside was not seen, and --preprocess tf normalised its input twice), and why its
    input arithmetic cannot be read, when it cannot (then say so, not "does not bake")."""
    from tledge.export.graphprep import Unread, input_affine
    from tledge.layers import affine_mode

    found = input_affine(fn, channels)
    if isinstance(found, Unread):
        return None, str(found)
    return (affine_mode(found[0], found[1], channels, flip=found[2]) if found is not None else None), None


def walk(model):
    for layer in getattr(model, "layers", []):
        yield layer
        if hasattr(layer, "layers"):
            yield from walk(layer)
