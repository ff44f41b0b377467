"""The one place heavy optional imports go through. Never installs anything."""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import threading

from tledge.version import __version__
from tledge.errors import MissingDependency

# tledge is not on PyPI, and anyone may register the name there: install lines name the wheel `make wheel` builds
# (or the checkout), never the bare name
WHEEL = f"tledge-{__version__}-py3-none-any.whl"

# import name -> (pip name, extra; None: a core dependency, "": in no extra)
_KNOWN = {
    "tensorflow": ("tensorflow", "export"),
    "keras": ("keras", "export"),
    "tf_keras": ("tf-keras", "export"),
    "tf2onnx": ("tf2onnx", "export"),
    "onnx": ("onnx", "export"),
    "onnxruntime": ("onnxruntime (on a Jetson: NVIDIA's onnxruntime-gpu, README)", "runtime"),
    "ai_edge_litert": ("ai-edge-litert", "runtime"),
    "tflite_runtime": ("tflite-runtime", ""),  # in no extra: an alternative to [runtime]'s ai-edge-litert
    "cv2": ("opencv-python-headless", None),  # a core dependency (tests/test_deps_table.py checks pyproject)
    "matplotlib": ("matplotlib", "train"),
    "flatbuffers": ("flatbuffers", "runtime"),
    "mediapipe": ("mediapipe", "clients"),
}


@contextlib.contextmanager
def blas_threads(n: int = 1):
    """numpy's BLAS limited to `n` threads inside the block, restored after it (threadpoolctl, in the export
    extra; without it nothing changes). The int8 repairs multiply tall, thin matrices between TensorFlow calls:
    idle, one thread is as fast as two (MobileNet 0.25's all-int8 repair 30.8 vs 31.0 s), but beside other jobs
    OpenBLAS's spinning threads took its Gram products from 4 to 60 s (docs/int8-fidelity.md, "Export time")."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield


@contextlib.contextmanager
def swapped(get, put, value):
    """`put(value)` for the block, and what `get()` gave before it put back after: a library's global (Keras's dtype
    policy, its image data format) set for tledge's work, the caller's own restored."""
    old = get()
    put(value)
    try:
        yield
    finally:
        put(old)


def quiet_tensorflow() -> None:
    """For tledge's own process (the CLI): keep TensorFlow's C++ INFO/WARNING lines out of the terminal
    and use Keras 3 on TensorFlow. Library calls never change the environment."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def require(name: str, extra: str | None = None, purpose: str | None = None):
    """Import `name` or raise MissingDependency with the pip line that fixes it."""
    backend = os.environ.get("KERAS_BACKEND", "").strip()
    if name.split(".")[0] == "keras" and backend and backend != "tensorflow":  # keras's import raised ValueError
        raise MissingDependency(f"tledge needs Keras on the TensorFlow backend, KERAS_BACKEND is {backend!r}: set "
                                "KERAS_BACKEND=tensorflow (or unset it)")  # for an unknown one, "not installed" else
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    said = io.StringIO()  # what cv2's import prints to sys.stderr (numpy's 30-line banner for a numpy 1.x build);
    held = name == "cv2" and threading.current_thread() is threading.main_thread()  # (not others': TensorFlow's
    try:  # logging handler kept the StringIO for good, and two threads' swaps left it in sys.stderr)
        with contextlib.redirect_stderr(said) if held else contextlib.nullcontext():
            module = importlib.import_module(name)
    except ImportError as exc:
        if _interrupted(exc):  # Ctrl-C while TensorFlow started: an interrupt, not a missing package (exit 130)
            raise KeyboardInterrupt from exc
        if not isinstance(exc, ModuleNotFoundError) and available(name.split(".")[0]):  # there but broken: "pip
            # install" of what is installed fixed nothing (a numpy 1.x build under numpy 2, ulimit -v)
            raise MissingDependency(_broken(name, exc, said.getvalue())) from exc
        raise _missing(name, extra, purpose, f" Import failed with: {exc}") from exc
    except BaseException:
        _echo(said.getvalue())
        raise
    else:
        _echo(said.getvalue())
    finally:  # tf2onnx's import sets it to 3 for the rest of the process and its children: the caller's stands
        if os.environ.get("TF_CPP_MIN_LOG_LEVEL") != level:
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL") if level is None else os.environ.update(TF_CPP_MIN_LOG_LEVEL=level)
    if name == "tensorflow":
        _quiet_python_loggers(module)
    if name.split(".")[0] in _KNOWN:
        from tledge.log import library_logging_to_log

        library_logging_to_log()  # their `logging` records into the command's log, not the terminal
    if name == "keras" and getattr(module, "backend", None) is not None and module.backend.backend() != "tensorflow":
        raise MissingDependency(
            f"tledge needs Keras on the TensorFlow backend, this process uses {module.backend.backend()!r} "
            "(KERAS_BACKEND or ~/.keras/keras.json): set KERAS_BACKEND=tensorflow")
    return module


