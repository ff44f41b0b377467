"""Loading a Keras model for export: `.keras`, `.h5` (Keras 3, or Keras 2 era translated for Keras 3, tf_keras as a
last resort) or a SavedModel folder, in safe mode, traced once into a function that takes raw pixels.

Code in a model file never runs without `unsafe`: the config of a `.keras` / `.h5` is parsed and walked
(tledge.export.kerasconfig) before any loader sees the file, and tf_keras, which has no safe mode for `.h5`, is only
tried after that walk found nothing."""
from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tledge.artifacts import CONTRACT_FILE
from tledge._deps import require
from tledge.contract import Contract
from tledge.export.names import INPUT_NAME
from tledge.errors import ModelLoadError
from tledge.export import augment, binary, keras2, keras3_compat, kerasconfig
from tledge.export import signature as sig
from tledge.export.baked import baked_mode, graph_mode, walk
from tledge.export.loaded import KERAS3_KINDS, KINDS, LoadedModel  # noqa: F401 (re-exported)

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"


def load_model(path: str | Path, *, unsafe: bool = False, signature: str | None = None,
               binary_output: str | None = None) -> LoadedModel:
    """`signature`: a SavedModel's KEY[:OUTPUT] (tledge.export.signature); refused for other files.
    `binary_output`: what a one-output model's output is (binary.SIGMOID or LOGIT), when its graph cannot say."""
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model not found: {p}")
    choice = sig.Choice.parse(signature)
    if signature is not None and not p.is_dir():
        raise ModelLoadError(f"--signature chooses a SavedModel's function; {p.name} is no SavedModel folder")
    if p.is_dir():
        if not ((p / "saved_model.pb").is_file() or (p / "saved_model.pbtxt").is_file()):
            raise ModelLoadError(f"{p} is a folder but not a SavedModel (no saved_model.pb)")
        loaded = _load_saved_model(p, unsafe, choice)
    elif p.suffix.lower() == ".keras":
        _check_magic(p, _ZIP_MAGIC, "a .keras zip archive")
        keras2_era = (kerasconfig.archive_keras_version(p) or "").startswith("2.")  # tf.keras 2.13-2.15's
        _refuse_code(p, kerasconfig.read_keras_config(p), unsafe, allowed=keras2.reads_as_data if keras2_era else None)
        with _lowercase_suffix(p) as q:  # Keras only knows `.keras` / `.h5` in lower case
            loaded = _load_keras(q, unsafe, keras2_era)
    elif p.suffix.lower() in (".h5", ".hdf5"):
        _check_magic(p, _HDF5_MAGIC, "an HDF5 file")
        config = kerasconfig.read_h5_config(p)
        # checked as Keras 3 will load it (arithmetic TFOpLambdas, tf.keras 2's x / 127.5 - 1, are Rescaling
        # layers) and as tf_keras would, from the original: what the translation drops (a TFOpLambda's other
        # entries, settings Keras 3 has not) is what tf_keras builds, code included
        translation = keras2.translate(config)
        has_code = _refuse_code(p, translation.config, unsafe, allowed=keras2.reads_as_data) | \
            _refuse_code(p, config, unsafe, allowed=keras2.reads_as_data)
        with _lowercase_suffix(p) as q:
            loaded = _load_h5(q, translation, unsafe, allow_tf_keras=not has_code or unsafe)
    else:
        raise ModelLoadError(f"unsupported model file {p.name}: expected .keras, .h5 or a SavedModel folder")
    loaded.path = p
    if loaded.num_outputs is None:
        loaded.num_outputs = output_width(loaded.model)
    kind = binary.output_kind(getattr(loaded.model, "signature", loaded.model),
                              getattr(loaded.model, "output_name", None))
    if loaded.num_outputs == 1:
        kind = binary.one_output_kind(loaded, kind, binary_output)
    elif binary_output is not None:
        raise ModelLoadError(f"--binary-output is for models with one output; {p.name} has {loaded.num_outputs}")
    elif kind == binary.UNKNOWN or kind.startswith(binary.ACTIVATION):
        kind = binary.LOGIT  # (several outputs: probabilities or logits are told from their values later)
    if loaded.num_outputs == 1:  # two class scores from here on (tledge.export.binary)
        loaded.binary, loaded.num_outputs = kind, 2
        loaded.notes.append(binary.note(loaded.binary))
    elif kind == binary.SIGMOID:
        loaded.sigmoid_scores = True
    side = p.parent / CONTRACT_FILE if p.is_file() else p / CONTRACT_FILE
    if side.is_file():
        loaded.contract, loaded.contract_path = Contract.load(side), side
    return loaded


