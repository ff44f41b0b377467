"""Inference backends, one table looked up by name. No TensorFlow import at module level.

Each backend opens a file and exposes `inp` / `out` TensorInfo (plus `inputs` / `outputs` for
`tledge info`), `metadata()` (the file's own key -> bytes/str entries) and `run(x) -> y` on arrays
in the tensor's own dtype; quantisation at the boundary is done by EdgeModel.

TFLite: LiteRT (ai-edge-litert), else tflite_runtime (warned: 10-40x slower for int8), else
tensorflow.lite only when TensorFlow is already imported by the caller (warned). ONNX: onnxruntime
with an ordered provider list (TensorRT, CUDA, CPU); providers that are not installed are skipped
and a provider that fails to initialise is dropped and the session retried with the rest.
"""
from __future__ import annotations

import functools
import os
import re
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tledge.artifacts import KINDS
from tledge.contract import Quant
from tledge.errors import ModelLoadError, ModelRunError
from tledge.paths import loadable
from tledge.runtime import litert


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple  # -1 for dynamic
    dtype: str
    quant: Quant | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "quant": None if self.quant is None else self.quant.to_dict()}


_FORKED: "weakref.WeakSet" = weakref.WeakSet()  # TFLite backends alive: their locks are renewed in a fork's child
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: [b.after_fork() for b in list(_FORKED)])

MAX_THREADS = 1024  # the CLI's --threads range: 100000 made LiteRT segfault and onnxruntime start 14,000 threads


def default_threads() -> int:
    """TLEDGE_THREADS, else the number of usable cores (at most 4). A TLEDGE_THREADS that is not a number of threads
    in [1, MAX_THREADS] is refused (it was ignored, or taken whole)."""
    env = os.environ.get("TLEDGE_THREADS", "").strip()
    if env:
        if not (env.isascii() and env.isdigit()) or not 1 <= int(env) <= MAX_THREADS:  # '²' is a digit to isdigit
            from tledge.errors import ArgumentError

            raise ArgumentError(f"TLEDGE_THREADS={env!r}: expected a number of threads in [1, {MAX_THREADS}]")
        return int(env)
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        n = os.cpu_count() or 1
    return max(1, min(4, n))


# ---- TFLite ----------------------------------------------------------------------------------------

def _identity(src) -> tuple | None:
    """(device, inode, size, mtime) of a model file opened by path; None for bytes (nothing to re-read) or a file
    that is gone."""
    if not isinstance(src, str):
        return None
    try:
        st = os.stat(src)
    except OSError:
        return ()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _refuse_bad_scales(path: Path) -> None:
    """A file LiteRT would crash on (a NaN, infinite or non-positive quantisation scale) is refused in one line."""
    import mmap

    from tledge import flatbuf

    try:  # mapped, not read: the scan touches the tensor tables only, never the weights (a 512 MB board)
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            bad = flatbuf.tflite_bad_scales(data) if data[4:8] == flatbuf.TFLITE_IDENTIFIER else []
    except (OSError, ValueError):  # (an empty file cannot be mapped): the interpreter says what is wrong
        return
    if bad:
        name, scale = bad[0]
        more = f" (and {len(bad) - 1} other tensor(s))" if len(bad) > 1 else ""
        raise ModelLoadError(f"cannot load TFLite model {path}: tensor {name[:80]!r} has quantisation scale {scale:g}"
                             f"{more}; LiteRT would crash on it: the file is corrupt")


def load_reason(exc) -> str:
    """A runtime's load error in one line of at most ~300 characters, said plainly where tledge knows it: the cut
    used to end inside a C++ signature before onnxruntime's reason ("Opset 28 is under development"), or inside
    LiteRT's Android advice for a Flex file."""
    text = " ".join(str(exc).split())
    opset = re.search(r"Opset (\d+) is under development|max supported IR version: \d+", text)
    if opset:
        return (f"{opset.group(0)}: the file is newer than this onnxruntime reads; export it at a lower opset / IR "
                "version, or upgrade onnxruntime")
    if "Select TensorFlow op" in text or "Flex" in text and "delegate" in text.lower():
        return ("it uses TensorFlow ops (Flex, SELECT_TF_OPS), which the LiteRT and tflite_runtime interpreters cannot "
                "run: convert it with TFLite builtin ops only")
    if "edgetpu-custom-op" in text:  # (LiteRT's own words pointed at custom-op docs)
        return ("it is compiled for the Edge TPU (edgetpu-custom-op): run it with --device coral-usb (or coral-pcie) "
                "on a machine with the Edge TPU runtime, libedgetpu, or run the plain int8 file it was compiled from")
    return text if len(text) <= 300 else f"{text[:140]} ... {text[-150:]}"


