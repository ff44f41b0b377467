"""Mixed-precision Keras models (the `mixed_float16` policy of Keras's guide) rebuilt in float32 for export.

Their layers compute in float16 while their weights are float32 variables; TFLiteConverter fails on the float16
ops ("'tf.Mul' op is neither a custom op nor a flex op"), halfway through an export, and the ONNX file alone
shipped. The same architecture in float32 with the same weights converts, and is what every exported precision
is made from (tledge train rebuilds its mixed-precision models the same way before saving).
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np

TOLERANCE = 0.05  # float16 compute against float32: outputs differ by ~1e-3; more means it is not the same model
BFLOAT16_TOLERANCE = 0.25  # bfloat16 keeps 8 bits of mantissa: a MobileNet 0.25's softmax moved 0.08 (JAX's policy)


@contextmanager
def policy():
    """Keras's global dtype policy float32 for an export, the caller's back after: under a caller's mixed_float16
    a float32 model loaded as mixed (a false "rebuilt in float32" note) and models built for repairs computed in
    float16."""
    from tledge._deps import require, swapped

    keras = require("keras", extra="export")  # (KERAS_BACKEND=jax: the one line, not a traceback)
    with swapped(keras.mixed_precision.global_policy, keras.mixed_precision.set_global_policy, "float32"):
        yield


HALF = ("float16", "bfloat16")  # plain half-precision policies: a model built under set_dtype_policy("float16"), or a
# float16 last layer, failed TFLite's converter as mixed_float16 ones did (and its fp32 ONNX file computed in float16)


def _half(name: str) -> bool:
    return name.startswith("mixed_") or name in HALF


def is_mixed(layers) -> bool:
    """Whether any of `layers` (a model's, nested ones included) computes in half precision: a mixed_* dtype policy,
    or a plain float16 / bfloat16 one."""
    return any(_half(str(getattr(getattr(layer, "dtype_policy", None), "name", ""))) for layer in layers)


def quantized(layers) -> str | None:
    """Why a model is no float model to export, or None: layers Keras's `model.quantize()` made int8/int4/float8 (every
    repair rung failed "a tledge bug: please report it", and the TFLite converters on their int8 kernels)."""
    done = sorted({str(m) for m in (getattr(layer, "quantization_mode", None) for layer in layers) if m})
    if not done:
        return None
    return (f"it is already quantised ({', '.join(done)}, by Keras's model.quantize()): tledge quantises a float model "
            "itself; export the model before model.quantize()")


def rebuild(model, tf_keras=None):
    """(model, note): the mixed-precision `model` in float32 when the rebuild computes the same, else as is with the
    reason. `tf_keras`: that module, for a model it loaded (a tf.keras 2 file only it reads)."""
    import keras

    try:
        if tf_keras is not None:  # Keras 2's config: {"dtype": {"class_name": "Policy", ...}} in each layer
            copy = model.__class__.from_config(_float32_policies(model.get_config()))
        else:
            config = _float32_policies(keras.saving.serialize_keras_object(model))
            copy = keras.saving.deserialize_keras_object(config, safe_mode=True)
        copy.set_weights(model.get_weights())
        shape = (2,) + tuple(int(d or 32) for d in model.inputs[0].shape[1:])
        x = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
        diff = float(np.max(np.abs(np.asarray(model(x), np.float32) - np.asarray(copy(x), np.float32))))
    except Exception as exc:  # noqa: BLE001 - a model this cannot rebuild converts as it is (or fails there)
        return model, f"mixed precision model: a float32 rebuild failed ({exc.__class__.__name__}), converted as is"
    bf16 = any("bfloat16" in str(getattr(getattr(layer, "dtype_policy", None), "name", "")) for layer in _layers(model))
    if not diff <= (BFLOAT16_TOLERANCE if bf16 else TOLERANCE):
        return model, f"mixed precision model: its float32 rebuild differs by {diff:.3g}, converted as is"
    return copy, (f"mixed precision model ({'bfloat16' if bf16 else 'float16'} compute) rebuilt in float32 with its "
                  f"weights (max abs {diff:.2g})")


def _float32_policies(obj):
    if isinstance(obj, dict):
        if obj.get("class_name") in ("DTypePolicy", "Policy") and _half(str((obj.get("config") or {}).get("name", ""))):
            return {**obj, "config": {**obj["config"], "name": "float32"}}
        return {k: _float32_policies(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_float32_policies(v) for v in obj]
    return obj


def _layers(model):
    for layer in getattr(model, "layers", []):
        yield layer
        yield from _layers(layer)


def signature_in_float32(fn, output_index: int):
    """(function, note) for a SavedModel signature that computes in float16 (a mixed-precision model saved as a
    SavedModel, whose Keras layers are gone): frozen, every float16 tensor, attribute and constant made float32,
    re-imported, pruned to its image input and output number `output_index` (of fn.outputs). (None, None) when fn
    has no float16; (None, reason) when the rewrite fails. The caller compares outputs (TOLERANCE)."""
    try:
        import tensorflow as tf
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        graph = fn.graph.as_graph_def()
        nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
        half = tf.float16.as_datatype_enum
        if not any(a.type == half or half in a.list.type for n in nodes for a in n.attr.values()):
            return None, None  # (a graph freezing cannot read, e.g. a pruning wrapper's, is no mixed precision)
        frozen = convert_variables_to_constants_v2(fn)
        graph = frozen.graph.as_graph_def()
        if not _halves_to_float(tf, graph):
            return None, None
        inputs = [t.name for t in frozen.inputs]
        out = frozen.outputs[output_index].name
        wrapped = tf.compat.v1.wrap_function(lambda: tf.graph_util.import_graph_def(graph, name=""), [])
        return wrapped.prune(inputs[0], out), None
    except Exception as exc:  # noqa: BLE001 - converted as it is (and fails there, as before)
        return None, f"mixed precision SavedModel: a float32 rewrite failed ({exc.__class__.__name__}), converted as is"


def _halves_to_float(tf, graph) -> bool:
    """Every DT_HALF of `graph` (a GraphDef) made DT_FLOAT in place; whether there was any."""
    half, single = tf.float16.as_datatype_enum, tf.float32.as_datatype_enum
    found = False
    for node in graph.node:
        for attr in node.attr.values():
            if attr.type == half:
                attr.type, found = single, True
            if half in attr.list.type:
                attr.list.type[:] = [single if t == half else t for t in attr.list.type]
                found = True
            if attr.HasField("tensor") and attr.tensor.dtype == half:
                value = tf.make_ndarray(attr.tensor).astype(np.float32)
                attr.tensor.CopyFrom(tf.make_tensor_proto(value, dtype=tf.float32, shape=value.shape))
                found = True
    return found


def saved_model_call(call, spec, output_index: int):
    """(call, note): a SavedModel's `call(x)` (tledge.export.loader) in float32 when its signature computes in float16
    and the float32 rewrite computes the same (TOLERANCE), else `call` as is with the reason (None: nothing to do)."""
    import tensorflow as tf

    pruned, note = signature_in_float32(call.signature, output_index)
    if pruned is None:
        return call, note
    dtype = tf.float32 if spec.dtype == tf.float16 else spec.dtype

    def f32(x, training=False):
        return pruned(tf.cast(x, dtype))
    f32.signature, f32.output_name = call.signature, getattr(call, "output_name", None)
    shape = (2,) + tuple(int(d or 224) for d in spec.shape[1:3]) + (int(spec.shape[3] or 3),)
    x = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
    try:
        diff = float(np.max(np.abs(np.asarray(call(x), np.float32) - np.asarray(f32(x), np.float32))))
    except Exception as exc:  # noqa: BLE001
        return call, f"mixed precision SavedModel: its float32 rewrite does not run ({exc.__class__.__name__}), " \
                     "converted as is"
    if not diff <= TOLERANCE:
        return call, f"mixed precision SavedModel: its float32 rewrite differs by {diff:.3g}, converted as is"
    return f32, f"mixed precision SavedModel (float16 compute) rewritten in float32 (max abs {diff:.2g})"