def output_width(model) -> int | None:
    """The static width of a Keras model's (first) output, or None (SavedModel signatures, dynamic)."""
    try:
        shape = model.outputs[0].shape
        width = shape[-1]
        return int(width) if width is not None and len(shape) == 2 else None
    except (AttributeError, IndexError, TypeError, ValueError):
        return None


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


def _refuse_code(p: Path, config: dict, unsafe: bool, allowed=None) -> bool:
    """Refuse a file whose parsed config carries code, unless unsafe; True when it does."""
    found = kerasconfig.find_code(config, allowed)
    if found and not unsafe:
        foreign = keras2.foreign_hint(config)  # --unsafe would not load these either
        raise ModelLoadError(f"cannot load {p}: {foreign}" if foreign else kerasconfig.refusal(p, found))
    return bool(found)


def _custom_objects() -> dict:
    from tledge.layers import CUSTOM_OBJECTS

    return dict(CUSTOM_OBJECTS)


def _load_keras(p: Path, unsafe: bool, keras2_era: bool = False) -> LoadedModel:
    keras = require("keras", extra="export")
    try:
        model = keras.saving.load_model(p, custom_objects=_custom_objects(), compile=False, safe_mode=not unsafe)
    except Exception as exc:  # Keras raises many types here
        msg = str(exc)
        if keras2_era:  # written by tf.keras 2.13-2.15 (Keras 2 module names): tf_keras reads it, in safe mode
            return _tf_keras_archive(p, unsafe, f"Keras 3: {exc.__class__.__name__}: {_first_line(msg)[:120]}")
        fixed = _attempt([], "", lambda: keras3_compat.load_fixed(p, kerasconfig.read_keras_config(p), lambda q: (
            keras.saving.load_model(q, custom_objects=_custom_objects(), compile=False, safe_mode=not unsafe))))
        if fixed is not None:  # a Sequential around a functional backbone as Keras 3.0-3.8 wrote it
            lm = _keras3(p, fixed[0], "keras")
            lm.notes.append(fixed[1])
            return lm
        if unsafe:  # safe mode was off: the code itself did not load (a class this process does not have)
            raise ModelLoadError(f"cannot load {p} even with --unsafe: {exc.__class__.__name__}: "
                                 f"{_first_line(msg)[:200]} (a custom layer must be importable where tledge runs; "
                                 "a Lambda's code is only kept for the Python that saved it)") from None
        if "safe_mode" in msg or "lambda" in msg.lower():
            raise ModelLoadError(f"{p}: Keras's safe mode refuses it (it would run code the file names: "
                                 f"{_first_line(msg)[:160]}). Pass --unsafe only if you trust this file.") from None
        raise ModelLoadError(f"cannot load {p}: {exc.__class__.__name__}: {_first_line(msg)}") from None
    return _keras3(p, model, "keras")


def _tf_keras_archive(p: Path, unsafe: bool, keras3_error: str) -> LoadedModel:
    tf_keras = require("tf_keras", extra="export", purpose="Keras 2 era .keras files")
    tried = [keras3_error]
    model = _attempt(tried, "tf_keras", lambda: tf_keras.models.load_model(p, compile=False, safe_mode=not unsafe))
    if model is None:
        why = " | ".join(tried)
        hint = ("; a custom layer must be importable where tledge runs (or export a SavedModel of the model, which "
                "keeps TensorFlow ops)") if "custom" in why.lower() or "register" in why.lower() else ""
        raise ModelLoadError(f"cannot load {p}, a tf.keras 2 .keras archive ({why}){hint}")
    lm = _tf_keras_model(p, model, tf_keras)
    lm.notes.append("loaded with tf_keras: a .keras archive tf.keras 2.13-2.15 wrote (Keras 3 cannot import its "
                    "Keras 2 classes)" + (", with --unsafe" if unsafe else ", in safe mode"))
    return lm


def _tf_keras_model(p: Path, model, tf_keras) -> LoadedModel:
    from tledge.export import float32

    note = None
    if float32.is_mixed(walk(model)):  # as _keras3 does, with tf_keras's own config format
        model, note = float32.rebuild(model, tf_keras)
    lm = _describe(p, model, "tf_keras")
    lm.notes += [note] if note else []
    return lm


