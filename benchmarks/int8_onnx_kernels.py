"""Which ONNX int8 quantisation holds on every onnxruntime x86 kernel path?

For an export folder holding model_fp32.onnx and tledge.json (e.g. `tledge export M --formats onnx
--val DIR`), quantise with each scheme in tledge.export.onnx.SCHEMES on --calib images and run the file
on --val images under three session settings:
  default   onnxruntime's own choice (fused QLinearConv; VNNI or AVX2 vpmaddubsw kernels by CPU),
  x64qp     session.x64quantprecision=1 (the non-saturating x64 path),
  reference graph optimisation off: QDQ runs as Dequantize -> float op -> Quantize (no int kernels).
Agreement is against the fp32 ONNX file on the same images. Prints a Markdown table (+ --json).

    python benchmarks/int8_onnx_kernels.py EXPORT_DIR --calib DIR --val DIR [--labels FILE]
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

MODES = ("default", "x64qp", "reference")


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
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if mode == "x64qp":
        so.add_session_config_entry("session.x64quantprecision", "1")
    if mode == "reference":
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run(sess, x: np.ndarray) -> tuple[np.ndarray, float]:
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: x[i:i + 32]})[0] for i in range(0, len(x), 32)]
    start = time.perf_counter()
    for i in range(min(30, len(x))):
        sess.run(None, {name: x[i:i + 1]})
    return np.concatenate(outs), 1000 * (time.perf_counter() - start) / min(30, len(x))


def figures(ref: np.ndarray, out: np.ndarray, labels) -> dict:
    from tledge import stats

    same = np.argmax(out, 1) == np.argmax(ref, 1)
    row = {"agreement": float(same.mean()), "agreement_ci": stats.wilson(int(same.sum()), len(same)),
           "top5": float(stats.topk_agreement(ref, out, 5).mean())}
    if labels is not None:
        m = stats.mcnemar(np.argmax(ref, 1) == labels, np.argmax(out, 1) == labels)
        row.update(accuracy=float(np.mean(np.argmax(out, 1) == labels)), change=m.change, change_ci=(m.low, m.high))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export_dir", type=Path)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--val", required=True)
    ap.add_argument("--labels")
    ap.add_argument("--calib-limit", type=int, default=256)
    ap.add_argument("--schemes", default=",".join(__import__("tledge.export.onnx", fromlist=["x"]).SCHEMES))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    from tledge.contract import Contract, read_labels
    from tledge.export import onnx as onnx_export
    from tledge.export.pipeline import load_pixels

    contract = Contract.load(args.export_dir / "tledge.json")
    labels = read_labels(args.labels) if args.labels else contract.labels
    calib, _ = load_pixels(args.calib, contract, args.calib_limit, labels)
    val, y = load_pixels(args.val, contract, 100000, labels)
    fp32 = args.export_dir / "model_fp32.onnx"
    ref, ref_ms = run(session(fp32, "default"), val)
    rows = [{"scheme": "fp32", "mode": "default", "agreement": 1.0, "latency_ms": ref_ms,
             **({"accuracy": float(np.mean(np.argmax(ref, 1) == y))} if y is not None else {})}]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.schemes.split(","):
            dst = Path(tmp) / f"{name}.onnx"
            start = time.perf_counter()
            onnx_export.quantize_int8(fp32, dst, calib.astype(np.float32), scheme=onnx_export.SCHEMES[name])
            qsec = time.perf_counter() - start
            for mode in MODES:
                out, ms = run(session(dst, mode), val)
                rows.append({"scheme": name, "mode": mode, "latency_ms": ms, "quantise_s": qsec,
                             **figures(ref, out, y)})
    print(f"machine: {cpu_line()}; {len(calib)} calibration / {len(val)} evaluation images\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": cpu_line(), "rows": rows}, indent=1))
    return 0


def table(rows) -> str:
    from tledge import stats

    lines = ["| scheme | session | agreement [95 %] | top-5 | accuracy | change vs fp32 [95 %] | latency ms |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = f" {stats.fmt_interval(*r['agreement_ci'])}" if "agreement_ci" in r else ""
        change = stats.fmt_points(r["change"], *r["change_ci"]) if "change" in r else "-"
        lines.append(f"| {r['scheme']} | {r['mode']} | {r['agreement']:.3f}{ci} | {r.get('top5', 1.0):.3f} | "
                     f"{r.get('accuracy', float('nan')):.3f} | {change} | {r['latency_ms']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
