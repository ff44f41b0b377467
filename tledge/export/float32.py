"""Mixed-precision Keras models (the `mixed_float16` policy of Keras's guide) rebuilt in float32 for export.

Their layers compute in float16 while their weights are float32 variables; TFLiteConverter fails on the float16
ops ("'tf.Mul' op is neither a custom op nor a flex op"), halfway through an export, and the ONNX file alone
shipped. The same architecture in float32 with the same weights converts, and is what every exported precision
is made from (tledge train rebuilds its mixed-precision models the same way before saving).
"""
from __future__ import annotations

import numpy as np

TOLERANCE = 0.05  # float16 compute against float32: outputs differ by ~1e-3; more means it is not the same model


def is_mixed(layers) -> bool:
    """Whether any of `layers` (a model's, nested ones included) computes under a mixed_* dtype policy."""
    return any(str(getattr(getattr(layer, "dtype_policy", None), "name", "")).startswith("mixed_") for layer in layers)


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
    if not diff <= TOLERANCE:
        return model, f"mixed precision model: its float32 rebuild differs by {diff:.3g}, converted as is"
    return copy, f"mixed precision model (float16 compute) rebuilt in float32 with its weights (max abs {diff:.2g})"


def _float32_policies(obj):
    if isinstance(obj, dict):
        if obj.get("class_name") in ("DTypePolicy", "Policy") and \
                str((obj.get("config") or {}).get("name", "")).startswith("mixed_"):
            return {**obj, "config": {**obj["config"], "name": "float32"}}
        return {k: _float32_policies(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_float32_policies(v) for v in obj]
    return obj
