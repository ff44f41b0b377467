"""Which ONNX int8 quantisation holds on every onnxruntime x86 kernel path?

For an export folder holding model_fp32.onnx and tledge.json (e.g. `tledge export M --formats onnx
--val DIR`), quantise with each scheme in tledge.export.onnx.SCHEMES on --calib images (and/or take the
folder's SHIPPED model_int8.onnx: --shipped) and run the files on --val images under these sessions:
  default   onnxruntime's own choice (fused QLinearConv; VNNI or AVX2 vpmaddubsw kernels by CPU),
  x64qp     session.x64quantprecision=1 (the non-saturating x64 path),
  reference graph optimisation off: QDQ runs as Dequantize -> float op -> Quantize (no int kernels).
Agreement is against the fp32 ONNX file on the same images, run natively. Prints a Markdown table (+ --json).

--emulate-cpu Haswell runs every session a second time in a subprocess under `qemu-x86_64 -cpu Haswell`
(benchmarks/ort_emulation.py): onnxruntime then sees AVX2 without AVX-512/VNNI and dispatches the AVX2
int8 kernels a real Haswell-class CPU gets. Those rows sit beside the native ones (agreement with the
NATIVE fp32 outputs, images whose top-1 differs native vs emulated, max abs native vs emulated).
Emulated timings are meaningless and not taken; emulation is slow (~0.2 s per 224 px MobileNet 0.25 image).

    python benchmarks/int8_onnx_kernels.py EXPORT_DIR --val DIR [--calib DIR] [--schemes u8s8,...|""]
        [--shipped] [--modes default,x64qp] [--limit N] [--threads 1] [--emulate-cpu Haswell] [--labels FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ort_emulation as emu  # noqa: E402

from tledge.export.onnx import SCHEMES  # noqa: E402  (no onnx / onnxruntime import at module level)

MODES = emu.MODES
ALL_SCHEMES = ",".join(SCHEMES)


def cpu_line() -> str:
    """Model name, cores and the int8-relevant flags of this CPU, plus the load average."""
    flags, name = set(), platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    keep = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm") if f in flags]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{name}, {os.cpu_count()} cores, flags {' '.join(keep) or '-'}, load {load}"


def session(path: Path, mode: str, threads: int = 2):
    return emu.session(path, mode, threads)


def run(sess, x: np.ndarray) -> tuple[np.ndarray, float]:
    out = emu.outputs(sess, x, 32)
    name = sess.get_inputs()[0].name
    start = time.perf_counter()
    for i in range(min(30, len(x))):
        sess.run(None, {name: x[i:i + 1]})
    return out, 1000 * (time.perf_counter() - start) / min(30, len(x))


def figures(ref: np.ndarray, out: np.ndarray, labels) -> dict:
    from tledge import stats

    same = np.argmax(out, 1) == np.argmax(ref, 1)
    row = {"agreement": float(same.mean()), "agreement_ci": stats.wilson(int(same.sum()), len(same)),
           "top5": float(stats.topk_agreement(ref, out, min(5, ref.shape[1])).mean())}
    if labels is not None:
        m = stats.mcnemar(np.argmax(ref, 1) == labels, np.argmax(out, 1) == labels)
        row.update(accuracy=float(np.mean(np.argmax(out, 1) == labels)), change=m.change, change_ci=(m.low, m.high))
    return row


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export_dir", type=Path)
    ap.add_argument("--calib", help="calibration images (needed for --schemes)")
    ap.add_argument("--val", required=True)
    ap.add_argument("--labels")
    ap.add_argument("--calib-limit", type=int, default=256)
    ap.add_argument("--limit", type=int, default=100000, help="at most N --val images (an even spread)")
    ap.add_argument("--schemes", default=ALL_SCHEMES, help='comma-separated re-quantisations ("" for none)')
    ap.add_argument("--shipped", action="store_true", help="also the export folder's own model_int8.onnx")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--emulate-cpu", metavar="MODEL", help="also run under qemu-x86_64 -cpu MODEL (e.g. Haswell)")
    ap.add_argument("--json", type=Path)
    return ap.parse_args(argv)


def problem(args) -> str | None:
    """The first bad input, as a one-line message (None when all are fine)."""
    schemes = [s for s in args.schemes.split(",") if s]
    for name in ("model_fp32.onnx", "tledge.json") + (("model_int8.onnx",) if args.shipped else ()):
        if not (args.export_dir / name).is_file():
            return f"{args.export_dir}: no {name} in this export folder"
    if bad := [s for s in schemes if s not in SCHEMES]:
        return f"--schemes: unknown {', '.join(bad)} (known: {ALL_SCHEMES})"
    if bad := [m for m in args.modes.split(",") if m not in MODES]:
        return f"--modes: unknown {', '.join(bad)} (known: {', '.join(MODES)})"
    if not schemes and not args.shipped:
        return "nothing to check: give --schemes and/or --shipped"
    if schemes and not (args.calib and Path(args.calib).is_dir()):
        return f"--calib: {args.calib or 'missing'} is not a folder of images (needed to quantise {schemes[0]})"
    if not Path(args.val).is_dir():
        return f"--val: {args.val} is not a folder"
    if args.labels and not Path(args.labels).is_file():
        return f"--labels: {args.labels} is not a file"
    if args.limit < 1 or args.threads < 1:
        return "--limit and --threads must be at least 1"
    if args.emulate_cpu:
        return emu.unavailable()
    return None


def main(argv=None) -> int:
    args = parse(argv)
    if msg := problem(args):
        print(f"error: {msg}", file=sys.stderr)
        return 2
    from tledge.contract import Contract
    from tledge.labels import read_labels
    from tledge.export.imagesets import load_pixels

    contract = Contract.load(args.export_dir / "tledge.json")
    labels = read_labels(args.labels) if args.labels else contract.labels
    val, y = load_pixels(args.val, contract, args.limit, labels)
    val = val.astype(np.float32)
    modes = args.modes.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        files, qsec = files_to_check(args, contract, labels, Path(tmp))
        jobs = [{"key": f"{name}|{mode}", "path": str(path), "mode": mode, "threads": args.threads}
                for name, path in files for mode in (("default",) if name == "fp32" else modes)]
        native, latency = {}, {}
        for j in jobs:
            native[j["key"]], latency[j["key"]] = run(session(Path(j["path"]), j["mode"], args.threads), val)
        emulated = emu.run_emulated(jobs, val, args.emulate_cpu) if args.emulate_cpu else {}
    ref = native["fp32|default"]
    rows = []
    for j in jobs:
        name, mode = j["key"].split("|")
        row = {"file": name, "mode": mode, "latency_ms": latency[j["key"]], **figures(ref, native[j["key"]], y)}
        if name in qsec:
            row["quantise_s"] = qsec[name]
        if j["key"] in emulated:
            e = emulated[j["key"]]
            row["emulated"] = {**figures(ref, e, y), "cpu": args.emulate_cpu,
                               "top1_differs": int(np.sum(e.argmax(1) != native[j["key"]].argmax(1))),
                               "max_abs_vs_native": float(np.abs(e - native[j["key"]]).max())}
        rows.append(row)
    machine = machine_line(args.emulate_cpu)
    print(f"machine: {machine}; {len(val)} evaluation images, {args.threads}-thread sessions")
    shipped = shipped_form(args.export_dir / "model_int8.onnx") if args.shipped else None
    print(f"shipped: {shipped}\n" if shipped else "")
    print(table(rows, emu.label(args.emulate_cpu) if args.emulate_cpu else None))
    if args.json:
        from tledge.io import atomic_write_text

        report = {"machine": machine, "images": len(val), "shipped": shipped, "rows": rows}
        atomic_write_text(args.json, json.dumps(report, indent=1, default=float))
    return 0


def machine_line(cpu: str | None) -> str:
    line = cpu_line()
    return f"{line}; {emu.label(cpu)} = {emu.qemu_version()} -cpu {cpu}" if cpu else line


def shipped_form(path: Path) -> str:
    """The int8 file's scheme (tledge.export.onnx.scheme_of) and how many convolutions stay float."""
    import onnx

    from tledge.export.onnx import scheme_of

    graph = onnx.load(str(path)).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    floats = [n for n in convs if producer.get(n.input[1]) != "DequantizeLinear"]
    return f"{scheme_of(path).describe()}; {len(floats)} of {len(convs)} convolutions float"