def _interrupted(exc: BaseException) -> bool:
    """Whether an ImportError was made of a KeyboardInterrupt: an extension module's start-up interrupted by
    Ctrl-C surfaces as "initialization failed"."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _echo(text: str) -> None:
    if text:
        import sys

        sys.stderr.write(text)


def not_importing(name: str, exc: BaseException) -> str:
    """Why the installed package `name` does not import (an ImportError, or the OSError of a shared library it loads
    itself), in one line."""
    return _broken(name, exc, "")


def _broken(name: str, exc: ImportError, printed: str) -> str:
    """Why an installed package does not import, in one line, with the fix where it is known."""
    top = name.split(".")[0]
    text = f"{exc} {printed}"
    if "numpy.core.multiarray failed to import" in text or "_ARRAY_API" in text or "compiled using NumPy 1" in text:
        from importlib.metadata import version

        why = (f"it was built for numpy 1.x and numpy {version('numpy')} is installed: pip install 'numpy<2' (or a "
               f"{_KNOWN.get(top, (top,))[0].split(' ')[0]} built for numpy 2: OpenCV 4.10 or later)")
    elif "failed to map segment" in text or "annot allocate memory" in text:
        why = "out of memory while loading it: the process's address-space limit (ulimit -v) or the machine's memory"
    else:
        why = (f"{' '.join(str(exc).split())[:300]} (a library it needs is missing, or the install is broken: pip "
               f"install --force-reinstall {_KNOWN.get(top, (top,))[0].split(' ')[0]})")
    return f"{top} is installed but does not import: {why}"


def _missing(name: str, extra: str | None, purpose: str | None, tail: str = "") -> MissingDependency:
    pip_name, default_extra = _KNOWN.get(name.split(".")[0], (name, None))
    extra = extra or default_extra
    why = f" (needed for {purpose})" if purpose else ""
    also = f", or the whole [{extra}] extra of tledge's wheel (pip install './{WHEEL}[{extra}]')" if extra else ""
    return MissingDependency(f"{name.split('.')[0]} is not installed{why}: pip install {pip_name}{also}.{tail}")


def need(names, purpose: str | None = None) -> None:
    """MissingDependency for the first of `names` that is not installed, found without importing any of them: for
    a command to stop before it writes or loads anything."""
    for name in names:
        if not available(name):
            raise _missing(name, None, purpose)


def _quiet_python_loggers(tf) -> None:
    """TensorFlow's and absl's Python loggers print deprecation notices meant for TF developers: quietened for the
    `tledge` command only; a library call leaves the host program's logger levels as they are."""
    import logging

    from tledge.log import current

    if current() is None:
        return

    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)


def available(name: str) -> bool:
    """True when `name` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def open_library(lib: str):
    """(handle, None) when the shared library `lib` opens, else (None, why): the loader's message without the
    path it repeats at the front. Used by the --delegate check and the Edge TPU loader."""
    import ctypes

    try:
        return ctypes.CDLL(lib), None
    except OSError as exc:
        reason = str(exc).strip()
        if reason.startswith(f"{lib}: "):
            reason = reason[len(lib) + 2:]
        return None, reason or "cannot be opened"


def tflite_schema():
    """The TFLite flatbuffer schema's generated Python: LiteRT's (the runtime extra), else TensorFlow's."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        require("tensorflow", extra="export", purpose="reading TFLite files")
        from tensorflow.lite.python import schema_py_generated as schema
    return schema
