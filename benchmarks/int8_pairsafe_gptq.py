"""Pair-safe U8S8 chosen inside the repair's GPTQ (lab.quant.pairsafe_gptq) vs what ships and the lab's re-rounding.

On zoo models at the `repaired-stem6` rung (docs/int8-fidelity.md, "Pair-safe grids inside the repair's GPTQ").

Per model of benchmarks/int8_zoo.py (built into --cache if missing): an ONNX-only export up to its int8 loop gives
the pixel model, calibration and val images; then three int8 files of the stem-6 repair:
- `u8u8-grid`: repair.apply(stem=6) quantised as the export does (U8S8 when no pair saturates, else u8u8-grid: what
  ships);
- `re-rounded`: that file's weights as int8 made pair-safe afterwards (lab.quant.pairsafe.make_safe, the lab today);
- `in-gptq`: lab.quant.pairsafe_gptq.apply(stem=6), its grids pinned in a U8S8 file.
Prints, per file, agreement with the export's fp32 file on val and on the 1300 imagenet_val1300 photos (2-class
models) [95 % Wilson], photos whose top-1 differs from the u8u8-grid file's, the saturation replay, whether the
in-gptq file carries the repair's integers, --emulate val images under `qemu-x86_64 -cpu Haswell` (flips native vs
emulated, max abs), and --rounds of batch-1 one-thread latency in turns. CPU flags and load go with every figure.

    TLEDGE_SHARED_ASSETS=/work/shared/assets python benchmarks/int8_pairsafe_gptq.py hym-mnv1-s0 [...]
        [--cache /tmp/fix-zoo/cache] [--out DIR] [--emulate 64] [--rounds 15]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

STEM = 6


def machine() -> str:
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    keep = [x for x in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if x in flags]
    return f"{os.uname().nodename} {' '.join(keep)}, {os.cpu_count()} cores"


def load() -> str:
    return "load %.1f/%.1f/%.1f" % os.getloadavg()


def build_files(ctx, tmp: Path) -> tuple[dict, dict]:
    """{name: path} of the compared files and what the checks found."""
    import onnx

    from int8_pairsafe import int8_weights
    from lab.quant import pairsafe, pairsafe_gptq
    from tledge.export import onnx as onnx_export
    from tledge.export.repair_model import pixel_model_and_note
    from tledge.export.rungs import serve
    from tledge.quant import repair, saturation
    from tledge.quant.selective import onnx_stem, with_activations

    conv = onnx_export.Conventions.of(ctx.contract)
    calib = conv.calib(ctx.calib)
    model = pixel_model_and_note(ctx)[0]
    info: dict = {"calib": len(calib)}
    t = time.perf_counter()
    stock = repair.apply(model, ctx.calib, stem=STEM, errors=False)[0]
    info["repair_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    mine, _, grids = pairsafe_gptq.apply(model, ctx.calib, stem=STEM, errors=False)
    info["repair_pairsafe_s"] = round(time.perf_counter() - t, 1)
    info["channels"] = sum(len(g.grow) for g in grids.values())
    info["coarser"] = sum(g.coarser for g in grids.values())
    files = {"fp32": ctx.out / "model_fp32.onnx"}

    def finish(path: Path, scheme) -> None:
        per_file = conv.file_contract(ctx.contract, onnx_quant=scheme.describe())
        onnx_export.save(onnx_export.finish(onnx.load(str(path)), per_file, conv), path)

    for name, m in (("u8u8-grid", stock), ("in-gptq", mine)):
        src, dst = tmp / f"{name}_fp32.onnx", tmp / f"{name}.onnx"
        src.write_bytes(onnx_export.convert_fp32(serve(m, ctx.contract), ctx.contract).SerializeToString())
        raw = src.read_bytes()
        exclude = with_activations(raw, onnx_stem(raw, STEM))
        if name == "u8u8-grid":
            scheme = onnx_export.quantize_int8(src, dst, calib, nodes_to_exclude=exclude)
            info["shipped_scheme"] = scheme.describe()
        else:
            pinned = pairsafe_gptq.quantize(src, dst, calib, m, grids, exclude)
            scheme = onnx_export.SCHEMES["u8s8"]
        finish(dst, scheme)
        files[name] = dst
    info["carried"] = pairsafe_gptq.carried(files["in-gptq"].read_bytes(), mine, grids, pinned)
    shipped = files["u8u8-grid"].read_bytes()
    data, moved = pairsafe.make_safe(int8_weights(shipped), calib)
    files["re-rounded"] = tmp / "re-rounded.onnx"
    files["re-rounded"].write_bytes(data)
    info["re-rounded coarser"] = sum(m.coarser for m in moved)
    for name in ("u8u8-grid", "re-rounded", "in-gptq"):
        blob = files[name].read_bytes()
        info[f"{name} replay saturated"] = sum(x.saturated for x in saturation.check(blob, calib, images=16))
        info[f"{name} is_safe"] = pairsafe.is_safe(onnx.load_from_string(blob))
    return files, info


def other_pixels(ctx, cache: Path, name: str) -> np.ndarray | None:
    """The 1300 imagenet_val1300 photos as this export's files take them (cached per model)."""
    from int8_zoo import ASSETS, IMAGENET
    from tledge.images import iter_image_files, prepare_all

    path = cache / f"{name}-in1300.npy"
    if not path.is_file():
        files = sorted(iter_image_files(ASSETS / IMAGENET))
        if not files:
            return None
        np.save(path, np.stack(prepare_all(ctx.contract.prepare, files)).astype(np.float32))
    return np.load(path)


