"""Bias correction on the converted full-int8 TFLite file (any loader: Keras 3, tf_keras, SavedModel).

The TFLite counterpart of tledge.quant.onnx_bias. int8 weight rounding shifts the mean of every
convolution's output, and the shifts add up through the network. Each CONV_2D, DEPTHWISE_CONV_2D and
FULLY_CONNECTED op of the int8 file gets

    bias_int32[c] -= round(E[sum over taps (Wdq - Wf) x] / bias_scale[c])     (bias_scale = s_in * s_w[c])

with Wdq the file's int8 weight dequantised, Wf the float weight of the same op in the float TFLite
file, and E[x] the float input's mean at every kernel tap over the calibration images, measured on the
float file (SAME padding included: the int8 kernels pad with the input zero point, i.e. float 0).
Analytic per layer (Nagel et al. 2019), so nothing is counted twice; weights, scales and every other
byte stay as they were, so the file stays all-int8 (Edge TPU) and keeps its metadata.

Why the float TFLite file: it comes from the same traced function through the same converter, so its
ops carry the int8 file's weights before rounding (BN folded the same way) and its tensors the same
names; it exists for every loader. Its intermediate tensors are read with the interpreter's
`experimental_preserve_all_tensors`. Each int8 op is paired with a float op by output tensor name,
else by position among the ops of its kind and weight shape, and a pair counts only when the int8
weight is the rounding of the float one (|Wdq - Wf| <= s/2 everywhere); ops that cannot be paired are
skipped and counted, never guessed. An op whose int32 bias is not the rounding of the float bias (already
corrected) is skipped too: correcting a corrected file would add the same shift again.
"""
from __future__ import annotations

import io
import warnings
import zipfile
from dataclasses import dataclass, field

import numpy as np

from tledge._deps import tflite_schema as schema
from tledge.quant import calibdata, moments
from tledge.quant.subset import spread

LINEAR = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
TENSOR_TYPES = {0: np.float32, 2: np.int32, 4: np.int64, 9: np.int8}  # TFLite TensorType -> numpy


@dataclass
class Skips:
    """Ops a graph technique left alone, by reason (kept by every technique's log)."""

    skipped: dict[str, int] = field(default_factory=dict)  # reason -> ops

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def skipped_text(self) -> str:
        skipped = sum(self.skipped.values())
        why = f" ({', '.join(f'{n} {r}' for r, n in sorted(self.skipped.items()))})" if skipped else ""
        return f"{skipped} skipped{why}"


@dataclass
class BiasLog(Skips):
    layers: int = 0  # int8 ops whose bias absorbed a shift
    by_name: int = 0  # of the pairs: found by output tensor name (the rest by position)
    relative_shift: float = 0.0  # mean over layers of mean |shift| / mean |bias|
    changed: int = 0  # int32 bias values that moved

    def summary(self) -> str:
        return (f"bias correction on {self.layers} int8 ops ({self.by_name} paired by tensor name, "
                f"{self.layers - self.by_name} by position), {self.changed} int32 values moved "
                f"(mean |shift| / |bias| {self.relative_shift:.4f}); {self.skipped_text()}")


@dataclass(frozen=True)
class LinearOp:
    kind: str  # one of LINEAR
    input: int  # tensor indices in subgraph 0
    weight: int
    bias: int  # -1: none
    output: int
    options: object  # the op's builtin options (object API)


def load(data: bytes):
    s = schema()
    return s.ModelT.InitFromObj(s.Model.GetRootAs(bytes(data), 0))


def op_kinds(model) -> list[str | None]:
    """The builtin operator name (e.g. "CONV_2D") of every op of subgraph 0 in order (None: a code this
    schema does not know)."""
    names = {v: k for k, v in vars(schema().BuiltinOperator).items() if not k.startswith("_")}
    codes = [names.get(max(c.builtinCode, c.deprecatedBuiltinCode)) for c in model.operatorCodes]
    return [codes[op.opcodeIndex] for op in model.subgraphs[0].operators]


def linear_ops(model) -> list[LinearOp]:
    out = []
    for op, kind in zip(model.subgraphs[0].operators, op_kinds(model)):
        ins = [int(i) for i in op.inputs]
        if kind in LINEAR and len(ins) >= 2:
            out.append(LinearOp(kind, ins[0], ins[1], ins[2] if len(ins) > 2 else -1, int(op.outputs[0]),
                                op.builtinOptions))
    return out