def files_to_check(args, contract, labels, tmp: Path) -> tuple[list[tuple[str, Path]], dict]:
    """(name, path) of fp32, the shipped int8 file (--shipped) and each --schemes re-quantisation."""
    from tledge.export import onnx as onnx_export
    from tledge.export.imagesets import load_pixels

    files = [("fp32", args.export_dir / "model_fp32.onnx")]
    if args.shipped:
        files.append(("shipped", args.export_dir / "model_int8.onnx"))
    schemes, qsec = [s for s in args.schemes.split(",") if s], {}
    if schemes:
        calib, _ = load_pixels(args.calib, contract, args.calib_limit, labels)
        for name in schemes:
            dst = tmp / f"{name}.onnx"
            start = time.perf_counter()
            onnx_export.quantize_int8(files[0][1], dst, calib.astype(np.float32), scheme=onnx_export.SCHEMES[name])
            qsec[name] = time.perf_counter() - start
            files.append((name, dst))
    return files, qsec


def table(rows, emulated: str | None = None) -> str:
    from tledge import stats

    head = "| file | session | agreement [95 %] | top-5 | accuracy | change vs fp32 [95 %] | latency ms |"
    if emulated:
        head += (f" {emulated}: agreement [95 %] | its accuracy | top-1 differs native vs emulated |"
                 " max abs native vs emulated |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        change = stats.fmt_points(r["change"], *r["change_ci"]) if "change" in r else "-"
        line = (f"| {r['file']} | {r['mode']} | {r['agreement']:.3f} {stats.fmt_interval(*r['agreement_ci'])} | "
                f"{r['top5']:.3f} | {r.get('accuracy', float('nan')):.3f} | {change} | {r['latency_ms']:.2f} |")
        if emulated:
            e = r.get("emulated")
            line += (f" {e['agreement']:.3f} {stats.fmt_interval(*e['agreement_ci'])} | "
                     f"{e.get('accuracy', float('nan')):.3f} | {e['top1_differs']} | {e['max_abs_vs_native']:.4g} |"
                     if e else " - | - | - | - |")
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
