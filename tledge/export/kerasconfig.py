"""Keras model configs read as data: what in them could run code.

The config of an `.h5` (`model_config` attribute) or a `.keras` archive (`config.json`) is parsed with
`json` (duplicate keys refused: Keras would silently keep the last one) and every dict and list in it
is walked, whatever key it hangs under: `layers` lists of nested Sequential / Functional models,
`layer` / `forward_layer` / `backward_layer` of wrappers (TimeDistributed, Bidirectional), initialisers,
activations, custom objects. Nothing is matched as text, so minified JSON and `\\u004c` escapes read
the same as the pretty-printed file.

An entry carries code when loading or calling it would run Python (or a TensorFlow op) stored in, or
named by, the file: Lambda layers (marshalled bytecode or a named function), tf_keras' TFOpLambda /
SlicingOpLambda / ClassMethod / InstanceMethod / InstanceProperty (a TensorFlow function, tensor method or
attribute named in the file), Keras 2.3's TensorFlowOpLayer (a NodeDef),
serialised `__lambda__` objects, `function_type` entries, objects from a module that is not Keras or
tledge, and registered custom objects tledge does not know.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tledge.errors import ModelLoadError

# class_name -> why loading or calling it runs code from the file
CODE_CLASSES: dict[str, str] = {
    "Lambda": "a Lambda layer runs Python code stored in (or named by) the file",
    "TFOpLambda": "a TFOpLambda layer calls a TensorFlow function named in the file",
    "SlicingOpLambda": "a SlicingOpLambda layer calls a TensorFlow function named in the file",
    "ClassMethod": "a ClassMethod layer calls a TensorFlow function named in the file",
    "InstanceMethod": "an InstanceMethod layer calls a tensor method named in the file",
    "InstanceProperty": "an InstanceProperty layer reads a tensor attribute named in the file",
    "ResidualWrapper": "an RNN cell wrapper whose residual function is stored in (or named by) the file",
    "DropoutWrapper": "an RNN cell wrapper whose filter function is stored in (or named by) the file",
    "TensorFlowOpLayer": "a TensorFlowOpLayer runs a TensorFlow op stored in the file",
    "__lambda__": "a serialised Python lambda",
    "TFSMLayer": "a TFSMLayer loads and runs another SavedModel, named by a path in the file",
}
_CODE_CLASSES_LOWER = {k.lower(): v for k, v in CODE_CLASSES.items()}
# custom objects tledge registers itself (tledge.layers.CUSTOM_OBJECTS; a test keeps the two in step)
TLEDGE_OBJECTS = frozenset({"Preprocess", "tledge>Preprocess"})
# top-level packages whose classes Keras resolves without importing anything from the file
KERAS_PACKAGES = frozenset({"keras", "tf_keras"})
_TF_KERAS_MODULES = ("tensorflow.keras", "tensorflow.python.keras")


@dataclass(frozen=True)
class Finding:
    """One code-carrying entry: where it is (layer names from the top), its class and why."""

    where: str
    class_name: str
    reason: str

    def describe(self) -> str:
        return f"layer {self.where} ({self.class_name}): {self.reason}"


def parse(text: str | bytes, source: str | Path) -> dict:
    """The config as a dict; a config that is not a JSON object (or repeats a key) is refused."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ModelLoadError(f"{source}: the model config is not UTF-8 text") from None

    def unique(pairs: list[tuple[str, Any]]) -> dict:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})
            raise ModelLoadError(f"{source}: the model config repeats the key(s) {', '.join(dup)}; refused")
        return dict(pairs)

    try:
        config = json.loads(text, object_pairs_hook=unique)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ModelLoadError(f"{source}: the model config is not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{source}: the model config is not a JSON object")
    return config


def find_code(config: Any, allowed=None) -> list[Finding]:
    """Every entry of a parsed config that carries code, in document order. `allowed(entry)`: entries whose own
    class is known to be data (an arithmetic TFOpLambda the Keras 2 translation reads as Rescaling); what they
    hold is walked all the same."""
    found: list[Finding] = []
    try:
        _walk(config, (), found, allowed)
    except RecursionError:  # no Keras model nests this deep: refuse rather than skip a part
        return [Finding("(top)", "config", "the config is nested too deeply to check")]
    return found


def _walk(node: Any, where: tuple[str, ...], found: list[Finding], allowed=None) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item, where, found, allowed)
        return
    if not isinstance(node, dict):
        return
    if "class_name" in node:
        where = where + (_label(node),)
        reason = None if allowed is not None and allowed(node) else _code_reason(node)
        if reason:  # refused as a whole: what is inside it does not matter
            found.append(Finding(" > ".join(where), str(node.get("class_name")), reason))
            return
    fn = _function_entry(node)
    if fn:  # a Lambda-style function entry (function_type, or a wrapper's residual_fn_type and the like)
        found.append(Finding(" > ".join(where) or "(top)", "function", f"a Python function stored in the file ({fn})"))
        return
    for value in node.values():
        _walk(value, where, found, allowed)


