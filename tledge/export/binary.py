"""One-output binary classifiers (`Dense(1, activation="sigmoid")`, or the logit of TensorFlow's transfer-learning
tutorial, `Dense(1)` trained with `from_logits=True`) exported as two class scores.

With one output every argmax is 0: parity would report agreement 1.000 for any int8 file, accuracy would be the
share of the first class, and MediaPipe's classifier would show one category. So the export appends
[1 - p, p] (p = the sigmoid output, or sigmoid(logit)): p is the probability of the second label (class folders
sorted by name, as Keras' `image_dataset_from_directory` numbers them), every file has two outputs that sum to
one, and the contract says probabilities. The same head goes into the traced function (every converter, the
parity reference, `tledge parity`) and into the Keras model the int8 repairs work on.
"""
from __future__ import annotations

SIGMOID, LOGIT = "sigmoid", "logit"


def output_kind(model) -> str:
    """SIGMOID when the model's last computation is a sigmoid (a layer's activation, an Activation layer, a
    SavedModel's Sigmoid op), else LOGIT. Read from configs and graphs only."""
    layers = getattr(model, "layers", None)
    if layers:
        last = layers[-1]
        if getattr(last, "layers", None) and type(last).__name__ in ("Sequential", "Functional", "Model"):
            return output_kind(last)
        cfg = last.get_config() if hasattr(last, "get_config") else {}
        return SIGMOID if cfg.get("activation") == "sigmoid" else LOGIT
    return _graph_kind(model)


def _graph_kind(fn) -> str:
    """A SavedModel signature: the op that produces its output, through Identity ops."""
    try:
        op = fn.outputs[0].op
        while op.type in ("Identity", "IdentityN") and op.inputs:
            op = op.inputs[0].op
        return SIGMOID if op.type == "Sigmoid" else LOGIT
    except (AttributeError, IndexError, TypeError):
        return LOGIT


def tf_head(tf, y, kind: str):
    """[1 - p, p] as TensorFlow ops (the traced function)."""
    p = tf.sigmoid(y) if kind == LOGIT else y
    return tf.concat([1.0 - p, p], axis=-1)


def keras_head(keras, y, kind: str):
    """The same head as Keras 3 layers (the repairs' pixel model)."""
    p = keras.layers.Activation("sigmoid", name="tledge_binary_sigmoid")(y) if kind == LOGIT else y
    q = keras.layers.Rescaling(-1.0, offset=1.0, name="tledge_binary_complement")(p)
    return keras.layers.Concatenate(axis=-1, name="tledge_binary_scores")([q, p])


def note(kind: str) -> str:
    what = "a sigmoid probability" if kind == SIGMOID else "a logit (no sigmoid in the model)"
    return (f"the model has one output, {what}: the files give two class scores [1 - p, p], p = "
            f"{'the output' if kind == SIGMOID else 'sigmoid(output)'} = the probability of the second label")