def tensor_array(model, index: int) -> np.ndarray | None:
    t = model.subgraphs[0].tensors[index]
    dtype = TENSOR_TYPES.get(t.type)
    data = model.buffers[t.buffer].data if t.buffer < len(model.buffers) else None
    if dtype is None or data is None or len(data) == 0:
        return None
    return np.frombuffer(np.asarray(data, np.uint8).tobytes(), dtype).reshape([int(d) for d in t.shape])


def tensor_name(model, index: int) -> str:
    raw = model.subgraphs[0].tensors[index].name
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else (raw or "")


def dequantised(model, op: LinearOp) -> tuple[np.ndarray, np.ndarray] | None:
    """(int8 weight dequantised, per-element scale), float64, or None when it is not int8 per-axis."""
    t = model.subgraphs[0].tensors[op.weight]
    q = tensor_array(model, op.weight)
    quant = t.quantization
    if q is None or q.dtype != np.int8 or quant is None or quant.scale is None or len(quant.scale) == 0:
        return None
    scale = np.asarray(quant.scale, np.float64)
    zp = np.asarray(quant.zeroPoint if quant.zeroPoint is not None else [0] * len(scale), np.float64)
    shape = [1] * q.ndim
    if scale.size > 1:
        shape[int(quant.quantizedDimension)] = scale.size
    s = np.broadcast_to(scale.reshape(shape), q.shape)
    return (q.astype(np.float64) - zp.reshape(shape)) * s, s


def pair(q_model, f_model, log: BiasLog, *, steps: float = 0.501,
         plain_bias: bool = False) -> list[tuple[LinearOp, LinearOp, np.ndarray]]:
    """(int8 op, float op, Wdq - Wf) for every int8 linear op whose float twin is found and checked: its
    int8 weight within `steps` grid steps of the float one everywhere (0.501: the rounding of it).
    plain_bias: its int32 bias the rounding of the float one's too, else the op is skipped (bias correction
    moves biases only: a corrected file passed the weight check and got the correction again on top)."""
    f_ops = linear_ops(f_model)
    by_name = {(tensor_name(f_model, f.output), f.kind): f for f in f_ops}
    rank: dict[tuple, list[LinearOp]] = {}
    for f in f_ops:
        rank.setdefault((f.kind, tuple(f_model.subgraphs[0].tensors[f.weight].shape)), []).append(f)
    seen: dict[tuple, int] = {}
    out = []
    for op in linear_ops(q_model):
        key = (op.kind, tuple(q_model.subgraphs[0].tensors[op.weight].shape))
        pos = seen[key] = seen.get(key, -1) + 1
        wq = dequantised(q_model, op)
        if wq is None:
            log.skip("without int8 weights")
            continue
        named = by_name.get((tensor_name(q_model, op.output), op.kind))
        candidates = [named] if named is not None else []
        if pos < len(rank.get(key, [])):
            candidates.append(rank[key][pos])
        for f in candidates:
            wf = _twin_weight(f_model, f, op, wq, steps)
            if wf is not None:
                break
        else:
            log.skip("without a float twin")
            continue
        if plain_bias and not bias_rounded(q_model, f_model, op, f):
            log.skip("with a bias already corrected (not the float one's rounding)")
            continue
        out.append((op, f, wq[0] - wf))
    return out


def bias_rounded(q_model, f_model, op: LinearOp, f: LinearOp) -> bool:
    """Whether the int8 op's int32 bias is the rounding of the float op's bias on its scale (s_in * s_w), within
    1 step plus the converter's float32 error (half a float32 step of the quotient: 64 near 2**30, the clamped
    bias of a dead channel). True when there is no int32 bias to check (`_apply` skips those)."""
    b = tensor_array(q_model, op.bias) if op.bias >= 0 else None
    quant = q_model.subgraphs[0].tensors[op.bias].quantization if b is not None else None
    if b is None or b.dtype != np.int32 or quant is None or quant.scale is None or len(quant.scale) == 0:
        return True
    fb = tensor_array(f_model, f.bias) if f.bias >= 0 else None
    fb = np.zeros(b.size) if fb is None else fb.astype(np.float64).ravel()
    scale = np.asarray(quant.scale, np.float64).ravel()
    if fb.size != b.size or scale.size not in (1, b.size):
        return False
    expected = np.clip(np.round(fb / np.where(scale > 0, scale, np.inf)), -2**31, 2**31 - 1)
    return bool(np.all(np.abs(b.astype(np.float64).ravel() - expected) <= 1 + np.abs(expected) * 2.0**-23))


