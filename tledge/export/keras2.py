"""Keras 2 era `.h5` files loaded as Keras 3 models, in safe mode.

Keras 3 refuses many full-model `.h5` files written by Keras 2 (Teachable Machine's, keras.applications
of the TF 2.x years) over spellings, not substance: the `groups` kwarg every Keras 2 DepthwiseConv2D
carries, `tf_keras` module paths, `Model` for `Functional`, `batch_input_shape` on the first layer of a
nested Sequential, one-element `axis` lists, RNN `time_major`. `translate()` rewrites the parsed
`model_config` (a dict: never text) into what Keras 3 reads; `load_translated()` writes it with the
weights into a temporary `.h5` and loads that with `keras.saving.load_model(safe_mode=True)`, whose
own legacy reader assigns the weights in the file's order. A setting with no Keras 3 equivalent (a
DepthwiseConv2D with groups=2) is not translated: the caller falls back to tf_keras.
"""
from __future__ import annotations

import copy
import math
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tledge._deps import require

# (class name, kwarg) -> the values with which Keras 3 behaves the same without the kwarg;
# None in the tuple: any value (settings that only matter while training: initialisers, regularisers)
DROPPED_KWARGS: dict[tuple[str, str], tuple | None] = {
    ("DepthwiseConv2D", "groups"): (1,),
    ("DepthwiseConv1D", "groups"): (1,),
    ("SeparableConv1D", "groups"): (1,),
    ("SeparableConv2D", "groups"): (1,),
    ("SeparableConv2D", "kernel_initializer"): None,
    ("SeparableConv2D", "kernel_regularizer"): None,
    ("SeparableConv2D", "kernel_constraint"): None,
    ("SeparableConv1D", "kernel_initializer"): None,
    ("SeparableConv1D", "kernel_regularizer"): None,
    ("SeparableConv1D", "kernel_constraint"): None,
    ("Conv1DTranspose", "groups"): (1,),
    ("Conv2DTranspose", "groups"): (1,),
    ("Conv3DTranspose", "groups"): (1,),
    ("LSTM", "time_major"): (False,),
    ("GRU", "time_major"): (False,),
    ("SimpleRNN", "time_major"): (False,),
    ("SpatialDropout1D", "trainable"): None,
    ("SpatialDropout2D", "trainable"): None,
    ("SpatialDropout3D", "trainable"): None,
    # tf.keras 2.12+ augmentation layers (the transfer-learning tutorial's data_augmentation): the training-time
    # random generator; at inference these layers pass the image through
    **{(cls, "rng_type"): None for cls in ("RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation",
                                             "RandomContrast", "RandomCrop", "RandomHeight", "RandomWidth",
                                             "RandomBrightness")},
}
CLASS_RENAMES = {"Model": "Functional"}  # Keras <= 2.3 wrote nested functional models as "Model"
MODEL_CLASSES = frozenset({"Functional", "Sequential", "Model"})
WRAPPER_KEYS = frozenset({"layer", "forward_layer", "backward_layer", "cell"})  # deserialised one by one
_KERAS_PACKAGES = ("keras", "tf_keras", "tensorflow")
# tf_keras TFOpLambda functions that are arithmetic with one constant, as tf.keras 2 wrote preprocessing
# inside a model (`preprocess_input` of MobileNetV2 in TensorFlow's transfer-learning tutorial: x / 127.5 - 1):
# function -> (scale, offset) of the Keras 3 Rescaling that computes x op y. Nothing else is translated.
ARITHMETIC: dict[str, Any] = {
    "math.truediv": lambda y: (1.0 / y, 0.0),
    "math.divide": lambda y: (1.0 / y, 0.0),
    "math.multiply": lambda y: (y, 0.0),
    "math.subtract": lambda y: (1.0, -y),
    "math.add": lambda y: (1.0, y),
    "__operators__.add": lambda y: (1.0, y),
}


@dataclass
class Translation:
    config: dict
    changes: list[str] = field(default_factory=list)  # what was rewritten, counted by kind
    blockers: list[str] = field(default_factory=list)  # settings Keras 3 cannot express

    @property
    def ok(self) -> bool:
        return not self.blockers


