"""What a model file's output comes from, read from an ONNX file's protobuf without the onnx package (a board has
only onnxruntime, whose session shows no graph) or from a TFLite flatbuffer: the op that makes the first output,
through ops that only reshape. Files are mapped, not read: only the graph's pages are touched.
A one-output float model made elsewhere whose output is a Gemm's was read as a probability when its logit fell
in 0..1 (35 of 153 photos for a PyTorch model: the wrong label, exit 0)."""
from __future__ import annotations

import contextlib
import mmap
from pathlib import Path

from tledge.errors import ModelLoadError

PASS = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast", "QuantizeLinear", "DequantizeLinear"}


def _fields(buf: bytes, start: int = 0, end: int | None = None):
    """(field number, wire type, value) of a protobuf message: varints as ints, length-delimited as (start, end)."""
    i, end = start, len(buf) if end is None else end
    while i < end:
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = (i, i + n), i + n
        elif wire in (1, 5):
            value, i = None, i + (8 if wire == 1 else 4)
        else:
            raise ValueError(f"protobuf wire type {wire}")
        if i > end:
            raise ValueError("truncated")
        yield num, wire, value


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[i]
        out |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return out, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def output_op(path: str | Path) -> str | None:
    """The op type that makes the file's first output (looking through PASS ops), or None when unreadable."""
    try:
        with _mapped(path) as buf:
            return _onnx_output_op(buf)
    except (OSError, StopIteration, IndexError, ValueError, TypeError):
        return None


def tflite_output_op(path: str | Path) -> str | None:
    """The TFLite builtin (flatbuf.BUILTIN_NAMES) that makes a .tflite file's first output, or None when unreadable."""
    from tledge.flatbuf import tflite_output_op as read

    try:
        with _mapped(path) as buf:
            return read(buf)
    except (OSError, ValueError, ModelLoadError):
        return None


def metadata_props(path: str | Path) -> dict[str, str]:
    """An ONNX file's metadata_props (ModelProto field 14: key 1, value 2), read without loading the model (a
    file onnxruntime cannot load, e.g. one with mixed float types, still says what it is); ModelLoadError when
    the file is no readable protobuf."""
    try:
        with _mapped(path) as buf:
            out = {}
            for num, wire, span in _fields(buf):
                if num == 14 and wire == 2:
                    entry = {f: bytes(buf[v[0]:v[1]]).decode("utf-8", "replace")
                             for f, w, v in _fields(buf, *span) if w == 2 and f in (1, 2)}
                    out[entry.get(1, "")] = entry.get(2, "")
            return out
    except (OSError, IndexError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"cannot read {Path(path).name} as an ONNX file ({exc})") from None


def op_types(path: str | Path) -> set[str]:
    """The op types of an ONNX file's main graph (empty when unreadable), read without the onnx package."""
    try:
        with _mapped(path) as buf:
            graph = _graph(buf)
            ops = set()
            for num, wire, span in _fields(buf, *graph):
                if num == 1 and wire == 2:  # NodeProto: op_type 4
                    ops |= {buf[v[0]:v[1]].decode("utf-8", "replace") for f, w, v in _fields(buf, *span)
                            if f == 4 and w == 2}
            return ops
    except (OSError, StopIteration, IndexError, ValueError, TypeError):
        return set()


def size_with_data(path: str | Path) -> int:
    """Bytes of a model file with the external data files an ONNX graph's initializers name (TensorProto
    external_data, key `location`): `info` and `bench` gave a 0.84 MB model as its 0.05 MB graph."""
    return sum(f.stat().st_size for f in with_data(path))


def with_data(path: str | Path) -> list[Path]:
    """The model file, then the external data files its ONNX graph's initializers name (inside its folder)."""
    p = Path(path)
    if p.suffix.lower() != ".onnx":
        return [p]
    names: set[str] = set()
    try:
        with _mapped(p) as buf:
            graph = _graph(buf)
            for num, wire, span in _fields(buf, *graph):
                if num == 5 and wire == 2:  # initializer TensorProto: external_data 13 (key 1, value 2)
                    for f, w, v in _fields(buf, *span):
                        if f == 13 and w == 2:
                            entry = {k: bytes(buf[x[0]:x[1]]).decode("utf-8", "replace")
                                     for k, ww, x in _fields(buf, *v) if ww == 2 and k in (1, 2)}
                            if entry.get(1) == "location":
                                names.add(entry.get(2, ""))
    except (OSError, StopIteration, IndexError, ValueError, TypeError):
        return [p]
    files = [p.parent / name for name in sorted(names) if name]
    return [p] + [f for f in files if f.is_file() and f.resolve().is_relative_to(p.parent.resolve())]


def engine_cache_per_model(provider, path: Path):
    """A provider whose TensorRT engine cache folder is one of the model's content (sha256 of the file and its
    external data): onnxruntime names a cached engine by the graph's names and shapes, not its weights, so a
    retrained model of the same architecture in the same file name (every tledge bundle's model_fp32.onnx) ran the
    previous model's engine."""
    if not isinstance(provider, tuple) or not isinstance(provider[1].get("trt_engine_cache_path"), str):
        return provider
    import hashlib
    import os

    from tledge.artifacts import sha256_of

    key = hashlib.sha256(" ".join(sha256_of(f) for f in with_data(path)).encode()).hexdigest()[:16]
    name, opts = provider
    return (name, {**opts, "trt_engine_cache_path": os.path.join(opts["trt_engine_cache_path"], key)})


def _graph(buf) -> tuple[int, int]:
    """The span of a ModelProto's graph (field 7); StopIteration when it has none."""
    return next(v for n, w, v in _fields(buf) if n == 7 and w == 2)


@contextlib.contextmanager
def _mapped(path: str | Path):
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        yield buf


def _onnx_output_op(buf) -> str | None:
    """output_op on the bytes of an ONNX ModelProto: graph 7, its nodes 1 and outputs 12."""
    graph = _graph(buf)
    made: dict[str, tuple[str, str | None]] = {}  # tensor -> (op type, its first input)
    outputs: list[str] = []
    for num, wire, (a, b) in ((n, w, v) for n, w, v in _fields(buf, *graph) if w == 2 and n in (1, 12)):
        if num == 1:  # NodeProto: input 1, output 2, op_type 4
            ins, outs, op = [], [], ""
            for f, w, v in _fields(buf, a, b):
                if w == 2 and f in (1, 2, 4):
                    text = buf[v[0]:v[1]].decode("utf-8", "replace")
                    (ins if f == 1 else outs if f == 2 else [None]).append(text)
                    op = text if f == 4 else op
            for o in outs:
                made[o] = (op, ins[0] if ins else None)
        else:  # ValueInfoProto: name 1
            outputs += [buf[v[0]:v[1]].decode("utf-8", "replace") for f, w, v in _fields(buf, a, b)
                        if f == 1 and w == 2]
    name = outputs[0]
    for _ in range(64):
        op, first = made.get(name, (None, None))
        if op not in PASS or first is None:
            return op
        name = first
    return None
