"""The export formats: one typed table looked up by name, and the writer for each."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tledge.contract import Contract, Quant
from tledge.errors import TledgeError
from tledge.io import atomic_path, atomic_write_bytes


@dataclass(frozen=True)
class Format:
    name: str
    kind: str  # tflite | onnx
    precision: str  # fp32 | fp16 | dynamic | int8

    @property
    def filename(self) -> str:
        return f"model_{self.precision}.{self.kind}"


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("tflite_fp32", "tflite", "fp32"),
    Format("tflite_fp16", "tflite", "fp16"),
    Format("tflite_dynamic", "tflite", "dynamic"),
    Format("tflite_int8", "tflite", "int8"),
    Format("onnx_fp32", "onnx", "fp32"),
    Format("onnx_int8", "onnx", "int8"),
)}


def select(kinds: Sequence[str], *, int8: bool = False, fp16: bool = False, dynamic: bool = False) -> list[Format]:
    """fp32 of every kind, plus the requested precisions where the kind has them."""
    unknown = set(kinds) - {f.kind for f in FORMATS.values()}
    if unknown or not kinds:
        raise TledgeError(f"unknown format(s) {sorted(unknown) or '(none)'}: choose from tflite, onnx")
    wanted = {"fp32"} | {p for p, on in (("int8", int8), ("fp16", fp16), ("dynamic", dynamic)) if on}
    return [f for f in FORMATS.values() if f.kind in kinds and f.precision in wanted]


def write(fmt: Format, dst: Path, *, serve, concrete, contract: Contract, calib, folder: Path) -> None:
    """Convert to `dst` atomically, with the file's own contract embedded."""
    if fmt.kind == "tflite":
        _write_tflite(fmt, dst, concrete, contract, calib)
    else:
        _write_onnx(fmt, dst, serve, contract, calib, folder)


def _write_tflite(fmt: Format, dst: Path, concrete, contract: Contract, calib) -> None:
    from tledge.export import tflite
    from tledge.export.metadata import embed_tflite

    data = tflite.convert(concrete, fmt.precision, calib)
    qin, qout, dtype = _tflite_io(data)
    atomic_write_bytes(dst, embed_tflite(data, contract.for_file(input_dtype=dtype, input_quant=qin,
                                                                 output_quant=qout)))


def _tflite_io(data: bytes) -> tuple[Quant | None, Quant | None, str]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=data)
    i, o = it.get_input_details()[0], it.get_output_details()[0]

    def quant(d):
        scale, zp = d["quantization"]
        return Quant(float(scale), int(zp), d["dtype"].__name__) if scale else None

    return quant(i), quant(o), i["dtype"].__name__


def _write_onnx(fmt: Format, dst: Path, serve, contract: Contract, calib, folder: Path) -> None:
    from tledge.export import onnx as onnx_export
    from tledge.export.metadata import embed_onnx

    per_file = contract.for_file(input_dtype="float32")
    if fmt.precision == "fp32":
        model = embed_onnx(onnx_export.convert_fp32(serve, contract), per_file)
        with atomic_path(dst) as tmp:
            onnx_export.save(model, tmp)
        return
    fp32 = folder / "model_fp32.onnx"
    with tempfile.TemporaryDirectory() as tmpdir:
        if not fp32.is_file():
            src = Path(tmpdir) / "fp32.onnx"
            onnx_export.save(onnx_export.convert_fp32(serve, contract), src)
        else:
            src = fp32
        q = Path(tmpdir) / "int8.onnx"
        scheme = onnx_export.quantize_int8(src, q, calib)
        import onnx

        model = embed_onnx(onnx.load(str(q)), per_file.replace(extra={"onnx_quant": scheme.describe()}))
        with atomic_path(dst) as tmp:
            onnx_export.save(model, tmp)
