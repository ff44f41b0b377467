"""Which TFLite interpreter runs .tflite files (LiteRT, else tflite_runtime, else a TensorFlow the caller has
imported) and the delegates it loads: the TFLite backend's (tledge.runtime.backends) choices, on `tledge run`'s path
(no TensorFlow import of its own)."""
from __future__ import annotations

import os
import re
import sys
import warnings

import numpy as np

from tledge.errors import MissingDependency, ModelLoadError, TledgeWarning


def litert_module():
    """(ai-edge-litert's interpreter module, None); (None, why) when it is installed but does not import (out of
    memory: "failed to map segment"; a wheel built for numpy 1: an AttributeError); (None, None) when it is not
    installed. The runtime and `tledge doctor` both ask here."""
    try:
        from ai_edge_litert import interpreter as mod
    except Exception as exc:  # noqa: BLE001 - a broken wheel raises anything
        from importlib.util import find_spec

        if find_spec("ai_edge_litert") is None:
            return None, None
        from tledge._deps import not_importing

        return None, not_importing("ai_edge_litert", exc)
    return mod, None


def interpreter_module():
    """(interpreter module, provider name) in the order of preference."""
    mod, broken = litert_module()  # why an installed one does not import is said when no other interpreter is
    if mod is not None:  # there, instead of "not installed"; the others are still tried first
        return mod, "ai_edge_litert"
    try:
        from tflite_runtime import interpreter as mod
    except ImportError:
        pass
    else:
        numpy1_build()
        warnings.warn(f"SLOW BACKEND: {broken or 'ai-edge-litert is not installed'}; using tflite_runtime, which is "
                      "10-40x slower for int8 models and cannot load files with newer op versions. "
                      "Fix: pip install ai-edge-litert", TledgeWarning, stacklevel=4)
        return mod, "tflite_runtime"
    if "tensorflow" in sys.modules:  # only if the caller already paid for TensorFlow
        warnings.warn(f"{broken or 'no TFLite runtime installed (ai-edge-litert)'}: falling back to tensorflow.lite, "
                      "which is deprecated and heavy. Fix: pip install ai-edge-litert", TledgeWarning, stacklevel=4)
        return TFModule(sys.modules["tensorflow"]), "tensorflow.lite"
    raise MissingDependency(broken or "no TFLite interpreter installed: pip install ai-edge-litert (tledge[runtime])")


def numpy1_build() -> None:
    """tflite-runtime (its last release, 2.14) was built for numpy 1: under numpy 2 its first interpreter printed
    numpy's 30-line banner and failed with a SystemError. Refused before, in one line."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        tfl = version("tflite-runtime")
    except PackageNotFoundError:
        return
    major = int(np.__version__.split(".")[0])
    if major >= 2 and tuple(int(p) for p in re.findall(r"\d+", tfl)[:2]) <= (2, 14):
        raise MissingDependency(f"tflite-runtime {tfl} was built for numpy<2 and numpy {np.__version__} is installed: "
                                "pip install 'numpy<2', or pip install ai-edge-litert (tledge[runtime])")


class TFModule:
    """tensorflow.lite seen through the interpreter module's interface."""

    def __init__(self, tf):
        self.Interpreter = tf.lite.Interpreter
        self.load_delegate = tf.lite.experimental.load_delegate


def delegate(mod, name: str):
    """A delegate library loaded by name or path; one that will not load is a ModelLoadError (an OSError, and
    LiteRT's "Exception ignored in Delegate.__del__" noise, before)."""
    if os.sep in name and not os.path.isfile(name):
        raise ModelLoadError(f"TFLite delegate library not found: {name}")
    try:
        import ctypes

        lib = ctypes.CDLL(name)  # one that will not open, or is no delegate: said here, before the noise of
        if not hasattr(lib, "tflite_plugin_create_delegate"):  # LiteRT's half-built Delegate's __del__
            raise ModelLoadError(f"{name} is not a TFLite delegate (no tflite_plugin_create_delegate)")
        return mod.load_delegate(name)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - LiteRT 2.3 raises AttributeError from its own Delegate.__init__
        raise ModelLoadError(f"cannot load the TFLite delegate {name}: {str(exc).strip()[:200]}") from None
