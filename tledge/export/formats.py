"""The export formats: one typed table looked up by name, and the writer for each."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

from tledge.artifacts import Artifact, exportable, filename_of, lookup
from tledge.contract import Contract, Quant
from tledge.errors import ExportError, TledgeError
from tledge.io import atomic_path, atomic_write_bytes


# The export formats ARE the table's convertible files (tledge.artifacts): no second list here.
Format = Artifact
FORMATS: dict[str, Format] = {a.name: a for a in exportable()}


def select(kinds: Sequence[str], *, int8: bool = False, fp16: bool = False, dynamic: bool = False) -> list[Format]:
    """fp32 of every kind, plus the requested precisions where the kind has them."""
    unknown = set(kinds) - {f.kind for f in FORMATS.values()}
    if unknown or not kinds:
        raise TledgeError(f"unknown format(s) {sorted(unknown) or '(none)'}: choose from tflite, onnx")
    wanted = {"fp32"} | {p for p, on in (("int8", int8), ("fp16", fp16), ("dynamic", dynamic)) if on}
    return [f for f in FORMATS.values() if f.kind in kinds and f.precision in wanted]


def select_pairs(pairs: Sequence[tuple[str, str]]) -> list[Format]:
    """Exactly these (kind, precision) files, plus fp32 of each kind (the exact file, and the ONNX
    int8 quantiser's input), in table order; TledgeError for a pair the table does not have."""
    wanted = {lookup(k, p).name for k, p in pairs} | {f"{k}_fp32" for k, _ in pairs}
    return [f for f in FORMATS.values() if f.name in wanted]


def write(fmt: Format, dst: Path, *, serve, concrete, contract: Contract, calib, folder: Path,
          int8_only: bool = False) -> None:
    """Convert to `dst` atomically, with the file's own contract embedded. `int8_only`: the target runs int8 ops
    only (Edge TPU), so an int8 TFLite file keeps no op float (tledge.export.tflite.CPU_FLOAT_OPS)."""
    if fmt.kind == "tflite":
        _write_tflite(fmt, dst, concrete, contract, calib, int8_only)
    else:
        _write_onnx(fmt, dst, serve, contract, calib, folder)


def _write_tflite(fmt: Format, dst: Path, concrete, contract: Contract, calib, int8_only: bool) -> None:
    from tledge.export import tflite
    from tledge.export.metadata import embed_tflite

    data = tflite.convert(concrete, fmt.precision, calib, float_ops=tflite.float_ops_for(int8_only))
    left = tflite.not_all_int8(data) if int8_only and fmt.precision == "int8" else None
    if left:
        raise ExportError(f"the converter left {left} float (no int8 kernel for them), and the target runs int8 ops "
                          "only: its CPU would run them and all that follows (replace those layers, or export for "
                          "a CPU device)")
    qin, qout, dtype = tflite_io(data)
    contract = contract.for_file(input_dtype=dtype, input_quant=qin, output_quant=qout)
    atomic_write_bytes(dst, embed_tflite(data, with_float_ops(contract, data)))


def with_float_ops(contract: Contract, data: bytes) -> Contract:
    """`contract` with `extra.cpu_float_ops` (op type -> count) where the int8 TFLite file `data` keeps
    tledge.export.tflite.CPU_FLOAT_OPS float."""
    from tledge.export import tflite

    counts = tflite.float_op_counts(data, tflite.CPU_FLOAT_OPS) if contract.input_dtype == "uint8" else {}
    return contract.replace(extra={**contract.extra, "cpu_float_ops": counts}) if counts else contract


def tflite_io(data: bytes) -> tuple[Quant | None, Quant | None, str]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=data)
    i, o = it.get_input_details()[0], it.get_output_details()[0]

    def quant(d):
        scale, zp = d["quantization"]
        return Quant(float(scale), int(zp), d["dtype"].__name__) if scale else None

    qin = quant(i)
    if i["dtype"].__name__ == "uint8" and qin is not None and (abs(qin.scale - 1.0) > 1e-6 or qin.zero_point):
        raise ExportError(f"the int8 file's uint8 input came out at scale {qin.scale:.6g}, zero point "
                          f"{qin.zero_point}, not raw pixels (scale 1, zero point 0) as MediaPipe and other "
                          "clients feed it: a converter change tledge does not handle; please report it")
    return qin, quant(o), i["dtype"].__name__


def _write_onnx(fmt: Format, dst: Path, serve, contract: Contract, calib, folder: Path) -> None:
    """fp32: tf2onnx in the export's ONNX layout; int8: QDQ from that float graph (calibration images
    in the same layout). Both then get the file conventions (uint8 input, description) and their
    own contract (tledge.export.onnx.finish)."""
    from tledge.export import onnx as onnx_export

    conv = onnx_export.Conventions.of(contract)
    if fmt.precision == "fp32":
        model = onnx_export.convert_fp32(serve, contract)
        per_file = conv.file_contract(contract)
    else:
        model, scheme = _onnx_int8(serve, contract, conv, calib, folder)
        per_file = conv.file_contract(contract, onnx_quant=scheme.describe())
    model = onnx_export.finish(model, per_file, conv)
    with atomic_path(dst) as tmp:
        onnx_export.save(model, tmp)


def _onnx_int8(serve, contract: Contract, conv, calib, folder: Path):
    """The QDQ model, quantised from a float-input graph of the export's layout, and the scheme used."""
    from tledge._deps import require
    from tledge.export import onnx as onnx_export

    onnx = require("onnx", extra="export")
    with tempfile.TemporaryDirectory(prefix="tledge-onnx-int8-") as tmpdir:
        src = Path(tmpdir) / "fp32.onnx"
        fp32 = folder / filename_of("onnx", "fp32")
        if fp32.is_file():  # the fp32 file's own graph (same layout and tensor names), float input
            src.write_bytes(onnx_export.float_input(fp32.read_bytes()))
        else:
            onnx_export.save(onnx_export.convert_fp32(serve, contract), src)
        q = Path(tmpdir) / "int8.onnx"
        scheme = onnx_export.quantize_int8(src, q, conv.calib(calib))
        return onnx.load(str(q)), scheme
