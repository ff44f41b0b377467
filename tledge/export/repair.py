"""Weight-side int8 repairs applied to a Keras model before conversion.

Each step is a pure function model -> new model (Keras 3 functional; the input is never changed):

- `fold`: flatten nested models, drop Dropout, fold BatchNormalization into the conv/dense before
  it. Function-preserving (checked: max abs difference is recorded in the log).
- `cle`: cross-layer equalisation (Nagel et al. 2019) of conv/depthwise pairs joined by channel-wise
  positively homogeneous ops (ReLU, ZeroPadding2D, GlobalAveragePooling2D). Through ReLU6 it is only
  function-preserving while no channel is pushed past the clip: `relu6="bound"` limits each scale
  so calibration data never crosses 6 (clipped channels keep scale 1) and records the change.
- `round` (`nearest` / `adaptive`), `bias_correction`, `refit`: one sequential pass over the
  calibration set that puts every conv/depthwise/dense kernel on the exact per-channel symmetric
  int8 grid the converters use (scale = max|w| / 127, one element per channel at +-127, so TFLite
  and onnxruntime re-derive the same scale and keep every value). `adaptive` chooses each rounding
  to minimise the layer's output error on calibration inputs (GPTQ/OBQ closed form on the input
  second moments, an AdaRound-style objective without training); `bias_correction` sets the bias
  that removes the expected output shift; `refit` first solves the float kernel that best maps the
  already-quantised inputs onto the float layer's outputs (ridge towards the original).

`apply(model, calib_pixels, steps=...) -> (new_model, RepairLog)` runs them in order. The repaired
model's float weights *are* the int8 weights: compare exported files against the original model.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from tledge._deps import require
from tledge.errors import ExportError

DEFAULT_STEPS = ("fold", "adaptive", "bias_correction")
KNOWN_STEPS = ("fold", "cle", "nearest", "adaptive", "bias_correction", "refit")
_SKIP = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "AlphaDropout")
_HOMOGENEOUS = ("ZeroPadding2D", "GlobalAveragePooling2D", "Dropout")


@dataclass
class LayerRepair:
    name: str
    kind: str
    rows: int  # input dimension of the layer's reconstruction (patch size)
    err_nearest: float  # relative output MSE on calibration with round-to-nearest weights
    err_repaired: float  # the same with the chosen weights and bias


@dataclass
class RepairLog:
    steps: tuple[str, ...]
    folded_bn: int = 0
    fold_max_abs: float | None = None  # float model after fold vs original, on calibration images
    cle_pairs: int = 0
    cle_max_abs: float | None = None  # after cle vs after fold (0 only when no clip was crossed)
    cle_clip_hits: int = 0  # calibration activations that cross a moved ReLU6 clip
    layers: list[LayerRepair] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"repair steps {','.join(self.steps)}: {self.folded_bn} BN folded "
                 f"(max abs {self.fold_max_abs}), {self.cle_pairs} CLE pairs (max abs {self.cle_max_abs}, "
                 f"clip hits {self.cle_clip_hits}), {len(self.layers)} kernels on the int8 grid, {self.seconds:.1f}s"]
        return "\n".join(lines + self.notes)


def _keras():
    return require("keras", purpose="int8 repairs")


# ---- graph rebuilding -------------------------------------------------------------------------
def _nodes(model):
    """(operation, node) of a functional model in topological order."""
    by_depth = model._nodes_by_depth
    for depth in sorted(by_depth, reverse=True):
        for node in by_depth[depth]:
            if node.operation is not None and not node.is_input:
                yield node.operation, node


def _clone(layer, weights=None, **config):
    cfg = dict(layer.get_config(), **config)
    return layer.__class__.from_config(cfg), (layer.get_weights() if weights is None else weights)


def _rebuild(model, make):
    """A flat functional copy of `model`: nested functional/Sequential models are inlined and every
    layer is replaced by `make(layer) -> (new_layer | None, weights)` (None: identity)."""
    keras = _keras()
    inputs = [keras.Input(shape=t.shape[1:], dtype=t.dtype, name=t.name) for t in model.inputs]
    pending = []

    def call(op, *args, **kwargs):
        kwargs.pop("training", None)
        inner = getattr(op, "_functional", None) if isinstance(op, keras.Sequential) else op
        if isinstance(inner, keras.Model) and hasattr(inner, "_nodes_by_depth"):
            return inner._run_through_graph(keras.tree.flatten(args), operation_fn=lambda o: o, call_fn=call)
        new, weights = make(op)
        if new is None:
            return args[0]
        out = new(*args, **kwargs)
        pending.append((new, weights))
        return out

    outputs = model._run_through_graph(inputs, operation_fn=lambda o: o, call_fn=call)
    for new, weights in pending:
        new.set_weights(weights)
    return keras.Model(inputs, outputs, name=model.name)


def flatten(model):
    """Function-preserving flat copy: nested models inlined, dropout-like layers removed."""
    return _rebuild(model, lambda op: (None, None) if type(op).__name__ in _SKIP else _clone(op))


def _producer(layer):
    return layer._inbound_nodes[0].input_tensors[0]._keras_history.operation


def _single_use(layer) -> bool:
    return len(layer._inbound_nodes) == 1 and len(layer._outbound_nodes) == 1


def _linear_kind(layer) -> str | None:
    kind = type(layer).__name__
    if kind not in ("Conv2D", "DepthwiseConv2D", "Dense"):
        return None
    if kind == "Conv2D" and layer.groups != 1:
        return None
    return kind


def _fold_weights(conv, bn):
    w = conv.get_weights()
    kernel, bias = w[0], (w[1] if len(w) > 1 else np.zeros(kernel_out(conv, w[0]), np.float32))
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
        if _linear_kind(prev) and prev.get_config().get("activation") == "linear" and _single_use(prev):
            fold[prev.name], fold[layer.name] = layer, None

    def make(op):
        if op.name in fold and fold[op.name] is None:
            return None, None
        if op.name in fold:
            return _clone(op, _fold_weights(op, fold[op.name]), use_bias=True)
        return _clone(op)

    return _rebuild(flat, make), len(fold) // 2