def _function_entry(node: dict) -> str | None:
    """The key of a function stored in or named by the file: `function_type`, or `<name>_type` = "lambda" /
    "function" beside `<name>` (tf_keras' cell wrappers: residual_fn + residual_fn_type, loaded with func_load)."""
    if "function_type" in node:
        return "function_type"
    return next((k for k, v in node.items() if isinstance(k, str) and k.endswith("_type") and k != "function_type"
                 and v in ("lambda", "function") and k[:-5] in node), None)


def _label(node: dict) -> str:
    cfg = node.get("config")
    name = cfg.get("name") if isinstance(cfg, dict) else None
    name = name if isinstance(name, str) else node.get("name")
    cls = node.get("class_name")
    return name if isinstance(name, str) and name else str(cls)


def _code_reason(node: dict) -> str | None:
    cls, module, registered = node.get("class_name"), node.get("module"), node.get("registered_name")
    if not isinstance(cls, str):
        return f"class_name is not a string ({type(cls).__name__})"
    for name in (cls, registered):  # "layers.Lambda" or "x>Lambda" resolve to Lambda in some loaders
        code = _CODE_CLASSES_LOWER.get(_last_part(name)) if isinstance(name, str) else None
        if code:
            return code
    cfg = node.get("config")
    if isinstance(cfg, dict) and _function_entry(cfg):
        return "a Python function stored in the file"
    if module is not None and not _known_module(module, cls):
        return f"its module {module!r} is neither Keras nor tledge (loading would import it)"
    if module == "builtins" and cls == "function" and isinstance(cfg, str) and ">" in cfg:  # a registered function
        return f"custom function {cfg!r} that tledge does not know"
    for name in (cls, registered):
        if isinstance(name, str) and ">" in name and name not in TLEDGE_OBJECTS:
            return f"custom object {name!r} that tledge does not know"
    if registered is not None and not isinstance(registered, str):
        return "registered_name is not a string"
    return None


def _last_part(name: str) -> str:
    return name.replace(">", ".").rsplit(".", 1)[-1].strip().lower()


def _known_module(module: Any, cls: str) -> bool:
    if not isinstance(module, str):
        return False
    package = module.split(".", 1)[0]
    if package in KERAS_PACKAGES or module == "tensorflow.keras" or module.startswith(_TF_KERAS_MODULES):
        return True
    if package == "tledge":
        return cls in TLEDGE_OBJECTS
    return module == "builtins" and cls == "function"  # a Keras built-in function named by string


def refusal(path: str | Path, found: list[Finding]) -> str:
    """The one-line message for a file whose config carries code."""
    more = f" (and {len(found) - 1} more: {', '.join(f.where for f in found[1:4])})" if len(found) > 1 else ""
    return (f"{path}: {found[0].describe()}{more}. Refused in safe mode: pass --unsafe only if you trust "
            "this file")


# ---- reading the config out of a file ------------------------------------------------------------

def read_h5_config(path: str | Path) -> dict:
    """The parsed `model_config` of a full-model .h5 file."""
    from tledge._deps import require

    h5py = require("h5py", extra="export")
    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: truncated or corrupt HDF5 ({exc})") from None
    if raw is None:
        raise ModelLoadError(f"{path} holds weights only (no model_config): save the whole model, not just weights")
    if not isinstance(raw, (str, bytes)):
        raw = raw.tobytes() if hasattr(raw, "tobytes") else str(raw)
    return parse(raw, path)


def read_keras_config(path: str | Path, limit: int = 64 << 20) -> dict:
    """The parsed `config.json` of a .keras zip archive."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo("config.json")
            if info.file_size > limit:
                raise ModelLoadError(f"{path}: config.json is {info.file_size} bytes; refused")
            raw = z.read(info)
    except KeyError:
        raise ModelLoadError(f"{path} is a zip without config.json: not a .keras model") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ModelLoadError(f"cannot read {path}: truncated or corrupt .keras archive ({exc})") from None
    except (RuntimeError, NotImplementedError) as exc:  # an encrypted member, a compression zipfile cannot read
        raise ModelLoadError(f"cannot read {path}: not a .keras archive Keras writes ({exc})") from None
    return parse(raw, path)


def archive_keras_version(path: str | Path) -> str | None:
    """The `keras_version` of a .keras archive's metadata.json ("2.15.0": tf.keras 2.13-2.15 wrote this format
    too, with Keras 2 module names Keras 3 cannot import), or None."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo("metadata.json")
            if info.file_size > 1 << 20:
                return None
            meta = parse(z.read(info), path)
    except (KeyError, zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError, ModelLoadError):
        return None
    version = meta.get("keras_version") if isinstance(meta, dict) else None
    return version if isinstance(version, str) else None
