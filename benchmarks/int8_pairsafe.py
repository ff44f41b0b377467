"""Pair-safe U8S8 (lab.quant.pairsafe) against the u8u8-grid file an export shipped, on both x86 kernel paths.

For an export folder holding model_fp32.onnx, tledge.json and a model_int8.onnx with uint8 weights on the int8 grid
(zero point 128; what tledge's export writes when a u8s8 pair would saturate): that file's weights as int8 (exact: minus 128), the
same made pair-safe, and plain `u8u8-grid` / `u8s8` / pair-safe quantisations of the fp32 file on --calib images.
Each runs on --val images natively and, with --emulate-cpu Haswell, under qemu (benchmarks/ort_emulation.py: AVX2
without VNNI, the saturating vpmaddubsw kernels). Prints agreement with the fp32 file [95 % Wilson], the photos whose
top-1 differs from the matching u8u8-grid file's, native vs emulated flips, the saturation replay's count, and
(--rounds) batch-1 one-thread latency of the files in turns. docs/int8-fidelity.md, "Pair-safe U8S8 weights".

    python benchmarks/int8_pairsafe.py EXPORT_DIR --calib DIR --val DIR [--limit N] [--modes default,x64qp]
        [--emulate-cpu Haswell] [--rounds 15]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ort_emulation as emu  # noqa: E402


def int8_weights(data: bytes) -> bytes:
    """A QDQ file's uint8 weights with zero point 128 (the symmetric int8 grid) as the same int8 values, zero point 0."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load_from_string(data)
    inits = {i.name: i for i in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    for n in m.graph.node:
        dq = producer.get(n.input[1]) if n.op_type in ("Conv", "MatMul", "Gemm") and len(n.input) > 1 else None
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits or len(dq.input) < 3:
            continue
        w, zp = (numpy_helper.to_array(inits[k]) for k in (dq.input[0], dq.input[2]))
        if w.dtype != np.uint8 or not np.all(zp == 128):
            continue
        inits[dq.input[0]].CopyFrom(numpy_helper.from_array((w.astype(np.int16) - 128).astype(np.int8), dq.input[0]))
        name = dq.input[2] + "_int8"
        if name not in inits:
            inits[name] = numpy_helper.from_array(np.zeros(zp.shape, np.int8), name)
            m.graph.initializer.append(inits[name])
        dq.input[2] = name
    return m.SerializeToString()


def build(export_dir: Path, calib: np.ndarray, tmp: Path) -> dict[str, Path]:
    """{name: path} of the files compared; prints what pair-safe changed and the saturation replay."""
    from tledge.export import onnx as ox
    from lab.quant import pairsafe
    from tledge.quant import saturation

    files = {"fp32": export_dir / "model_fp32.onnx", "shipped u8u8-grid": export_dir / "model_int8.onnx"}
    (tmp / "shipped_s8.onnx").write_bytes(int8_weights(files["shipped u8u8-grid"].read_bytes()))
    files["shipped s8"] = tmp / "shipped_s8.onnx"
    for scheme in ("u8u8-grid", "u8s8"):
        ox.quantize_int8(files["fp32"], tmp / f"plain_{scheme}.onnx", calib, scheme=ox.SCHEMES[scheme])
        files[f"plain {scheme}"] = tmp / f"plain_{scheme}.onnx"
    for base in ("shipped s8", "plain u8s8"):
        data, moved = pairsafe.make_safe(files[base].read_bytes(), calib)
        name = base.split()[0] + " pair-safe"
        files[name] = tmp / f"{name.replace(' ', '_')}.onnx"
        files[name].write_bytes(data)
        print(f"{name}: {sum(m.coarser for m in moved)} of {sum(m.channels for m in moved)} output channels on a "
              f"coarser grid, {sum(m.moved for m in moved)} of {sum(m.weights for m in moved)} weights changed")
    for name, path in files.items():
        if name != "fp32":
            layers = saturation.check(path.read_bytes(), calib)
            print(f"{name}: replay {sum(lay.saturated for lay in layers)} pair sums over the limit")
    return files


def agreement(files: dict, x: np.ndarray, modes: list[str], cpu: str | None) -> list[str]:
    from tledge import stats

    jobs = [{"key": "fp32|default", "path": str(files["fp32"]), "mode": "default", "threads": 1}]
    jobs += [{"key": f"{n}|{m}", "path": str(p), "mode": m, "threads": 1} for n, p in files.items() if n != "fp32"
             for m in modes]
    native = emu.run_jobs(jobs, x)
    emulated = emu.run_emulated(jobs, x, cpu) if cpu else {}
    ref = native["fp32|default"].argmax(1)
    lines = ["| file | session | native [95 %] | emulated [95 %] | top-1 differs native vs emulated | "
             "differs from the u8u8-grid file |", "|---|---|---|---|---|---|"]
    for j in jobs[1:]:
        name, mode = j["key"].split("|")
        cells = []
        for out in (native[j["key"]], emulated.get(j["key"])):
            if out is None:
                cells.append("-")
                continue
            same = int((out.argmax(1) == ref).sum())
            cells.append(f"{same / len(ref):.3f} {stats.fmt_interval(*stats.wilson(same, len(ref)))}")
        flips = int((emulated[j["key"]].argmax(1) != native[j["key"]].argmax(1)).sum()) if emulated else "-"
        grid = native[f"{name.split()[0]} u8u8-grid|{mode}"].argmax(1)
        lines.append(f"| {name} | {mode} | {cells[0]} | {cells[1]} | {flips} | "
                     f"{int((native[j['key']].argmax(1) != grid).sum())} |")
    return lines


def latency(files: dict, rounds: int, runs: int = 50) -> list[str]:
    """Batch-1 one-thread latency, the files alternated (order reversed every other round): median and range."""
    sess = {n: emu.session(p, "default", 1) for n, p in files.items() if n != "shipped s8" and n != "plain u8s8"}
    inp = next(iter(sess.values())).get_inputs()[0]
    x = np.random.default_rng(0).uniform(0, 1, [1, *inp.shape[1:]]).astype(np.float32)
    for s in sess.values():
        for _ in range(20):
            s.run(None, {inp.name: x})
    times: dict = {n: [] for n in sess}
    loads = [os.getloadavg()[0]]
    for r in range(rounds):
        for n in (list(sess) if r % 2 == 0 else list(sess)[::-1]):
            start = time.perf_counter()
            for _ in range(runs):
                sess[n].run(None, {inp.name: x})
            times[n].append(1000 * (time.perf_counter() - start) / runs)
        loads.append(os.getloadavg()[0])
    fp32 = float(np.median(times["fp32"]))
    lines = [f"{rounds} rounds x {runs} runs, load {min(loads):.1f}-{max(loads):.1f}",
             "| file | ms median (range) | vs fp32 |", "|---|---|---|"]
    lines += [f"| {n} | {np.median(v):.3f} ({min(v):.3f}-{max(v):.3f}) | {np.median(v) / fp32:.2f}x |"
              for n, v in times.items()]
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export_dir", type=Path)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--val", required=True)
    ap.add_argument("--limit", type=int, default=100000, help="at most N --val images (an even spread)")
    ap.add_argument("--modes", default="default,x64qp")
    ap.add_argument("--emulate-cpu", metavar="MODEL")
    ap.add_argument("--rounds", type=int, default=0, help="latency rounds (0: none)")
    args = ap.parse_args(argv)
    for name in ("model_fp32.onnx", "model_int8.onnx", "tledge.json"):
        if not (args.export_dir / name).is_file():
            print(f"error: {args.export_dir}: no {name} in this export folder", file=sys.stderr)
            return 2
    if args.emulate_cpu and emu.unavailable():
        print(f"error: {emu.unavailable()}", file=sys.stderr)
        return 2
    from tledge.contract import Contract
    from tledge.export.imagesets import load_pixels

    contract = Contract.load(args.export_dir / "tledge.json")
    calib = load_pixels(args.calib, contract, 256)[0].astype(np.float32)
    val = load_pixels(args.val, contract, args.limit)[0].astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="tledge-pairsafe-") as tmp:
        files = build(args.export_dir, calib, Path(tmp))
        print(f"\n{len(val)} images of {args.val}\n")
        print("\n".join(agreement(files, val, args.modes.split(","), args.emulate_cpu)))
        if args.rounds:
            print("\n" + "\n".join(latency(files, args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