def _twin_weight(f_model, f: LinearOp, op: LinearOp, wq: tuple[np.ndarray, np.ndarray],
                 steps: float) -> np.ndarray | None:
    """The float weight of `f` (float64) when the int8 op `op`'s weight is its rounding, same geometry."""
    wf = tensor_array(f_model, f.weight)
    if wf is None or wf.dtype != np.float32 or wf.shape != wq[0].shape or op_geometry(f) != op_geometry(op):
        return None
    wf = wf.astype(np.float64)
    return wf if np.all(np.abs(wq[0] - wf) <= steps * wq[1] + 1e-7) else None


def taps(op: LinearOp, kernel: tuple[int, int], x: np.ndarray) -> np.ndarray:
    """Sum over the batch of the mean of input `x` (NHWC) at every kernel tap over all output positions,
    (kh, kw, C) for a convolution (SAME padding as zeros), (C,) for a fully connected op."""
    x = x.astype(np.float64)
    if op.kind == "FULLY_CONNECTED":
        return x.reshape(len(x), -1, x.shape[-1]).mean(1).sum(0)
    o = op.options
    kh, kw = kernel
    sh, sw = int(o.strideH), int(o.strideW)
    dh, dw = int(o.dilationHFactor or 1), int(o.dilationWFactor or 1)
    if int(o.padding) == 0:  # SAME
        ph, pw = moments.tf_pad(x.shape[1], kh, sh, dh, "same")[1:], moments.tf_pad(x.shape[2], kw, sw, dw, "same")[1:]
        x = np.pad(x, ((0, 0), ph, pw, (0, 0)))
    oh, ow = (x.shape[1] - dh * (kh - 1) - 1) // sh + 1, (x.shape[2] - dw * (kw - 1) - 1) // sw + 1
    out = np.empty((kh, kw, x.shape[3]))
    for i in range(kh):
        for j in range(kw):
            win = x[:, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]
            out[i, j] = win.mean((1, 2)).sum(0)
    return out


def kernel_of(op: LinearOp, dw: np.ndarray) -> tuple[int, int]:
    return (1, 1) if op.kind == "FULLY_CONNECTED" else (dw.shape[1], dw.shape[2])