class TFLiteBackend:
    format = "tflite"

    def __init__(self, path: Path, threads: int | None = None, delegates: Sequence = ()):
        mod, self.provider = litert.interpreter_module()
        self.path, self.threads = Path(path), threads or default_threads()
        self.notes: list[str] = []
        loaded = [litert.delegate(mod, d) if isinstance(d, str) else d for d in delegates]
        _refuse_bad_scales(self.path)
        try:
            src = loadable(path)
            self._open = functools.partial(mod.Interpreter, **({"model_path": src} if isinstance(src, str) else
                                                               {"model_content": src}),
                                           num_threads=self.threads, experimental_delegates=loaded or None)
            self._it = self._open()
            self._it.allocate_tensors()
            self._file = _identity(src)  # what a re-open after fork() must find at the path
        except (ValueError, RuntimeError, SystemError) as exc:
            hint = " (tflite_runtime needs numpy<2)" if isinstance(exc, SystemError) else ""
            raise ModelLoadError(f"cannot load TFLite model {path}: {load_reason(exc)}{hint}") from None
        if loaded:
            self.notes.append(f"{len(loaded)} delegate(s) loaded")
        self._check_signatures()
        ins, outs = self._it.get_input_details(), self._it.get_output_details()
        self.inputs = [self._info(d) for d in ins]
        self.outputs = [self._info(d) for d in outs]
        self.inp, self.out = self.inputs[0], self.outputs[0]
        self._in_index, self._out_index = ins[0]["index"], outs[0]["index"]
        self._shape = tuple(int(v) for v in ins[0]["shape"])
        self._lock = threading.Lock()
        self._stale = False  # copied by fork() in the middle of a call: opened again if it refuses
        _FORKED.add(self)

    def _check_signatures(self) -> None:
        """tledge runs a file's first subgraph. With several signatures that must be serving_default's: the converter
        put `a_reversed` before it, and every image went through the other function (accuracy 0.19, exit 0)."""
        keys = list(getattr(self._it, "get_signature_list", dict)() or {})
        if len(keys) < 2:
            return
        from tledge import flatbuf

        first = [k for k, v in flatbuf.tflite_signatures(self.path.read_bytes()).items() if v["subgraph"] == 0]
        if first == ["serving_default"]:
            self.notes.append(f"{len(keys)} signatures: serving_default runs ({', '.join(sorted(keys))})")
            return
        raise ModelLoadError(f"{self.path.name} has {len(keys)} signatures ({', '.join(sorted(keys))}) and tledge runs "
                             f"the first subgraph, {first[0] if first else 'none of them'!r}, not serving_default: "
                             "convert the classifier alone (one signature)")

    def after_fork(self) -> None:
        """In a child made by fork() while another thread was inside `run`: the lock was copied held (the child waited
        on it for ever), and the interpreter with that thread's references to it, which never unwind in the child:
        LiteRT refused every later call ("at least 1 reference to internal data"). A new lock, and the interpreter
        opened again if it refuses one."""
        self._stale = self._lock.locked() and self._it is not None
        self._lock = threading.Lock()

    @staticmethod
    def _info(d) -> TensorInfo:
        scale, zp = d.get("quantization", (0.0, 0))
        dtype = np.dtype(d["dtype"]).name
        quant = Quant(float(scale), int(zp), dtype) if scale and dtype in ("uint8", "int8", "int16") else None
        shape = tuple(int(v) for v in d.get("shape_signature", d["shape"]))
        return TensorInfo(d["name"], shape, dtype, quant)

    def run(self, x: np.ndarray) -> np.ndarray:
        """One call at a time: an interpreter holds its input, output and scratch tensors, so two threads in it at
        once got errors and each other's outputs (onnxruntime sessions need no lock)."""
        with self._lock:
            if x.shape != self._shape and self.inp.shape[0] != -1 and x.shape[1:] == self._shape[1:]:
                # a fixed-batch file (most files made elsewhere): one image at a time
                return np.concatenate([self._run(x[i:i + 1]) for i in range(x.shape[0])])
            return self._run(x)

    def close(self) -> None:
        with self._lock:
            self._it = None

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self._it is None:
            raise ModelRunError(f"{self.path.name} is closed")
        if x.shape != self._shape:
            self._resize(x.shape)
        it = self._it
        try:
            it.set_tensor(self._in_index, x)
            it.invoke()
        except (ValueError, RuntimeError) as exc:
            if self._stale:  # (after_fork: the copy refuses, the references of a call it was in never unwound)
                self._reopen()
                return self._run(x)
            raise ModelRunError(f"{self.path.name} failed on an input of shape {x.shape} {x.dtype}: "
                                f"{str(exc).strip()[:300]}") from None
        self._stale = False  # the copy works: a new interpreter in a forked child is the riskier path (it hung)
        return it.get_tensor(self._out_index)  # a copy (tensor() would be the interpreter's own buffer)

    def _reopen(self) -> None:
        """The interpreter opened again from its file, which must be the one loaded (a re-export replaced it: stale
        tensor indices, "Tensor data is null"; or a file the manifest never vouched for ran)."""
        if self._file is not None and _identity(self._open.keywords.get("model_path")) != self._file:
            raise ModelRunError(f"{self.path.name} changed or went away since it was loaded, and this process was "
                                "forked while another thread was running it: load it again")
        try:
            it = self._open()
            it.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelRunError(f"{self.path.name} could not be opened again after fork(): {exc}") from None
        ins, outs = it.get_input_details(), it.get_output_details()
        self._in_index, self._out_index = ins[0]["index"], outs[0]["index"]
        self._shape, self._it, self._stale = tuple(int(v) for v in ins[0]["shape"]), it, False

    def _resize(self, shape: tuple) -> None:
        try:
            self._it.resize_tensor_input(self._in_index, list(shape), strict=False)
            self._it.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            self._it.resize_tensor_input(self._in_index, list(self._shape), strict=False)  # as it was: usable
            self._it.allocate_tensors()
            raise ModelRunError(f"{self.path.name} does not accept input shape {shape}: {exc}") from None
        self._shape = tuple(shape)

    def metadata(self) -> dict[str, bytes]:
        from tledge.metadata import tflite_metadata

        return tflite_metadata(self.path.read_bytes())

    @property
    def interpreter(self):
        return self._it


