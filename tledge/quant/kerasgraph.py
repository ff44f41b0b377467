"""Keras 3 functional-graph surgery for the int8 repairs: flatten nested models, rebuild with
replaced layers, fold BatchNormalization, walk nodes in order, run layers on arrays."""
from __future__ import annotations

import contextlib
import itertools

import numpy as np

from tledge._deps import require

_SKIP = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "AlphaDropout")


def keras_lib():
    return require("keras", purpose="int8 repairs")


def require_keras3(model) -> None:
    """ArgumentError for a tf_keras (Keras 2) model: the graph surgery here reads Keras 3 internals (before, the
    repair and activation_sensitivity failed with AttributeError '_run_through_graph' from `rebuild_model`)."""
    if any(c.__module__.split(".")[0] == "tf_keras" for c in type(model).__mro__):
        from tledge.errors import ArgumentError

        raise ArgumentError("a tf_keras model: rebuild it first with tledge.quant.rebuild.from_tf_keras(model) "
                            "(it returns None when a layer cannot be carried over to Keras 3)")


# ---- graph rebuilding -------------------------------------------------------------------------
def nodes(model):
    """(operation, node) of a functional model in topological order."""
    by_depth = model._nodes_by_depth
    for depth in sorted(by_depth, reverse=True):
        for node in by_depth[depth]:
            if node.operation is not None and not node.is_input:
                yield node.operation, node


def operations(model) -> dict:
    """name -> operation of a functional model: its layers and its bare ops (`x + 3.0`), which
    `model.layers` does not list."""
    return {op.name: op for op, _ in nodes(model)}


def use_counts(order) -> dict[int, int]:
    """id(tensor) -> how many of the (operation, node) pairs in `order` read it (for freeing
    activations once their last reader has run)."""
    uses: dict[int, int] = {}
    for _, node in order:
        for t in node.input_tensors:
            uses[id(t)] = uses.get(id(t), 0) + 1
    return uses


def clone_layer(layer, weights=None, **config):
    cfg = dict(layer.get_config(), **config)
    try:
        return layer.__class__.from_config(cfg), (layer.get_weights() if weights is None else weights)
    except ValueError:  # a Lambda (safe mode refuses its code): loaded with --unsafe, its function is live here
        if layer.weights or config:
            raise
        return layer, []  # weightless: calling the same layer again in the copy is correct


def copy_operation(op):
    """A fresh copy of a weightless keras op node (keras.ops.Add & co.), so the rebuilt model does not
    add nodes to the original's operations; the op itself where it cannot be serialised."""
    try:
        return op.__class__.from_config(op.get_config())
    except Exception:  # noqa: BLE001 - stateless: sharing it is correct, only less tidy
        return op


def rebuild_model(model, make):
    """A flat functional copy of `model`: nested functional/Sequential models are inlined and every
    layer is replaced by `make(layer) -> (new_layer | None, weights)` (None: identity)."""
    require_keras3(model)
    keras = keras_lib()
    inputs = [keras.Input(shape=t.shape[1:], dtype=t.dtype, name=t.name) for t in model.inputs]
    pending = []

    def call(op, *args, **kwargs):
        kwargs.pop("training", None)
        inner = getattr(op, "_functional", None) if isinstance(op, keras.Sequential) else op
        if isinstance(inner, keras.Model) and hasattr(inner, "_nodes_by_depth"):
            return inner._run_through_graph(keras.tree.flatten(args), operation_fn=lambda o: o, call_fn=call)
        if not isinstance(op, keras.layers.Layer):  # a bare op (`x + 3.0` in MobileNetV3): no weights
            return copy_operation(op)(*args, **kwargs)
        new, weights = make(op)
        if new is None:
            return args[0]
        out = new(*args, **kwargs)
        pending.append((new, weights))
        return out

    outputs = model._run_through_graph(inputs, operation_fn=lambda o: o, call_fn=call)
    for new, weights in pending:
        new.set_weights(weights)
        finalize = getattr(new, "finalize_state", None)  # Normalization & co. snapshot their weights at
        if callable(finalize):  # build: set_weights alone leaves the clone computing with the initial ones
            finalize()
    return keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs, name=model.name)


def flatten(model):
    """Function-preserving flat copy: nested models inlined, dropout-like layers removed."""
    return rebuild_model(model, lambda op: (None, None) if type(op).__name__ in _SKIP else clone_layer(op))


def _producer(layer):
    return layer._inbound_nodes[0].input_tensors[0]._keras_history.operation


def single_use(layer) -> bool:
    return len(layer._inbound_nodes) == 1 and len(layer._outbound_nodes) == 1


def linear_kind(layer) -> str | None:
    kind = type(layer).__name__
    if kind not in ("Conv2D", "DepthwiseConv2D", "Dense"):
        return None
    if kind == "Conv2D" and layer.groups != 1:
        return None
    return kind


def _fold_weights(conv, bn):
    w = conv.get_weights()
    kernel = w[0]
    bias = w[1] if len(w) > 1 else np.zeros(kernel_out(conv, kernel), np.float32)
    gamma = bn.gamma.numpy() if bn.gamma is not None else 1.0
    beta = bn.beta.numpy() if bn.beta is not None else 0.0
    scale = gamma / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    shift = beta - bn.moving_mean.numpy() * scale
    if type(conv).__name__ == "DepthwiseConv2D":
        kernel = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
    else:
        kernel = kernel * scale
    return [kernel.astype(np.float32), (bias * scale + shift).astype(np.float32)]


def kernel_out(layer, kernel) -> int:
    return kernel.shape[2] * kernel.shape[3] if type(layer).__name__ == "DepthwiseConv2D" else kernel.shape[-1]