def _keras3(p: Path, model, kind: str) -> LoadedModel:
    from tledge.export import float32

    note, why = None, float32.quantized(walk(model))
    if why:
        raise ModelLoadError(f"{p}: {why}")
    if float32.is_mixed(walk(model)):  # mixed precision: TFLite's converter fails on its float16 ops
        model, note = float32.rebuild(model)
    model, stripped = augment.strip(model)  # seeds written at inference: the graph did not freeze
    lm = _describe(p, model, kind)
    lm.notes += [n for n in (note, stripped) if n]
    return lm


def _load_h5(p: Path, translation, unsafe: bool, *, allow_tf_keras: bool) -> LoadedModel:
    """Keras 3 as saved; else Keras 3 on the translated Keras 2 config; else (no code found) tf_keras."""
    keras = require("keras", extra="export")
    tried: list[str] = []
    model = _attempt(tried, "Keras 3", lambda: keras.saving.load_model(
        p, custom_objects=_custom_objects(), compile=False, safe_mode=not unsafe))
    if model is not None:
        return _keras3(p, model, "keras")
    if translation.ok:
        model = _attempt(tried, "Keras 3 after translation", lambda: keras2.load_translated(
            p, translation, _custom_objects(), unsafe=unsafe))
        if model is not None:  # (through _keras3: a tf.keras 2 mixed-precision model is rebuilt in float32 too)
            lm = _keras3(p, model, "keras_translated")
            lm.notes.append("Keras 2 config translated for Keras 3: " + ", ".join(translation.changes))
            return lm
    else:
        tried.append("no Keras 3 translation: " + "; ".join(translation.blockers[:3]))
    if allow_tf_keras:  # only after the config walk found no code (or with --unsafe)
        tf_keras = require("tf_keras", extra="export", purpose="Keras 2 era .h5 files")
        model = _attempt(tried, "tf_keras", lambda: tf_keras.models.load_model(p, compile=False))
    if model is None:
        foreign = keras2.foreign_hint(translation.config)
        if foreign:  # the loaders' own advice (a custom_object_scope), three times over, does not help here
            raise ModelLoadError(f"cannot load {p}: {foreign}")
        why = " | ".join(dict.fromkeys(tried))
        hint = ("; a Lambda's code (marshalled bytecode) only loads in the Python version that saved it: export "
                "there, or save a SavedModel (model.save(folder)), which keeps TensorFlow ops, not Python") \
            if "marshal" in why else ""
        raise ModelLoadError(f"cannot load {p} ({why}){hint}")
    lm = _tf_keras_model(p, model, tf_keras)
    lm.notes.append(f"loaded with tf_keras ({tried[-1]}), " + ("with --unsafe (any code in the file runs)" if unsafe
                                                               else "after the config walk found no code"))
    return lm


def _attempt(tried: list[str], label: str, load: Callable[[], Any]):
    """The loaded model, or None with the reason added to `tried`."""
    try:
        return load()
    except Exception as exc:  # loaders raise many types for files they cannot read
        tried.append(f"{label}: {exc.__class__.__name__}: {_first_line(str(exc))}")
        return None