# ---- ONNX --------------------------------------------------------------------------------------------

class OnnxBackend:
    format = "onnx"
    DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

    def __init__(self, path: Path, threads: int | None = None, providers: Sequence | None = None):
        from tledge._deps import require

        ort = require("onnxruntime", extra="runtime")
        self.path, self.threads = Path(path), threads or default_threads()
        self.notes: list[str] = []
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._sess = self._session(ort, opts, self._candidates(ort, providers))
        self.provider = self._sess.get_providers()[0]
        self.inputs = [self._info(a) for a in self._sess.get_inputs()]
        self.outputs = [self._info(a) for a in self._sess.get_outputs()]
        self.inp, self.out = self.inputs[0], self.outputs[0]
        self._feed_name, self._fetch = self.inp.name, [self.out.name]

    def _candidates(self, ort, providers: Sequence | None) -> list:
        wanted = list(providers or self.DEFAULT_PROVIDERS)
        unknown = [_pname(p) for p in wanted if _pname(p) not in ort.get_all_providers()]
        if unknown:  # a misspelt name was dropped silently (the CLI's --providers refuses it)
            from tledge.errors import ArgumentError

            raise ArgumentError(f"providers: {', '.join(map(repr, unknown))} not an onnxruntime execution provider "
                                "(e.g. CPUExecutionProvider, CUDAExecutionProvider, TensorrtExecutionProvider)")
        have = set(ort.get_available_providers())
        chosen = [p for p in wanted if _pname(p) in have]
        missing = [_pname(p) for p in wanted if _pname(p) not in have]
        if providers and missing:
            self.notes.append(f"not available in this onnxruntime: {', '.join(missing)}")
        if "CPUExecutionProvider" not in [_pname(p) for p in chosen]:
            chosen.append("CPUExecutionProvider")
        from tledge.runtime.onnxgraph import engine_cache_per_model

        return [engine_cache_per_model(p, self.path) for p in chosen]

    def _session(self, ort, opts, chosen: list):
        last = None
        while chosen:
            try:
                sess = ort.InferenceSession(loadable(self.path), opts, providers=chosen)
            except Exception as exc:  # onnxruntime raises its own exception types
                last = exc
                if len(chosen) == 1 or "NO_SUCHFILE" in str(exc) or "INVALID_PROTOBUF" in str(exc):
                    break
                self.notes.append(f"{_pname(chosen[0])} failed to start ({str(exc).strip()[:120]}); trying "
                                  f"{_pname(chosen[1])}")
                chosen = chosen[1:]
                continue
            dropped = [_pname(p) for p in chosen if _pname(p) not in sess.get_providers()]
            if dropped:
                self.notes.append(f"fell back from {', '.join(dropped)} to {sess.get_providers()[0]}")
            return sess
        raise ModelLoadError(f"cannot load ONNX model {self.path}: {load_reason(last)}")

    @staticmethod
    def _info(a) -> TensorInfo:
        return TensorInfo(a.name, tuple(d if isinstance(d, int) else -1 for d in a.shape), _ort_dtype(a.type))

    def close(self) -> None:
        self._sess = None

    def run(self, x: np.ndarray) -> np.ndarray:
        if self._sess is None:
            raise ModelRunError(f"{self.path.name} is closed")
        try:
            return self._sess.run(self._fetch, {self._feed_name: x})[0]
        except Exception as exc:  # onnxruntime's own exception classes (InvalidArgument, Fail, ...)
            if not type(exc).__module__.startswith("onnxruntime"):
                raise
            raise ModelRunError(f"{self.path.name} failed on an input of shape {x.shape} {x.dtype}: "
                                f"{str(exc).strip()[:300]}") from None

    def metadata(self) -> dict[str, str]:
        return dict(self._meta().custom_metadata_map)

    def describe(self) -> dict:
        meta = self._meta()
        return {"producer": meta.producer_name, "graph": meta.graph_name, "providers": self._sess.get_providers()}

    def _meta(self):
        if self._sess is None:  # info() after close(): an AttributeError before
            raise ModelRunError(f"{self.path.name} is closed")
        return self._sess.get_modelmeta()

    @property
    def session(self):
        return self._sess