def translate(config: dict) -> Translation:
    """The Keras 3 spelling of a parsed Keras 2 `model_config` (the input is left untouched)."""
    t = Translation(copy.deepcopy(config))
    counts: dict[str, int] = {}
    _object(t.config, "top", t, counts)
    _slash_names(t, counts)
    t.changes = [f"{what} x{n}" if n > 1 else what for what, n in sorted(counts.items())]
    return t


def _count(counts: dict[str, int], what: str) -> None:
    counts[what] = counts.get(what, 0) + 1


def _object(node: Any, position: str, t: Translation, counts: dict[str, int]) -> None:
    """Rewrite one node in place; `position` is how Keras 3 will deserialise it."""
    if isinstance(node, list):
        for item in node:
            _object(item, position, t, counts)
        return
    if not isinstance(node, dict):
        return
    if isinstance(node.get("class_name"), str) and isinstance(node.get("config"), dict):
        _layer(node, position, t, counts)
    for key, value in node.items():
        if key == "layers":
            _object(value, "layers", t, counts)
        elif key in WRAPPER_KEYS:
            _object(value, "wrapped", t, counts)
        elif isinstance(value, (dict, list)):
            _object(value, "other", t, counts)


def _layer(node: dict, position: str, t: Translation, counts: dict[str, int]) -> None:
    cls = node["class_name"]
    if cls in CLASS_RENAMES:
        node["class_name"] = cls = CLASS_RENAMES[cls]
        _count(counts, f"class {cls}")
    module = node.get("module")
    keras_module = isinstance(module, str) and module.split(".", 1)[0] in _KERAS_PACKAGES
    if position in ("top", "layers") and keras_module:
        # Sequential / Functional read module-less entries with Keras' legacy reader (Keras 2 names)
        node.pop("module")
        node.pop("registered_name", None)
        _count(counts, "Keras 2 module path")
    elif position == "wrapped" and (module is None or keras_module) and cls not in MODEL_CLASSES:
        if module != "keras.layers":
            node["module"], node["registered_name"] = "keras.layers", None
            _count(counts, "wrapped layer module")
    if position in ("top", "layers", "wrapped"):
        _kwargs(cls, node["config"], t, counts)


def _kwargs(cls: str, cfg: dict, t: Translation, counts: dict[str, int]) -> None:
    for (owner, kwarg), harmless in DROPPED_KWARGS.items():
        if owner == cls and kwarg in cfg:
            value = cfg.pop(kwarg)
            if harmless is not None and value not in harmless:
                t.blockers.append(f"{cls} {cfg.get('name', '')} has {kwarg}={value!r}")
            _count(counts, f"{cls}.{kwarg} dropped")
    shape = cfg.pop("batch_input_shape", None)
    if shape is not None:
        if cls == "InputLayer":
            cfg["batch_shape"] = shape
        elif isinstance(shape, list) and shape:
            cfg["input_shape"] = shape[1:]
        _count(counts, "batch_input_shape")
    policy = cfg.get("dtype")  # tf.keras 2's mixed precision: {"class_name": "Policy", "config": {"name": ...}}
    if isinstance(policy, dict) and policy.get("class_name") == "Policy" and isinstance(policy.get("config"), dict):
        cfg["dtype"] = {"module": "keras", "class_name": "DTypePolicy", "config": dict(policy["config"]),
                        "registered_name": None}  # Keras 3's (loaded, then rebuilt in float32: export.float32)
        _count(counts, "dtype Policy")
    axis = cfg.get("axis")
    if isinstance(axis, list) and len(axis) == 1 and isinstance(axis[0], int):
        cfg["axis"] = axis[0]
        _count(counts, "axis list")
    if cls in ("Functional", "Model"):
        _caffe_ops(cfg, counts)
        _arithmetic_ops(cfg, counts)  # before the call indices: it rewrites the nodes into the usual form
        _nested_model_calls(cfg, counts)
        for key in ("input_layers", "output_layers"):
            ends = cfg.get(key)
            if isinstance(ends, list) and len(ends) == 1 and _is_end(ends[0]):
                cfg[key] = ends[0]  # one input / output: a tensor, not a list of one
                _count(counts, f"single {key}")