def _load_saved_model(p: Path, unsafe: bool, choice: sig.Choice) -> LoadedModel:
    """TF ops, not Python; ops that act outside the model (write files, call Python) need unsafe."""
    from tledge.export import float32, savedmodel

    tf = require("tensorflow", extra="export")
    found = savedmodel.find_acting_ops(p)
    if found and not unsafe:
        raise ModelLoadError(savedmodel.refusal(p, found))
    try:
        tags = savedmodel.serving_tags(p)  # several MetaGraphs (an Estimator's export_all_saved_models): `serve`
        obj = tf.saved_model.load(str(p), tags=tags) if tags else tf.saved_model.load(str(p))
    except Exception as exc:
        raise ModelLoadError(f"cannot load SavedModel {p}: {_first_line(str(exc))}") from None
    chosen = sig.choose(getattr(obj, "signatures", {}), p.name, choice)
    fn, in_key, out_key = chosen.fn, chosen.input_name, chosen.output_name
    spec = list(fn.structured_input_signature[1].values())
    shape = spec[0].shape
    if shape[1] in (1, 3) and shape[3] not in (None, 1, 3, 4):  # read as 3 high x 64 wide x 64 channels
        raise ModelLoadError(f"SavedModel {p.name} takes channels-first images {tuple(shape)[1:]} (channels, height, "
                             "width): tledge exports channels-last (NHWC) models")

    def call(x, training=False):
        return fn(**{in_key: tf.cast(x, spec[0].dtype)})[out_key]
    call.signature = fn  # read by binary.output_kind
    call.output_name = out_key  # (a chosen one of several)
    call, note = float32.saved_model_call(call, spec[0], sorted(fn.structured_outputs).index(out_key))

    hw = (shape[1], shape[2]) if shape[1] and shape[2] else None
    out_shape = getattr(fn.structured_outputs[out_key], "shape", None)
    if out_shape is not None and out_shape.rank is not None and out_shape.rank != 2:
        raise ModelLoadError(f"SavedModel {p.name}'s output has shape {tuple(out_shape)}, not (batch, classes)")
    mode, unread = graph_mode(fn, int(shape[3] or 3))
    lm = LoadedModel(p, call, "saved_model", hw, int(shape[3] or 3), mode, None, _last_dim(out_shape))
    lm._keep = obj  # keep the trackable alive
    lm.integer_input = spec[0].dtype.name if spec[0].dtype.is_integer else None
    lm.opaque, lm.unread_preprocessing = binary.opaque(fn), unread
    if not (lm.opaque or lm.baked_mode):
        savedmodel.refuse_unfrozen(fn, p.name)
    lm.notes += [n for n in (chosen.note, note) if n]
    return lm


def _describe(p: Path, model, kind: str) -> LoadedModel:
    inputs, outs = getattr(model, "inputs", None) or [], getattr(model, "outputs", None) or []
    if len(inputs) > 1:
        raise ModelLoadError(f"{p.name} takes {len(inputs)} inputs ({_names(inputs)}): tledge exports image "
                             "classifiers with one image input")
    if len(outs) > 1:  # the first was exported as if it were the classifier, whatever it was
        raise ModelLoadError(f"{p.name} has {len(outs)} outputs ({_names(outs)}): tledge exports one classifier "
                             "output; save a model with that one, keras.Model(model.input, model.get_layer(NAME)"
                             ".output)")
    if outs and getattr(outs[0], "shape", None) is not None and len(outs[0].shape) != 2:
        raise ModelLoadError(f"{p.name}'s output has shape {tuple(outs[0].shape)}, not (batch, classes): pool or "
                             "flatten it in the model (a classifier gives one score per class)")
    shape = inputs[0].shape if inputs else None
    if shape is None or len(shape) != 4:
        raise ModelLoadError(f"{p}: expected one NHWC image input, got {shape}")
    if shape[1] in (1, 3) and shape[3] not in (None, 1, 3, 4):  # read as 3 high x 48 wide x 64 channels
        raise ModelLoadError(f"{p.name} takes channels-first images {tuple(shape)[1:]} (channels, height, width): "
                             "tledge exports channels-last (NHWC) models; build it with data_format='channels_last'")
    hw = (int(shape[1]), int(shape[2])) if shape[1] and shape[2] else None
    outputs = getattr(model, "outputs", None) or [None]
    channels = int(shape[3] or 3)
    baked, unread = baked_mode(model), None
    if baked is None:  # code at the input the layers do not show (tf.keras 2's TFOpLambda preprocess_input beside
        # other TF calls, which tf_keras builds): read from the traced graph, as a SavedModel's is; "not baked" sent
        # users to --preprocess, which normalised twice (parity compares the same function: PASSED)
        baked, unread = graph_mode(binary.traced(model), channels)
    lm = LoadedModel(p, model, kind, hw, channels, baked, None, _last_dim(getattr(outputs[0], "shape", None)))
    lm.unread_preprocessing = unread  # a Normalization adapted on the data: which pixels it expects is not said
    dtype = str(getattr(inputs[0].dtype, "name", inputs[0].dtype))  # (Keras 3: a string; tf_keras: a tf.DType)
    if dtype.startswith(("uint", "int")):  # as a SavedModel's: `--preprocess tf` was cast to uint8 inside, exit 0
        lm.integer_input = dtype
    return lm


def _names(tensors) -> str:
    """The layers that make (or take) the tensors: what a user would pass to get_layer()."""
    def name(t):
        hist = getattr(t, "_keras_history", None)
        layer = getattr(hist, "operation", None) or getattr(hist, "layer", None)
        return getattr(layer, "name", None) or str(getattr(t, "name", "?")).split("/")[0].split(":")[0]
    names = [name(t) for t in tensors]
    return ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")


