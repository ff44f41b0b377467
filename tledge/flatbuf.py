"""A minimal FlatBuffers reader (pure Python, no dependency) and the few TFLite `Model` fields tledge reads.

Enough of the FlatBuffers binary format to walk tables, strings, vectors and unions, so the runtime
reads metadata with nothing but the standard library (a venv with only tflite-runtime, numpy and
OpenCV). Field slots are numbered from 0 in declaration order, as in the `.fbs` schema; a union
takes two slots (its type, then its value). Field numbers of the TFLite schema (tensorflow/lite/schema/
schema.fbs, table Model and the tables it points to) are in the constants below.
"""
from __future__ import annotations

import struct
from tledge.errors import ModelLoadError


class Table:
    """One table of a flatbuffer: `buf` the whole buffer, `pos` where the table starts."""

    __slots__ = ("buf", "pos", "_vt", "_vt_len")

    def __init__(self, buf: bytes, pos: int):
        self.buf, self.pos = buf, pos
        try:
            self._vt = pos - struct.unpack_from("<i", buf, pos)[0]
            self._vt_len = struct.unpack_from("<H", buf, self._vt)[0]
        except struct.error:
            raise ModelLoadError("corrupt flatbuffer (a table points outside the file)") from None

    @classmethod
    def root(cls, buf: bytes, identifier: bytes | None = None) -> "Table":
        if len(buf) < 8:
            raise ModelLoadError("not a flatbuffer (shorter than 8 bytes)")
        if identifier is not None and buf[4:8] != identifier:
            raise ModelLoadError(f"not a flatbuffer of the expected kind (identifier {buf[4:8]!r}, "
                                 f"expected {identifier!r})")
        return cls(buf, struct.unpack_from("<I", buf, 0)[0])

    def _field(self, slot: int) -> int:
        """Absolute position of field `slot`, or 0 when absent."""
        entry = 4 + 2 * slot
        if entry >= self._vt_len:
            return 0
        off = struct.unpack_from("<H", self.buf, self._vt + entry)[0]
        return self.pos + off if off else 0

    def _indirect(self, at: int) -> int:
        return at + struct.unpack_from("<I", self.buf, at)[0]

    def has(self, slot: int) -> bool:
        return self._field(slot) != 0

    def scalar(self, slot: int, fmt: str, default=0):
        at = self._field(slot)
        return struct.unpack_from("<" + fmt, self.buf, at)[0] if at else default

    def string(self, slot: int) -> str | None:
        at = self._field(slot)
        if not at:
            return None
        return self.raw_vector(self._indirect(at)).decode("utf-8", "replace")

    def blob(self, slot: int) -> bytes | None:
        at = self._field(slot)
        return self.raw_vector(self._indirect(at)) if at else None

    def raw_vector(self, start: int, item: int = 1) -> bytes:
        n = struct.unpack_from("<I", self.buf, start)[0]
        end = start + 4 + n * item
        if end > len(self.buf):
            raise ModelLoadError("corrupt flatbuffer (a vector runs past the end of the file)")
        return bytes(self.buf[start + 4:end])

    def table(self, slot: int) -> "Table | None":
        at = self._field(slot)
        return Table(self.buf, self._indirect(at)) if at else None

    def _vector(self, slot: int, item: int) -> tuple[int, int]:
        """(position of the first element, length) of the vector in `slot`; (0, 0) when absent."""
        at = self._field(slot)
        if not at:
            return 0, 0
        start = self._indirect(at)
        n = struct.unpack_from("<I", self.buf, start)[0]
        if start + 4 + n * item > len(self.buf):
            raise ModelLoadError("corrupt flatbuffer (a vector runs past the end of the file)")
        return start + 4, n

    def tables(self, slot: int) -> list["Table"]:
        first, n = self._vector(slot, 4)
        return [Table(self.buf, self._indirect(first + 4 * i)) for i in range(n)]

    def scalars(self, slot: int, fmt: str) -> tuple:
        first, n = self._vector(slot, struct.calcsize("<" + fmt))
        return struct.unpack_from(f"<{n}{fmt}", self.buf, first) if n else ()

    def strings(self, slot: int) -> list[str]:
        first, n = self._vector(slot, 4)
        return [self.raw_vector(self._indirect(first + 4 * i)).decode("utf-8", "replace") for i in range(n)]

    def union(self, type_slot: int) -> tuple[int, "Table | None"]:
        """(type, table) of the union whose type is in `type_slot` and value in the next slot."""
        kind = self.scalar(type_slot, "B", 0)
        return kind, (self.table(type_slot + 1) if kind else None)