def agreement(files: dict, sets: dict) -> list[dict]:
    import ort_emulation as emu

    from tledge import stats

    rows = []
    for label, x in sets.items():
        jobs = [{"key": n, "path": str(p), "mode": "default", "threads": 1} for n, p in files.items()]
        out = emu.run_jobs(jobs, x)
        ref, grid = out["fp32"].argmax(1), out["u8u8-grid"].argmax(1)
        for n in files:
            if n == "fp32":
                continue
            same = int((out[n].argmax(1) == ref).sum())
            rows.append({"set": label, "file": n, "agree": same, "n": len(ref),
                         "ci": stats.fmt_interval(*stats.wilson(same, len(ref))),
                         "differ_from_grid": int((out[n].argmax(1) != grid).sum()), "load": load()})
    return rows


def emulated(files: dict, x: np.ndarray) -> list[dict]:
    import ort_emulation as emu

    jobs = [{"key": n, "path": str(p), "mode": "default", "threads": 1} for n, p in files.items() if n != "fp32"]
    native, emu_out = emu.run_jobs(jobs, x), emu.run_emulated(jobs, x, "Haswell")
    return [{"file": j["key"], "n": len(x), "flips": int((native[j["key"]].argmax(1) !=
                                                           emu_out[j["key"]].argmax(1)).sum()),
             "max_abs": float(np.abs(native[j["key"]] - emu_out[j["key"]]).max()), "load": load()} for j in jobs]


def measure_model(name: str, args) -> dict:
    from int8_pairsafe import latency
    from int8_zoo import zoo
    from tledge.export import fidelity
    from tledge.export.pipeline import ExportConfig, export

    build, opts = zoo(args.cache)[name]
    result: dict = {"model": name, "machine": machine(), "start": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                    "load_start": load()}

    def improve(failing, ctx):
        with tempfile.TemporaryDirectory(prefix="tledge-psgptq-") as tmp:
            keep = args.out / "files" / name if args.keep else Path(tmp)
            keep.mkdir(parents=True, exist_ok=True)
            files, result["checks"] = build_files(ctx, keep)
            print(name, json.dumps(result["checks"], default=str), flush=True)
            sets = {"val": ctx.val_x}
            other = other_pixels(ctx, args.out, name) if ctx.reference.shape[1] < 1000 else None
            if other is not None:
                sets["1300 others"] = other
            result["agreement"] = agreement(files, sets)
            if args.emulate:
                result["emulated"] = emulated(files, ctx.val_x[:args.emulate])
            if args.rounds:
                result["latency"] = latency(files, args.rounds)
        return fidelity.FidelityOutcome(results={})

    fidelity.improve = improve
    export(Path(build()), ExportConfig(out=args.out / "exports" / name, int8=True, calib_limit=300, threads=2,
                                       formats=("onnx",), **opts()))
    result["end"], result["load_end"] = time.strftime("%H:%M:%S UTC", time.gmtime()), load()
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/fix-zoo/cache"))
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "tledge-psgptq")
    ap.add_argument("--emulate", type=int, default=0, help="val images run under qemu -cpu Haswell (0: none)")
    ap.add_argument("--rounds", type=int, default=0, help="latency rounds (0: none)")
    ap.add_argument("--keep", action="store_true", help="keep the files in OUT/files/MODEL")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        res = measure_model(name, args)
        (args.out / f"{name}.json").write_text(json.dumps(res, indent=1, default=str))
        print(json.dumps(res, indent=1, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