def _arithmetic_ops(cfg: dict, counts: dict[str, int]) -> None:
    """TFOpLambda layers computing `x op constant` (ARITHMETIC) become Rescaling layers: read as data, so a
    file whose only TensorFlow functions are these loads in safe mode. Any other TFOpLambda is left as it is
    (the config walk refuses it without --unsafe)."""
    layers = cfg.get("layers")
    for i, layer in enumerate(layers if isinstance(layers, list) else []):
        new = (_as_rescaling(layer) or _bias_as_rescaling(layer)) \
            if isinstance(layer, dict) and layer.get("class_name") == "TFOpLambda" else None
        if new is not None:
            layers[i] = new
            _count(counts, "TFOpLambda arithmetic as Rescaling")


def reads_as_data(layer: dict) -> bool:
    """An arithmetic TFOpLambda (`x / 127.5`, `x - 1`) the translation turns into a Rescaling layer, or one half of
    caffe's `preprocess_input` (a channel flip, a bias_add of numbers): tf_keras calls a whitelisted TensorFlow
    function with numbers from the file; the config walk lets its class through (and still walks what it holds)."""
    return (layer.get("class_name") == "TFOpLambda" and _as_rescaling(layer) is not None) or \
        _call(layer, "SlicingOpLambda", "__operators__.getitem", _is_flip) is not None or \
        _call(layer, "TFOpLambda", "nn.bias_add", _bias) is not None


# caffe's preprocess_input (ResNet50, VGG16/19) inside a tf.keras 2 model: x[..., ::-1], then tf.nn.bias_add(x, -mean)
CAFFE_BIAS = (-103.939, -116.779, -123.68)
_FLIP = [{"class_name": "__ellipsis__"}, {"start": None, "stop": None, "step": -1}]


def _is_flip(kwargs: dict) -> bool:
    return set(kwargs) <= {"slice_spec", "name"} and kwargs.get("slice_spec") == _FLIP


def _bias(kwargs: dict) -> bool:
    bias = kwargs.get("bias")
    return set(kwargs) <= {"bias", "data_format", "name"} and kwargs.get("data_format", "NHWC") in ("NHWC", None) \
        and isinstance(bias, list) and 1 <= len(bias) <= 4 \
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bias)


def _call(layer: dict, cls: str, function: str, check) -> list | None:
    """The one inbound ref [layer, node, tensor, kwargs] of a `cls` layer calling `function` whose kwargs pass
    `check`, else None."""
    cfg, nodes = layer.get("config"), layer.get("inbound_nodes")
    if layer.get("class_name") != cls or not isinstance(cfg, dict) or cfg.get("function") != function \
            or not isinstance(nodes, list) or len(nodes) != 1:
        return None
    node = nodes[0]
    if not (isinstance(node, list) and len(node) == 4 and isinstance(node[0], str) and isinstance(node[3], dict)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in node[1:3])):
        return None
    return node if check(node[3]) else None


def _caffe_ops(cfg: dict, counts: dict[str, int]) -> None:
    """A channel flip whose one consumer adds caffe's means (`preprocess_input` of ResNet50 / VGG in a tf.keras 2
    model) becomes tledge's Preprocess("caffe") and an identity Rescaling: Keras 3 loads it in safe mode and the
    export reads the model's baked preprocessing from it. Any other flip or bias_add is left to tf_keras."""
    layers = [x for x in cfg.get("layers") or [] if isinstance(x, dict)] if isinstance(cfg.get("layers"), list) else []
    flips = {x.get("name"): (x, ref) for x in layers
             if (ref := _call(x, "SlicingOpLambda", "__operators__.getitem", _is_flip)) is not None}
    for layer in layers:
        ref = _call(layer, "TFOpLambda", "nn.bias_add", _bias)
        if ref is None or ref[0] not in flips or ref[1:3] != [0, 0] or len(ref[3]["bias"]) != 3 or \
                not all(abs(a - b) < 1e-3 for a, b in zip(ref[3]["bias"], CAFFE_BIAS)):
            continue
        flip, src = flips[ref[0]]
        if sum(_feeds(x, ref[0]) for x in layers) != 1:
            continue
        dtype = flip["config"].get("dtype", "float32")
        flip.clear()
        flip.update({"class_name": "Preprocess", "name": ref[0],
                     "config": {"name": ref[0], "dtype": dtype, "trainable": False, "mode": "caffe", "channels": 3},
                     "inbound_nodes": [[[src[0], src[1], src[2], {}]]]})
        name = layer["config"].get("name")
        layer.clear()
        layer.update({"class_name": "Rescaling", "name": name,
                      "config": {"name": name, "dtype": dtype, "trainable": False, "scale": 1.0, "offset": 0.0},
                      "inbound_nodes": [[[ref[0], 0, 0, {}]]]})
        _count(counts, "caffe preprocess_input as Preprocess")