# ---- the TFLite model schema (tensorflow/lite/schema/schema.fbs), the fields read here ----------------
TFLITE_IDENTIFIER = b"TFL3"
MODEL_OPERATOR_CODES, MODEL_SUBGRAPHS, MODEL_BUFFERS, MODEL_METADATA, MODEL_SIGNATURE_DEFS = 1, 2, 4, 6, 7
OPCODE_DEPRECATED_BUILTIN, OPCODE_CUSTOM, OPCODE_BUILTIN = 0, 1, 3
SUBGRAPH_OPERATORS = 3
OPERATOR_OPCODE_INDEX, OPERATOR_INPUTS, OPERATOR_OUTPUTS = 0, 1, 2
# BuiltinOperator values (schema.fbs) of the ops output_op names; any other builtin is named by its number
BUILTIN_NAMES = {0: "ADD", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D", 6: "DEQUANTIZE", 9: "FULLY_CONNECTED",
                 14: "LOGISTIC", 22: "RESHAPE", 25: "SOFTMAX", 40: "MEAN", 43: "SQUEEZE", 114: "QUANTIZE",
                 126: "BATCH_MATMUL"}
# ops that only reshape or change the type: output_op looks through them
TFLITE_PASS = {"RESHAPE", "SQUEEZE", "DEQUANTIZE", "QUANTIZE"}
BUFFER_DATA, BUFFER_OFFSET, BUFFER_SIZE = 0, 1, 2
METADATA_NAME, METADATA_BUFFER = 0, 1
SUBGRAPH_TENSORS, SUBGRAPH_INPUTS, SUBGRAPH_OUTPUTS = 0, 1, 2
TENSOR_SHAPE, TENSOR_TYPE, TENSOR_NAME, TENSOR_QUANTIZATION, TENSOR_SHAPE_SIGNATURE = 0, 1, 3, 4, 7
TENSOR_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 7: "int16", 9: "int8"}  # (schema.fbs TensorType)
QUANT_SCALE, QUANT_ZERO_POINT = 2, 3
SIGNATURE_INPUTS, SIGNATURE_OUTPUTS, SIGNATURE_KEY, SIGNATURE_SUBGRAPH = 0, 1, 2, 4
TENSORMAP_NAME, TENSORMAP_INDEX = 0, 1


