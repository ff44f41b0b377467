"""int8 ONNX files on onnxruntime's x86 kernel paths (issue 11): the default session (what `tledge run`
uses: VNNI or AVX2 vpmaddubsw fused kernels), `session.x64quantprecision` (the non-saturating x64 path) and
graph optimisation off (QDQ as Dequantize -> float op -> Quantize). Run at export on every int8 ONNX
file; the note in parity.md carries this CPU's flags."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from tledge._deps import require
from tledge.errors import TledgeWarning
from tledge.paths import loadable


# ---- the same file on onnxruntime's other x86 kernel paths ------------------------------------------
KERNEL_PATHS = {
    "default": {},  # what `tledge run` uses: fused int8 kernels chosen by CPU (VNNI or AVX2 vpmaddubsw)
    "x64quantprecision": {"session.x64quantprecision": "1"},  # the non-saturating x64 path
    "reference": None,  # graph optimisation off: QDQ as Dequantize -> float op -> Quantize, no int kernels
}


def run_paths(path: Path, pixels: np.ndarray, threads: int | None = None) -> dict[str, np.ndarray]:
    """Outputs of one ONNX file under each of KERNEL_PATHS (batches of 32)."""
    ort = require("onnxruntime", extra="runtime")
    outs = {}
    for name, entries in KERNEL_PATHS.items():
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        if entries is None:
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        for key, value in (entries or {}).items():
            so.add_session_config_entry(key, value)
        sess = ort.InferenceSession(loadable(path), so, providers=["CPUExecutionProvider"])
        meta = sess.get_inputs()[0]
        x = _as_input(pixels, meta.shape, meta.type)
        outs[name] = np.concatenate([sess.run(None, {meta.name: x[i:i + 32]})[0] for i in range(0, len(x), 32)])
    return outs


def _as_input(pixels: np.ndarray, shape, dtype: str) -> np.ndarray:
    """NHWC raw pixels as the file takes them (NCHW files: --layout nchw; uint8 files: --onnx-input uint8)."""
    x = pixels
    if len(shape) == 4 and shape[1] == x.shape[-1] and shape[-1] != x.shape[-1]:
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, np.uint8 if dtype == "tensor(uint8)" else np.float32)


def cpu_flags() -> str:
    """This CPU's int8-relevant instruction sets, for parity.md ('x86_64: avx2 avx512_vnni ...')."""
    import platform

    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")) and ":" in line:
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    keep = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm", "sve")
    return f"{platform.machine()}: {' '.join(f for f in keep if f in flags) or 'no int8 dot-product extensions'}"


def kernel_check(path: Path, pixels: np.ndarray, threads: int | None = None,
                 independent: bool = False) -> tuple[str, bool]:
    """Top-1 agreement (label sets for `independent` scores) of the file's default session with the other paths:
    (note, consistent?). Only the int kernel paths count for `consistent`; the unfused float emulation is reported
    beside them (fused integer requantisation rounds differently from Dequantize -> float -> Quantize)."""
    from tledge.contract import decision_name, same_decision

    outs = run_paths(path, pixels, threads)
    figures = {name: (float(np.mean(same_decision(outs["default"], out, independent))),
                      float(np.abs(out - outs["default"]).max()))
               for name, out in outs.items() if name != "default"}
    x64, ref = figures["x64quantprecision"], figures["reference"]
    note = (f"{path.name} on onnxruntime's kernel paths ({cpu_flags()}): {decision_name(independent)} agreement "
            "with the default "
            f"session, x64quantprecision {x64[0]:.3f} (max abs {x64[1]:.3g}); unfused float emulation "
            f"{ref[0]:.3f} (max abs {ref[1]:.3g}); {len(pixels)} images; {_reach(path)}")
    return note, x64[0] >= 0.995


def _reach(path: Path) -> str:
    """What these figures can and cannot show (they read as if both x86 paths had been run): this CPU runs one
    kernel path, and x64quantprecision rewrites int8 weights only."""
    onnx = require("onnx", extra="export")
    model = onnx.load_from_string(Path(path).read_bytes())
    types = {i.name: i.data_type for i in model.graph.initializer}
    s8 = any(types.get(n.input[0]) == onnx.TensorProto.INT8 for n in model.graph.node
             if n.op_type == "DequantizeLinear")
    vnni = any(f in cpu_flags().split() for f in ("avx512_vnni", "avx_vnni", "amx_int8"))
    weights = ("int8 weights: their u8 x s8 pair sums were replayed on the calibration images at export, none over "
               "int16" if s8 else "uint8 weights: no u8 x s8 products, so no int16 saturation on AVX2 CPUs without "
               "VNNI, and x64quantprecision (int8 weights only) agrees by construction")
    where = ("this CPU's default session takes the VNNI path, not AVX2's vpmaddubsw (docs/int8-fidelity.md: the "
             "AVX2 path emulated)" if vnni else "")
    return "; ".join(p for p in (weights, where) if p)


def kernel_notes(results: Sequence, out: Path, pixels: np.ndarray, threads: int | None = None,
                 independent: bool = False) -> list[str]:
    """Each int8 ONNX file run on onnxruntime's x86 kernel paths (default, x64quantprecision, reference):
    one note per file with this CPU's flags; a warning when the paths disagree."""
    notes = []
    for r in results:
        path = out / r.file
        if r.format != "onnx" or r.precision != "int8" or not path.is_file():
            continue
        try:
            note, same = kernel_check(path, pixels[:256], threads, independent)
        except Exception as exc:  # a check of the check: never break an export
            notes.append(f"{r.file}: kernel-path check unavailable ({exc.__class__.__name__}: {str(exc)[:120]})")
            continue
        notes.append(note)
        if not same:
            warnings.warn(f"{r.file} answers differently on onnxruntime's kernel paths: {note}", TledgeWarning,
                          stacklevel=3)
    return notes