def _feeds(layer: dict, name: str) -> int:
    """How many of `layer`'s inbound refs ([layer, node, tensor, kwargs]) name `name`."""
    def refs(x):
        if isinstance(x, list) and len(x) >= 3 and isinstance(x[0], str) and isinstance(x[1], int):
            yield x
        elif isinstance(x, list):
            for item in x:
                yield from refs(item)
    return sum(1 for ref in refs(layer.get("inbound_nodes")) if ref[0] == name)


def _as_rescaling(layer: dict) -> dict | None:
    cfg, nodes = layer.get("config"), layer.get("inbound_nodes")
    if not isinstance(cfg, dict) or cfg.get("function") not in ARITHMETIC or not isinstance(nodes, list) \
            or len(nodes) != 1:
        return None
    node = nodes[0]  # tf_keras writes a TFOpLambda's call as one ref: [layer, node index, tensor index, kwargs]
    if not (isinstance(node, list) and len(node) == 4 and isinstance(node[0], str) and isinstance(node[3], dict)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in node[1:3])):
        return None
    kwargs = node[3]
    y = kwargs.get("y")
    values = y if isinstance(y, list) and 1 <= len(y) <= 4 else [y]  # a list: per channel (torch's mean and std)
    if set(kwargs) - {"y", "name"} or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              and math.isfinite(v) for v in values) \
            or (0 in values and cfg["function"] in ("math.truediv", "math.divide")):
        return None
    pairs = [ARITHMETIC[cfg["function"]](float(v)) for v in values]
    scale, offset = (pairs[0] if not isinstance(y, list) else ([p[0] for p in pairs], [p[1] for p in pairs]))
    name = cfg.get("name")
    return {"class_name": "Rescaling", "name": layer.get("name", name),
            "config": {"name": name, "dtype": cfg.get("dtype", "float32"), "trainable": False,
                       "scale": scale, "offset": offset},
            "inbound_nodes": [[[node[0], node[1], node[2], {}]]]}


def _bias_as_rescaling(layer: dict) -> dict | None:
    """`tf.nn.bias_add(x, numbers)` (torch's preprocess_input subtracts the means so) as a Rescaling with offsets."""
    ref = _call(layer, "TFOpLambda", "nn.bias_add", _bias)
    if ref is None:
        return None
    cfg = layer["config"]
    name, bias = cfg.get("name"), [float(v) for v in ref[3]["bias"]]
    return {"class_name": "Rescaling", "name": layer.get("name", name),
            "config": {"name": name, "dtype": cfg.get("dtype", "float32"), "trainable": False, "scale": 1.0,
                       "offset": bias if len(bias) > 1 else bias[0]},
            "inbound_nodes": [[[ref[0], ref[1], ref[2], {}]]]}


def _nested_model_calls(cfg: dict, counts: dict[str, int]) -> None:
    """Keras 2 gives a nested model a node of its own when it is built (node 0), so the outer graph's
    first call of it is node 1; Keras 3 has no such node and numbers that call 0. Left as written,
    Keras 3 waits for a node that never comes ("the graph has loops or disconnected nodes")."""
    layers = cfg.get("layers")
    if not isinstance(layers, list):
        return
    nested = {layer.get("config", {}).get("name") for layer in layers if isinstance(layer, dict)
              and layer.get("class_name") in MODEL_CLASSES}
    refs = [ref for layer in layers if isinstance(layer, dict) for node in layer.get("inbound_nodes") or []
            if isinstance(node, list) for ref in node]
    refs += [end for key in ("input_layers", "output_layers") for end in cfg.get(key) or [] if _is_end(end)]
    for ref in refs:
        if isinstance(ref, list) and len(ref) >= 3 and ref[0] in nested and isinstance(ref[1], int) and ref[1] >= 1:
            ref[1] -= 1
            _count(counts, "nested model call index")