def guarded(fn):
    """Any out-of-range read of a corrupt file becomes a ModelLoadError (one line, no traceback)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (struct.error, IndexError, OverflowError) as exc:
            raise ModelLoadError(f"corrupt flatbuffer ({exc})") from None
    return wrapper


def tflite_model(data: bytes) -> Table:
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise ModelLoadError("not a TFLite flatbuffer (missing the TFL3 identifier)")
    return Table.root(data)


@guarded
def tflite_metadata_entries(data: bytes) -> list[tuple[str, bytes]]:
    """(name, payload) of each `Model.metadata` entry of a TFLite flatbuffer."""
    out = []
    model = tflite_model(data)
    buffers = model.tables(MODEL_BUFFERS)
    for md in model.tables(MODEL_METADATA):
        name = md.string(METADATA_NAME) or ""
        index = md.scalar(METADATA_BUFFER, "I", 0)
        if index >= len(buffers):
            raise ModelLoadError(f"corrupt TFLite file: metadata {name!r} points at buffer {index} of {len(buffers)}")
        buf = buffers[index]
        payload = buf.blob(BUFFER_DATA)
        if not payload:
            offset, size = buf.scalar(BUFFER_OFFSET, "Q", 0), buf.scalar(BUFFER_SIZE, "Q", 0)
            payload = bytes(data[offset:offset + size]) if offset > 1 else b""  # large models: after the flatbuffer
        out.append((name, payload))
    return out


@guarded
def tflite_custom_codes(data: bytes) -> list[str]:
    """The custom operator names a TFLite file uses (`edgetpu-custom-op` in an edgetpu_compiler output)."""
    return [c for c in (oc.string(OPCODE_CUSTOM) for oc in tflite_model(data).tables(MODEL_OPERATOR_CODES)) if c]


@guarded
def tflite_signatures(data: bytes) -> dict[str, dict]:
    """signature key -> {"inputs": {name: tensor index}, "outputs": {...}, "subgraph": i}."""
    out = {}
    for sig in tflite_model(data).tables(MODEL_SIGNATURE_DEFS):
        def names(slot):
            return {m.string(TENSORMAP_NAME): m.scalar(TENSORMAP_INDEX, "I", 0) for m in sig.tables(slot)}
        out[sig.string(SIGNATURE_KEY) or ""] = {"inputs": names(SIGNATURE_INPUTS), "outputs": names(SIGNATURE_OUTPUTS),
                                                "subgraph": sig.scalar(SIGNATURE_SUBGRAPH, "I", 0)}
    return out


@guarded
def tflite_io_tensors(data: bytes, subgraph: int = 0) -> dict[str, list[dict]]:
    """{"inputs": [...], "outputs": [...]} of one subgraph: name, shape, shape_signature of each tensor."""
    sg = tflite_model(data).tables(MODEL_SUBGRAPHS)[subgraph]
    tensors = sg.tables(SUBGRAPH_TENSORS)

    def info(i):
        t = tensors[i]
        q = t.table(TENSOR_QUANTIZATION)
        return {"index": i, "name": t.string(TENSOR_NAME) or "", "shape": list(t.scalars(TENSOR_SHAPE, "i")),
                "type": TENSOR_TYPES.get(t.scalar(TENSOR_TYPE, "b", 0), "other"),
                "shape_signature": list(t.scalars(TENSOR_SHAPE_SIGNATURE, "i")) or None,
                "quant": (list(q.scalars(QUANT_SCALE, "f")), list(q.scalars(QUANT_ZERO_POINT, "q"))) if q else None}
    return {"inputs": [info(i) for i in sg.scalars(SUBGRAPH_INPUTS, "i")],
            "outputs": [info(i) for i in sg.scalars(SUBGRAPH_OUTPUTS, "i")]}


@guarded
def tflite_output_op(data) -> str | None:
    """The builtin op (a BUILTIN_NAMES name, a custom op's name, or "BUILTIN_<n>") that makes the first output of
    subgraph 0, looking through TFLITE_PASS ops; None when no op makes it."""
    model = tflite_model(data)
    codes = model.tables(MODEL_OPERATOR_CODES)
    sg = model.tables(MODEL_SUBGRAPHS)[0]
    made = {}  # tensor index -> (op name, its first input)
    for op in sg.tables(SUBGRAPH_OPERATORS):
        code = codes[op.scalar(OPERATOR_OPCODE_INDEX, "I", 0)]
        builtin = max(code.scalar(OPCODE_DEPRECATED_BUILTIN, "b", 0), code.scalar(OPCODE_BUILTIN, "i", 0))
        name = code.string(OPCODE_CUSTOM) if builtin == 32 else BUILTIN_NAMES.get(builtin, f"BUILTIN_{builtin}")
        ins = op.scalars(OPERATOR_INPUTS, "i")
        for t in op.scalars(OPERATOR_OUTPUTS, "i"):
            made[t] = (name, ins[0] if ins else None)
    outputs = sg.scalars(SUBGRAPH_OUTPUTS, "i")
    tensor = outputs[0] if outputs else None
    for _ in range(64):
        name, first = made.get(tensor, (None, None))
        if name not in TFLITE_PASS or first is None:
            return name
        tensor = first
    return None


@guarded
def tflite_bad_scales(data) -> list[tuple[str, float]]:
    """(tensor name, scale) of every tensor with a NaN or infinite quantisation scale, or a per-tensor scale of zero
    or less. LiteRT does not check them: `allocate_tensors` or the first call crashed the process (SIGSEGV or abort,
    no message). A zero among per-channel scales (a weight channel that is all zeros) is left to LiteRT, which runs
    it or refuses it with an error."""
    import math

    bad = []
    for sg in tflite_model(data).tables(MODEL_SUBGRAPHS):
        for t in sg.tables(SUBGRAPH_TENSORS):
            q = t.table(TENSOR_QUANTIZATION)
            scales = q.scalars(QUANT_SCALE, "f") if q is not None else ()
            # (a sum in C first: float32 values summed in doubles cannot overflow, so only NaN or inf make it
            # non-finite; a loop in Python over every per-channel scale cost 28 ms a load of MobileNetV2)
            if math.isfinite(sum(scales)) and not (len(scales) == 1 and scales[0] <= 0):
                continue
            bad.append((t.string(TENSOR_NAME) or "", next((s for s in scales if not math.isfinite(s)), scales[0])))
    return bad
