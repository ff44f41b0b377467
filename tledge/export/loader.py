"""Loading a Keras model for export: `.keras`, `.h5` (Keras 3, or Keras 2 era via tf_keras) or a
SavedModel folder, in safe mode, traced once into a function that takes raw pixels.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tledge._deps import require
from tledge.contract import Contract, Norm
from tledge.errors import ContractError, ModelLoadError

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"
_UNSAFE_LAYERS = {"Lambda", "TFOpLambda"}


@dataclass
class LoadedModel:
    """A model ready to trace: `model` is callable on normalised (or raw, if baked) input."""

    path: Path
    model: Any  # keras.Model (Keras 3 or tf_keras) or a SavedModel signature
    kind: str  # "keras", "tf_keras" or "saved_model"
    input_hw: tuple[int, int] | None
    channels: int
    baked_mode: str | None  # preprocessing mode found inside the model, if any
    contract: Contract | None  # a tledge.json found beside the model


def load_model(path: str | Path, *, unsafe: bool = False) -> LoadedModel:
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model not found: {p}")
    if p.is_dir():
        if not (p / "saved_model.pb").is_file():
            raise ModelLoadError(f"{p} is a folder but not a SavedModel (no saved_model.pb)")
        loaded = _load_saved_model(p)
    elif p.suffix.lower() == ".keras":
        _check_magic(p, _ZIP_MAGIC, "a .keras zip archive")
        with _lowercase_suffix(p) as q:  # Keras only knows `.keras` / `.h5` in lower case
            loaded = _load_keras(q, unsafe)
    elif p.suffix.lower() in (".h5", ".hdf5"):
        _check_magic(p, _HDF5_MAGIC, "an HDF5 file")
        _refuse_code_in_h5(p, unsafe)
        with _lowercase_suffix(p) as q:
            loaded = _load_h5(q, unsafe)
    else:
        raise ModelLoadError(f"unsupported model file {p.name}: expected .keras, .h5 or a SavedModel folder")
    loaded.path = p
    side = p.parent / "tledge.json" if p.is_file() else p / "tledge.json"
    if side.is_file():
        loaded.contract = Contract.load(side)
    return loaded


@contextmanager
def _lowercase_suffix(p: Path):
    """`p`, or a symlink to it named with a lower-case suffix (MODEL.H5 -> model.h5) while loading."""
    if p.suffix == p.suffix.lower():
        yield p
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tledge-") as d:
        link = Path(d) / (p.stem + p.suffix.lower())
        link.symlink_to(p.resolve())
        yield link


def _check_magic(p: Path, magic: bytes, what: str) -> None:
    with open(p, "rb") as fh:
        head = fh.read(len(magic))
    if head != magic:
        raise ModelLoadError(f"{p} is not {what} (wrong file type or corrupt)")


def _refuse_code_in_h5(p: Path, unsafe: bool) -> None:
    """A Lambda layer in an .h5 holds marshalled Python code; never load that without --unsafe."""
    h5py = require("h5py", extra="export")
    try:
        with h5py.File(p, "r") as f:
            cfg = f.attrs.get("model_config")
    except OSError as exc:
        raise ModelLoadError(f"cannot read {p}: truncated or corrupt HDF5 ({exc})") from None
    if cfg is None:
        raise ModelLoadError(f"{p} holds weights only (no model_config): save the whole model, not just weights")
    text = cfg.decode() if isinstance(cfg, bytes) else str(cfg)
    found = sorted({c for c in _UNSAFE_LAYERS if f'"class_name": "{c}"' in text})
    if found and not unsafe:
        raise ModelLoadError(
            f"{p} contains {', '.join(found)} layers, which execute Python code stored in the file. "
            "Refusing in safe mode; pass --unsafe only if you trust this file.")


def _custom_objects() -> dict:
    from tledge.layers import CUSTOM_OBJECTS

    return dict(CUSTOM_OBJECTS)


def _load_keras(p: Path, unsafe: bool) -> LoadedModel:
    keras = require("keras", extra="export")
    try:
        model = keras.saving.load_model(p, custom_objects=_custom_objects(), compile=False, safe_mode=not unsafe)
    except Exception as exc:  # Keras raises many types here
        msg = str(exc)
        if "safe_mode" in msg or "lambda" in msg.lower():
            raise ModelLoadError(f"{p} contains Python code (a Lambda layer); refused in safe mode. "
                                 "Pass --unsafe only if you trust this file.") from None
        raise ModelLoadError(f"cannot load {p}: {exc.__class__.__name__}: {_first_line(msg)}") from None
    return _describe(p, model, "keras")


def _load_h5(p: Path, unsafe: bool) -> LoadedModel:
    keras = require("keras", extra="export")
    try:
        model = keras.saving.load_model(p, custom_objects=_custom_objects(), compile=False, safe_mode=not unsafe)
        return _describe(p, model, "keras")
    except Exception as first:  # Keras 3 refuses many Keras 2 era files: fall back to tf_keras
        try:
            tf_keras = require("tf_keras", extra="export", purpose="Keras 2 era .h5 files")
            model = tf_keras.models.load_model(p, compile=False)
        except Exception as second:
            raise ModelLoadError(
                f"cannot load {p} with Keras 3 ({_first_line(str(first))}) nor with tf_keras "
                f"({second.__class__.__name__}: {_first_line(str(second))})") from None
        return _describe(p, model, "tf_keras")


def _load_saved_model(p: Path) -> LoadedModel:
    tf = require("tensorflow", extra="export")
    try:
        obj = tf.saved_model.load(str(p))
    except Exception as exc:
        raise ModelLoadError(f"cannot load SavedModel {p}: {_first_line(str(exc))}") from None
    sigs = getattr(obj, "signatures", {})
    if "serving_default" not in sigs:
        raise ModelLoadError(f"SavedModel {p} has no serving_default signature")
    fn = sigs["serving_default"]
    spec = list(fn.structured_input_signature[1].values())
    if len(spec) != 1 or len(spec[0].shape) != 4:
        raise ModelLoadError(f"SavedModel {p} must take one image tensor, got {spec}")
    shape = spec[0].shape
    out_key = sorted(fn.structured_outputs)[0]
    in_key = list(fn.structured_input_signature[1])[0]

    def call(x, training=False):
        return fn(**{in_key: tf.cast(x, spec[0].dtype)})[out_key]

    hw = (shape[1], shape[2]) if shape[1] and shape[2] else None
    lm = LoadedModel(p, call, "saved_model", hw, int(shape[3] or 3), None, None)
    lm._keep = obj  # keep the trackable alive
    return lm


def _describe(p: Path, model, kind: str) -> LoadedModel:
    shape = model.inputs[0].shape if getattr(model, "inputs", None) else None
    if shape is None or len(shape) != 4:
        raise ModelLoadError(f"{p}: expected one NHWC image input, got {shape}")
    hw = (int(shape[1]), int(shape[2])) if shape[1] and shape[2] else None
    return LoadedModel(p, model, kind, hw, int(shape[3] or 3), _baked_mode(model), None)


def _baked_mode(model) -> str | None:
    for layer in _walk(model):
        if layer.__class__.__name__ == "Preprocess":
            return layer.mode
    return None


def _walk(model):
    for layer in getattr(model, "layers", []):
        yield layer
        if hasattr(layer, "layers"):
            yield from _walk(layer)


def _first_line(msg: str) -> str:
    return (msg.strip().splitlines() or [""])[0][:300]


def resolve_contract(lm: LoadedModel, *, preprocess: str | None, input_size: tuple[int, int] | None,
                     labels: tuple[str, ...] = ()) -> tuple[Contract, str | None]:
    """The contract the exported files take (raw pixels), and the normalisation to add (or None)."""
    from tledge.backbones import preprocess_mode_for

    base = lm.contract
    hw = input_size or lm.input_hw or (base.size if base else None)
    if hw is None:
        raise ContractError("the model's input size is dynamic: pass --input-size HxW")
    add: str | None = None
    if lm.baked_mode is not None or (base is not None and base.baked):
        mode = lm.baked_mode or base.norm.value
    elif preprocess is not None:
        mode = add = preprocess_mode_for(preprocess)
    elif base is not None:
        mode = add = base.norm.value
    else:
        raise ContractError(
            "this model does not bake its preprocessing and none was given. Pass --preprocess MODE "
            "(tf = x/127.5-1 for MobileNet/Inception; caffe = BGR minus ImageNet means for ResNet50/VGG; "
            "torch = x/255 then ImageNet mean/std for DenseNet; scale = x/255; raw = the model normalises "
            "itself, e.g. EfficientNet, MobileNetV3), a backbone name such as mobilenet_v2 or resnet50, "
            "or --preprocess auto with labelled --val images.")
    fields = dict(height=hw[0], width=hw[1], channels=lm.channels, color="gray" if lm.channels == 1 else "rgb",
                  norm=Norm(mode), baked=True, input_dtype="float32")
    if base is not None:
        contract = base.replace(**{k: v for k, v in fields.items() if k not in ("color",)}, labels=labels or base.labels)
    else:
        contract = Contract(**fields, labels=labels)
    return contract, add


def trace(lm: LoadedModel, contract: Contract, add_norm: str | None):
    """One tf.function (raw float32 pixels NHWC -> outputs) reused by every converter."""
    tf = require("tensorflow", extra="export")
    norm = contract.replace(norm=add_norm, baked=False) if add_norm else None
    if norm is not None:
        mean, std = norm.mean_std()
        # plain lists: constants made inside the function (captured tensors become ONNX inputs)
        scale, offset = (1.0 / std).tolist(), (-mean / std).tolist()
        flip = add_norm == "caffe" and contract.channels == 3
    model = lm.model
    spec = tf.TensorSpec([None, contract.height, contract.width, contract.channels], tf.float32, name="pixels")

    @tf.function(input_signature=[spec])
    def serve(pixels):
        x = pixels
        if norm is not None:
            if flip:  # not tf.reverse: TFLite's int8 REVERSE_V2 corrupts values
                x = tf.concat([x[..., 2:3], x[..., 1:2], x[..., 0:1]], axis=-1)
            x = x * tf.constant(scale, tf.float32) + tf.constant(offset, tf.float32)
        y = model(x, training=False)
        if isinstance(y, (list, tuple)):
            y = y[0]
        if isinstance(y, dict):
            y = y[sorted(y)[0]]
        return tf.cast(y, tf.float32)

    concrete = serve.get_concrete_function()
    return serve, concrete


def run_reference(fn: Callable, x: np.ndarray, batch: int = 32) -> np.ndarray:
    """The Keras (TensorFlow) reference outputs for prepared pixels."""
    outs = [np.asarray(fn(x[i:i + batch].astype(np.float32))) for i in range(0, len(x), batch)]
    y = np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)
    return y.reshape(len(x), -1)