def _slash_names(t: Translation, counts: dict[str, int]) -> None:
    """Keras 3 refuses layer names with '/' (tf_keras' MobileNetV3: "Conv/BatchNorm"): each becomes '_'
    in the layer's names and in every reference to it (inbound nodes, input / output layers). Weights
    are read in the file's layer order, not by name. A renamed name that another layer already has is
    a blocker (the caller falls back to tf_keras)."""
    layers = list(_layer_nodes(t.config))
    names = {n["config"]["name"] for n in layers if isinstance(n["config"].get("name"), str)}
    renamed = {name: name.replace("/", "_") for name in names if "/" in name}
    if not renamed:
        return
    if set(renamed.values()) & names or len(set(renamed.values())) != len(renamed):
        t.blockers.append("layer names with '/' collide with other names once '/' is replaced")
        return
    for node in layers:
        for holder in (node["config"], node):
            if holder.get("name") in renamed:
                holder["name"] = renamed[holder["name"]]
        for call in node.get("inbound_nodes") or []:
            refs = [call] if isinstance(call, list) and call and isinstance(call[0], str) else call
            for ref in refs if isinstance(refs, list) else []:
                if isinstance(ref, list) and ref and ref[0] in renamed:
                    ref[0] = renamed[ref[0]]
        for key in ("input_layers", "output_layers"):
            ends = node["config"].get(key)
            for end in ([ends] if _is_end(ends) else ends if isinstance(ends, list) else []):
                if _is_end(end) and end[0] in renamed:
                    end[0] = renamed[end[0]]
    counts[f"'/' in layer names x{len(renamed)}"] = 1


# layer classes of other TensorFlow libraries that no loader here knows, and what to do instead
FOREIGN_CLASSES = {
    "KerasLayer": "a TensorFlow Hub layer: save the model as a SavedModel (model.save(folder) or "
                  "tf.saved_model.save) and export the folder",
    "QuantizeWrapper": "a quantization-aware-trained model (tfmot): export its SavedModel (model.save(folder)); "
                       "its int8 file keeps the trained ranges",
    "QuantizeWrapperV2": "a quantization-aware-trained model (tfmot): export its SavedModel (model.save(folder)); "
                         "its int8 file keeps the trained ranges",
    "QuantizeLayer": "a quantization-aware-trained model (tfmot): export its SavedModel (model.save(folder))",
    "PruneLowMagnitude": "a pruning model (tfmot) still wrapped: tfmot.sparsity.keras.strip_pruning(model) before "
                         "saving it",
}


def foreign_hint(config: Any) -> str | None:
    """What to do with a config holding FOREIGN_CLASSES layers (read from the parsed config), or None."""
    found = sorted({n["class_name"] for n in _layer_nodes(config)} & set(FOREIGN_CLASSES))
    return "; ".join(f"{name} is {FOREIGN_CLASSES[name]}" for name in found) or None


def _layer_nodes(node: Any):
    """Every layer-like dict ({class_name, config: {...}}) of a parsed config, depth first."""
    if isinstance(node, list):
        for item in node:
            yield from _layer_nodes(item)
    elif isinstance(node, dict):
        if isinstance(node.get("class_name"), str) and isinstance(node.get("config"), dict):
            yield node
        for value in node.values():
            yield from _layer_nodes(value)


def _is_end(x: Any) -> bool:
    return isinstance(x, list) and len(x) == 3 and isinstance(x[0], str)


def load_translated(path: str | Path, translation: Translation, custom_objects: dict, *, unsafe: bool):
    """A Keras 3 model from the translated config and the weights of the .h5 at `path`."""
    import json

    h5py = require("h5py", extra="export")
    keras = require("keras", extra="export")
    with tempfile.TemporaryDirectory(prefix="tledge-keras2-") as tmp:
        dst = Path(tmp) / "translated.h5"
        with h5py.File(path, "r") as src, h5py.File(dst, "w") as out:
            if not isinstance(src.get("model_weights", getlink=True), h5py.HardLink):
                raise ValueError("no model_weights group in the file (or a link to another file)")
            for key in ("keras_version", "backend"):
                if key in src.attrs:
                    out.attrs[key] = src.attrs[key]
            out.attrs["model_config"] = json.dumps(translation.config)
            src.copy(src["model_weights"], out, "model_weights")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras 3's notes on legacy spellings it reads anyway
            return keras.saving.load_model(dst, custom_objects=custom_objects, compile=False, safe_mode=not unsafe)