def _pname(p) -> str:
    return p[0] if isinstance(p, tuple) else str(p)


def _ort_dtype(t: str) -> str:
    return {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(int8)": "int8",
            "tensor(float16)": "float16", "tensor(int64)": "int64", "tensor(int32)": "int32"}.get(t, t)


# ---- the table ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BackendSpec:
    name: str
    suffix: str
    opener: Callable
    options: tuple[str, ...]  # keyword options the opener takes besides threads


BACKENDS: dict[str, BackendSpec] = {
    "tflite": BackendSpec("tflite", ".tflite", TFLiteBackend, ("delegates",)),
    "onnx": BackendSpec("onnx", ".onnx", OnnxBackend, ("providers",)),
}
assert set(BACKENDS) == set(KINDS), "a backend for every kind of tledge.artifacts' table"
MODEL_SUFFIXES = tuple(spec.suffix for spec in BACKENDS.values())


def backend_for(path: Path) -> BackendSpec:
    for spec in BACKENDS.values():
        if Path(path).suffix.lower() == spec.suffix:
            return spec
    raise ModelLoadError(f"unknown model file type {Path(path).suffix!r} for {path}: expected .tflite or .onnx")


def open_backend(path: Path, threads: int | None = None, **options):
    """Open `path` with the backend of its suffix; options a backend does not take are ignored."""
    spec = backend_for(path)
    kwargs = {k: v for k, v in options.items() if k in spec.options and v}
    return spec.opener(Path(path), threads=threads, **kwargs)
