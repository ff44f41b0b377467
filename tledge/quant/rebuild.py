"""A Keras 3 copy of a tf_keras (Keras 2) functional model, so the Keras-level int8 repairs apply to
models that load only through tf_keras (issue 11, cause 1).

Built from data only: each layer's class name and get_config(), the graph from the model's config
(`inbound_nodes`), weights copied layer by layer. Nested functional models are rebuilt recursively.
The copy is checked against the original on real inputs by the caller (`verified`); anything this
cannot express (custom or Lambda layers, shared layers, multi-output inner nodes) returns None.
"""
from __future__ import annotations

import numpy as np

from tledge._deps import require

FUNCTIONAL = ("Functional", "Model")


class Unsupported(Exception):
    pass


def from_tf_keras(model):
    """A keras.Model equal to the tf_keras `model`, or None when a layer cannot be carried over."""
    keras = require("keras", extra="export")
    try:
        return _functional(model, keras)
    except (Unsupported, ValueError, TypeError, KeyError, IndexError) as exc:
        del exc
        return None


def _functional(model, keras):
    if type(model).__name__ == "Sequential":
        return _sequential(model, keras)
    cfg = model.get_config()
    by_name = {layer.name: layer for layer in model.layers}
    tensors: dict[tuple[str, int], object] = {}  # (layer, tensor index): each layer has one node here
    inputs = []
    for entry in cfg["layers"]:
        name, cls = entry["config"]["name"], entry["class_name"]
        if cls == "InputLayer":
            shape = entry["config"].get("batch_input_shape") or entry["config"].get("batch_shape")
            t = keras.Input(shape=tuple(shape[1:]), dtype=entry["config"].get("dtype", "float32"), name=name)
            tensors[(name, 0)] = t
            inputs.append(t)
            continue
        layer = _layer(by_name[name], cls, entry["config"], keras)
        nodes = entry.get("inbound_nodes") or []
        if len(nodes) != 1:
            raise Unsupported(f"{name}: shared or unconnected layer")
        args = [tensors[(src, idx)] for src, _node, idx, *_ in _node_inputs(nodes[0])]
        out = layer(args[0] if len(args) == 1 else args)
        if isinstance(out, (list, tuple)):
            raise Unsupported(f"{name}: several outputs")
        tensors[(name, 0)] = out
    outputs = [tensors[(n, j)] for n, _i, j in _refs(cfg["output_layers"])]
    if len(inputs) != 1 or len(outputs) != 1:
        raise Unsupported("one input and one output only")
    return keras.Model(inputs[0], outputs[0], name=model.name)


def _sequential(model, keras):
    inp = keras.Input(shape=tuple(model.inputs[0].shape[1:]), dtype="float32")
    x = inp
    for layer in model.layers:
        x = _layer(layer, type(layer).__name__, layer.get_config(), keras)(x)
    return keras.Model(inp, x, name=model.name)


def _node_inputs(node):
    """A Keras 2 inbound node: [[name, node_index, tensor_index, kwargs], ...]."""
    if isinstance(node, dict):  # a Keras 3 style node slipped in: not expected from tf_keras
        raise Unsupported("unexpected node format")
    for item in node:
        if item[3]:  # call kwargs (e.g. training=False) are dropped; refuse anything else
            if set(item[3]) - {"training"}:
                raise Unsupported(f"call arguments {sorted(item[3])}")
    return node


def _refs(items):
    if items and isinstance(items[0], str):
        items = [items]
    return [(n, i, j) for n, i, j in items]


def _layer(src, cls: str, config: dict, keras):
    if cls in FUNCTIONAL + ("Sequential",):
        return _functional(src, keras)
    if cls in ("Lambda", "TFOpLambda", "SlicingOpLambda") or not hasattr(keras.layers, cls):
        raise Unsupported(f"layer class {cls}")
    # initialisers, regularisers and constraints do not matter for a copy whose weights are set
    # (and rng_type, tf_keras 2.13's augmentation generator kind, only while training)
    config = {k: v for k, v in config.items() if k not in ("batch_input_shape", "trainable", "rng_type")
              and not k.endswith(("_initializer", "_regularizer", "_constraint"))}
    if isinstance(config.get("name"), str):  # Keras 3 refuses '/' (tf_keras' MobileNetV3: "Conv/BatchNorm")
        config["name"] = config["name"].replace("/", "_")
    if isinstance(config.get("axis"), list) and len(config["axis"]) == 1 and cls == "BatchNormalization":
        config["axis"] = config["axis"][0]
    import inspect

    klass = getattr(keras.layers, cls)
    known = set(inspect.signature(klass.__init__).parameters) | {"name", "dtype"}
    dropped = {k: v for k, v in config.items() if k not in known}
    if any(v not in (None, 1, False, (), []) for k, v in dropped.items()):  # e.g. Keras 2's groups=1
        raise Unsupported(f"{cls}: options Keras 3 does not have: {sorted(dropped)}")
    return _Weighted(klass.from_config({k: v for k, v in config.items() if k in known}), src)


class _Weighted:
    """Calls the Keras 3 layer, then copies the tf_keras layer's weights into it."""

    def __init__(self, layer, src):
        self.layer, self.src = layer, src

    def __call__(self, x):
        out = self.layer(x)
        weights = self.src.get_weights()
        if len(weights) != len(self.layer.get_weights()):
            raise Unsupported(f"{self.src.name}: {len(weights)} weights vs {len(self.layer.get_weights())}")
        if weights:
            self.layer.set_weights(weights)
        return out


def verified(original, rebuilt, x: np.ndarray, tol: float = 1e-4) -> bool:
    """The rebuilt model gives the original's outputs on `x` (max abs difference below `tol`)."""
    a = np.asarray(original(x, training=False))
    b = np.asarray(rebuilt(x, training=False))
    return a.shape == b.shape and float(np.max(np.abs(a - b))) < tol