def _last_dim(shape) -> int | None:
    try:
        return int(shape[-1]) if shape is not None and len(shape) >= 2 and shape[-1] else None
    except (TypeError, ValueError):
        return None


def _first_line(msg: str) -> str:
    return (msg.strip().splitlines() or [""])[0][:300]


def report_notes(lm: LoadedModel) -> list[str]:
    """What the parity report says about how the model was loaded and where its contract came from."""
    notes = [f"model loaded with {KINDS.get(lm.kind, lm.kind)}"] + list(lm.notes)
    return notes + ([lm.contract_source] if lm.contract_source else [])


def trace(lm: LoadedModel, contract: Contract, add_norm: str | None):
    """One tf.function (raw float32 pixels NHWC -> outputs) reused by every converter."""
    tf = require("tensorflow", extra="export")
    norm = contract.replace(norm=add_norm, baked=False) if add_norm else None
    if norm is not None:
        mean, std = norm.mean_std()
        # plain lists: constants made inside the function (captured tensors become ONNX inputs)
        scale, offset = (1.0 / std).tolist(), (-mean / std).tolist()
        flip = add_norm == "caffe" and contract.channels == 3
        if not flip and len(set(scale)) == 1 and len(set(offset)) == 1:  # tf, scale, grey: scalars, as tledge.layers
            scale, offset = scale[0], offset[0]  # bakes them ([3] on NHWC pixels: onnxruntime went 3 floats at a time)
        # RGB -> BGR and the map as one 1x1 convolution (what tledge train bakes): as slices + concat (REVERSE_V2
        # corrupts int8 values) the converter gave the concat's output range to the int8 file's input, which then
        # took pixels at scale 1.49, zero point 83 where every client feeds raw pixels (MediaPipe 11 of 15 right)
        kernel = np.flip(np.diag(scale), 0).reshape(1, 1, 3, 3).tolist() if flip else None
    model = lm.model
    spec = tf.TensorSpec([None, contract.height, contract.width, contract.channels], tf.float32, name=INPUT_NAME)

    @tf.function(input_signature=[spec])
    def serve(pixels):
        x = pixels
        if norm is not None:
            if flip:
                x = tf.nn.conv2d(x, tf.constant(kernel, tf.float32), 1, "VALID") + tf.constant(offset, tf.float32)
            else:
                x = x * tf.constant(scale, tf.float32) + tf.constant(offset, tf.float32)
        y = model(x, training=False)
        if isinstance(y, (list, tuple)):
            y = y[0]
        if isinstance(y, dict):
            y = y[sorted(y)[0]]
        y = tf.cast(y, tf.float32)
        return binary.tf_head(tf, y, lm.binary) if lm.binary else y

    try:
        concrete = serve.get_concrete_function()
    except (ValueError, TypeError, tf.errors.InvalidArgumentError) as exc:  # e.g. an input too small for its convs
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        why = next((ln for ln in reversed(lines) if "Error" in ln or "size" in ln), lines[-1] if lines else "")
        why = re.sub(r"\x1b\[[0-9;]*m", "", why).split(" for '{{node")[0]  # Keras's bold, TensorFlow's node
        raise ModelLoadError(f"{lm.path.name} cannot run on {contract.height}x{contract.width}x{contract.channels} "
                             f"input: {why[:300]}") from None
    return serve, concrete


def run_reference(fn: Callable, x: np.ndarray, batch: int = 32) -> np.ndarray:
    """The Keras (TensorFlow) reference outputs for prepared pixels. A model that fails on a batch (a SavedModel
    whose graph fixes the batch size at 1) is run image by image; one that fails on one image is a ModelLoadError."""
    try:
        outs = [np.asarray(fn(x[i:i + batch].astype(np.float32))) for i in range(0, len(x), batch)]
        if any(o.shape[:1] != (len(x[i:i + batch]),) for o, i in zip(outs, range(0, len(x), batch))):
            raise ValueError("a row per image expected")  # a graph that reshapes to [1, -1] gives one row for all
    except Exception as exc:  # TensorFlow's InvalidArgumentError and friends: the model's, not tledge's
        if batch == 1 or len(x) < 2:
            raise ModelLoadError(f"the model fails on the prepared images: {_first_line(str(exc))[:200]}") from None
        return run_reference(fn, x, batch=1)
    y = np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)
    return y.reshape(len(x), -1)