def shift(op: LinearOp, dw: np.ndarray, mean_taps: np.ndarray) -> np.ndarray | None:
    """Expected output shift per output channel of weight error `dw` (TFLite layout) on inputs with these
    tap means; None when the shapes do not fit (a grouped convolution, an unusual layout)."""
    if op.kind == "FULLY_CONNECTED":  # dw (O, I)
        return dw @ mean_taps if dw.ndim == 2 and dw.shape[1] == mean_taps.size else None
    if op.kind == "DEPTHWISE_CONV_2D":  # dw (1, kh, kw, C * multiplier): output c*m + j reads input c
        cin = mean_taps.shape[-1]
        if dw.shape[-1] % cin:
            return None
        return np.einsum("kln,kln->n", dw[0], np.repeat(mean_taps, dw.shape[-1] // cin, axis=2))
    if dw.shape[1:] != mean_taps.shape:  # CONV_2D dw (O, kh, kw, I); a grouped one has I < C
        return None
    return np.einsum("okli,kli->o", dw, mean_taps)


def interpreter(data: bytes):
    """A LiteRT interpreter for the file `data` that keeps every intermediate tensor readable (builtin
    kernels, no delegate: a delegate's internal tensors are not the interpreter's; one thread)."""
    from tledge._deps import require

    require("ai_edge_litert", extra="runtime")
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    with warnings.catch_warnings():  # "for debugging purposes only": keeping them is the point here
        warnings.simplefilter("ignore")
        it = Interpreter(model_content=bytes(data), experimental_preserve_all_tensors=True, num_threads=1,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    return it


def tap_means(fp32: bytes, pairs, calib: np.ndarray) -> dict[int, np.ndarray]:
    """Float op input tensor -> its tap means over `calib`, from the float file run with every
    intermediate tensor kept."""
    it = interpreter(fp32)
    inp = it.get_input_details()[0]
    sums: dict[tuple, np.ndarray] = {}
    for x in calib:
        it.set_tensor(inp["index"], np.asarray(x, np.float32).reshape(inp["shape"]))
        it.invoke()
        for op, f, dw in pairs:
            key = (f.input, op.kind, kernel_of(op, dw), op_geometry(f))
            sums[key] = sums.get(key, 0) + taps(f, kernel_of(op, dw), it.get_tensor(f.input))
    return {k: v / len(calib) for k, v in sums.items()}


def op_geometry(op: LinearOp) -> tuple:
    o = op.options
    if op.kind == "FULLY_CONNECTED":
        return ()
    return (int(o.padding), int(o.strideH), int(o.strideW), int(o.dilationHFactor or 1), int(o.dilationWFactor or 1))


def correct(int8: bytes, fp32: bytes, calib: np.ndarray, *, images: int = 64,
            steps: float = 0.501) -> tuple[bytes, BiasLog]:
    """The int8 TFLite file `int8` with every pairable linear op's int32 bias absorbing the expected
    output shift of its int8 weights; `fp32` is the float TFLite file of the same model. Metadata
    entries and files packed after the flatbuffer (labels.txt) are kept."""
    calib = calibdata.checked(calib)
    q_model, f_model = load(int8), load(fp32)
    log = BiasLog()
    pairs = pair(q_model, f_model, log, steps=steps, plain_bias=True)
    means = tap_means(fp32, pairs, np.asarray(spread(calib, images), np.float32)) if pairs else {}
    rel = []
    for op, f, dw in pairs:
        s = shift(op, dw, means[(f.input, op.kind, kernel_of(op, dw), op_geometry(f))])
        moved = None if s is None else _apply(q_model, op, s, log)
        if moved is not None:  # counted by name here, once applied: a paired op skipped later is not a layer
            log.layers += 1
            log.by_name += tensor_name(q_model, op.output) == tensor_name(f_model, f.output)
            log.changed += moved[0]
            rel.append(moved[1])
        elif s is None:
            log.skip("with an unsupported layout")
    log.relative_shift = float(np.mean(rel)) if rel else 0.0
    return repack(bytes(int8), pack(q_model)), log


def pack(model) -> bytes:
    """The flatbuffer of a model read with `load` (object API)."""
    import flatbuffers

    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _apply(model, op: LinearOp, s: np.ndarray, log: BiasLog) -> tuple[int, float] | None:
    """Subtract shift `s` (float) from the op's int32 bias in place; (values moved, |shift| / |bias|)."""
    sg = model.subgraphs[0]
    if op.bias < 0:
        log.skip("without a bias tensor")
        return None
    t = sg.tensors[op.bias]
    b = tensor_array(model, op.bias)
    users = sum(1 for u in sg.tensors if u.buffer == t.buffer)
    quant = t.quantization
    if b is None or b.dtype != np.int32 or b.size != s.size or users > 1 or quant is None or quant.scale is None:
        log.skip("with a bias that is not its own int32 tensor")
        return None
    scale = np.broadcast_to(np.asarray(quant.scale, np.float64), s.shape)
    step = np.round(s / np.where(scale > 0, scale, np.inf))
    new = np.clip(b.astype(np.int64) - step.astype(np.int64).reshape(b.shape), -2**31, 2**31 - 1).astype("<i4")
    model.buffers[t.buffer].data = np.frombuffer(new.tobytes(), np.uint8).copy()
    fb = b.astype(np.float64).ravel() * scale
    return int(np.count_nonzero(new != b)), float(np.mean(np.abs(s)) / (np.mean(np.abs(fb)) + 1e-6))


def repack(original: bytes, flatbuffer: bytes) -> bytes:
    """`flatbuffer` with the files `original` carried after its flatbuffer (a zip: labels.txt) packed again."""
    from tledge.std_metadata import pack_files

    if not zipfile.is_zipfile(io.BytesIO(original)):
        return flatbuffer
    with zipfile.ZipFile(io.BytesIO(original)) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    return pack_files(flatbuffer, files) if files else flatbuffer