def fold_bn(model):
    """Flatten, drop dropout and fold every BatchNormalization that directly follows a single-use
    linear conv/depthwise/dense into it. Returns (new_model, number folded)."""
    flat = flatten(model)
    fold = {}
    for layer in flat.layers:
        if type(layer).__name__ != "BatchNormalization" or layer.axis not in (-1, len(layer.input.shape) - 1):
            continue
        prev = _producer(layer)
        if linear_kind(prev) and prev.get_config().get("activation") == "linear" and single_use(prev):
            fold[prev.name], fold[layer.name] = layer, None

    def make(op):
        if op.name in fold and fold[op.name] is None:
            return None, None
        if op.name in fold:
            return clone_layer(op, _fold_weights(op, fold[op.name]), use_bias=True)
        return clone_layer(op)

    return rebuild_model(flat, make), len(fold) // 2


def _inference_kwargs(layer, kwargs) -> dict:
    kwargs = dict(kwargs or {})
    kwargs.pop("training", None)
    if isinstance(layer, keras_lib().layers.Layer):  # inference: a RandomFlip called alone defaults to training=True
        kwargs["training"] = False
    return kwargs


def _batches(layer, args, kwargs, batch):
    """The layer's outputs on consecutive slices of `batch` images (tensors, untouched)."""
    n = len(next(iter(flat_model(args))))
    map_structure = keras_lib().tree.map_structure
    for i in range(0, n, batch):
        yield layer(*map_structure(lambda a: a[i:i + batch] if is_array(a) else a, args), **kwargs)


def apply_layer(layer, args, kwargs=None, batch=32):
    """Call `layer` on arrays (any nesting, e.g. Add's list) in batches; returns one array."""
    # np.asarray: a view of each output tensor's buffer (keras' convert_to_numpy copies it first)
    return np.concatenate([np.asarray(o) for o in _batches(layer, args, _inference_kwargs(layer, kwargs), batch)])


CALL_BYTES = 1 << 25  # input bytes per layer call of `call_layer` (32 MB: batches of ~32 photos at 224 px)
KEEP_BYTES = 1 << 27  # activations up to this size stay backend tensors; larger ones go to numpy


def nbytes(a) -> int:
    """Bytes of a numpy array or a backend tensor."""
    return int(np.prod(a.shape)) * np.dtype(keras_lib().backend.standardize_dtype(a.dtype)).itemsize


def call_layer(layer, args, kwargs=None, max_bytes: int | None = None, keep_bytes: int | None = None):
    """`apply_layer` for a pass that keeps activations (tledge.quant.repair), with fewer copies: outputs up to
    `keep_bytes` (KEEP_BYTES) are returned as the backend's tensors, which the next layer takes without a copy and
    `np.asarray` reads in place (numpy -> tensor -> numpy copies and concatenations were ~40 % of MobileNetV2's
    repair pass); larger ones are written batch by batch into one numpy array. Why not keep those as tensors
    too: TensorFlow's CPU allocator never returns memory to the system, so whole large activations held there
    raised a MobileNetV2 export's peak from 8.6 to 12 GB for the rest of the export. Batches: `max_bytes`
    (CALL_BYTES) of input per call. Read results with np.asarray (read-only)."""
    kwargs = _inference_kwargs(layer, kwargs)
    arrays = list(flat_model(args))
    n = len(arrays[0])
    per_image = max(nbytes(a) // max(len(a), 1) for a in arrays)
    batch = max(1, (CALL_BYTES if max_bytes is None else max_bytes) // max(per_image, 1))
    keep = KEEP_BYTES if keep_bytes is None else keep_bytes
    if batch >= n:
        out = layer(*args, **kwargs)
        return out if nbytes(out) <= keep else np.array(out)  # (the copy frees the backend's buffer)
    parts = _batches(layer, args, kwargs, batch)
    first = next(parts)
    if nbytes(first) * -(-n // batch) <= keep:
        return keras_lib().ops.concatenate([first, *parts], axis=0)
    out = np.empty((n, *first.shape[1:]), np.asarray(first).dtype)
    i = 0
    for part in itertools.chain([first], parts):
        out[i:i + len(part)] = np.asarray(part)
        i += len(part)
    return out


@contextlib.contextmanager
def activation_off(layer):
    """Within the block, a conv / dense `layer` returns its output before its own activation (Keras calls
    `layer.activation` when it is not None)."""
    act, layer.activation = layer.activation, None
    try:
        yield layer
    finally:
        layer.activation = act


def is_array(a) -> bool:
    """A numpy array or a backend tensor (an activation a pass stores), not a constant argument."""
    return isinstance(a, np.ndarray) or keras_lib().ops.is_tensor(a)


def flat_model(args):
    for a in args:
        if isinstance(a, (list, tuple)):
            yield from flat_model(a)
        elif is_array(a):
            yield a


def predict(model, x, batch=32):
    keras = keras_lib()
    return np.concatenate([keras.ops.convert_to_numpy(model(x[i:i + batch], training=False))
                           for i in range(0, len(x), batch)])


HOMOGENEOUS = ("ZeroPadding2D", "GlobalAveragePooling2D", "Dropout")


def clip_of(layer) -> float | None | bool:
    """For a channel-wise positively homogeneous op: its clip value (6.0 for ReLU6), None for no
    clip; False when the op is not one we can equalise through."""
    kind = type(layer).__name__
    if kind in HOMOGENEOUS:
        return None
    if kind == "ReLU" and not layer.negative_slope and not layer.threshold:
        return None if layer.max_value is None else float(layer.max_value)
    if kind == "Activation":
        name = getattr(layer.activation, "__name__", str(layer.activation))
        return {"relu": None, "relu6": 6.0, "linear": None}.get(name, False)
    return False
