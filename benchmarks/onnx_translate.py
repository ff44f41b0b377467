"""ONNX int8 files translated from the TFLite file (issue 11, twenty-third session): for the stem-6 repair rungs
(minmax and mse ranges), the int8 TFLite file, the ONNX file onnxruntime quantises from the same repaired model, and
the ONNX file translated from that TFLite file (tledge.export.onnx_translate), all built as `tledge export` builds
them (tledge.export.rungs.Shared).

    python benchmarks/onnx_translate.py hym-effb0 [--ranges minmax,mse] [--cache DIR]

Prints flips against the original Keras model on the 153 val photos and the 1300 imagenet_val1300 photos (which no
export step sees), with 95 % Wilson intervals on the 1300, the batch-1 latency of each ONNX file (2 threads, best
of 5 rounds of 30 runs, interleaved), the CPU flags and the seconds. Result: docs/int8-fidelity.md, "ONNX files
translated from the TFLite file".
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks"), str(REPO / "tests")]


class OnnxFile:
    """An int8 ONNX file of the export (float32 or uint8 pixels), one image at a time as parity runs it."""

    def __init__(self, data: bytes):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        self.sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        inp = self.sess.get_inputs()[0]
        self.name, self.u8 = inp.name, inp.type == "tensor(uint8)"

    def feed(self, x: np.ndarray) -> np.ndarray:
        return np.clip(np.round(x), 0, 255).astype(np.uint8) if self.u8 else x.astype(np.float32)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([self.sess.run(None, {self.name: self.feed(x[i:i + 1])})[0] for i in range(len(x))])

    def latency_ms(self, x: np.ndarray, runs: int = 30) -> float:
        one = self.feed(x[:1])
        for _ in range(5):
            self.sess.run(None, {self.name: one})
        start = time.perf_counter()
        for _ in range(runs):
            self.sess.run(None, {self.name: one})
        return (time.perf_counter() - start) / runs * 1000


def measure(ctx, name: str, ranges_list: list[str], out: Path) -> None:
    import weight_bits

    from tledge.export import fidelity
    from tledge.export.onnx import Conventions
    from tledge.export.rungs import Shared
    from lab.quant.quick import Runner
    from tledge.stats import wilson

    model, calib, sets, ref = weight_bits.eval_sets(ctx)
    out.mkdir(parents=True, exist_ok=True)
    shared = Shared(model, ctx.contract, ctx.calib, out)
    flags = " ".join(f for f in ("avx2", "avx512f", "avx512_vnni") if f in Path("/proc/cpuinfo").read_text())
    assert Conventions.of(ctx.contract).layout == "nhwc"
    onnx_files = {}
    for ranges in ranges_list:
        rung = fidelity.Rung(f"repaired-stem{fidelity.STEM}" + ("+mse" if ranges == "mse" else ""),
                             stem=fidelity.STEM, ranges=ranges)
        key = rung.stem if ranges == "minmax" else (rung.stem, ranges)
        rep = shared.repaired_model(rung.stem, ranges=ranges)
        files = {}
        t = time.perf_counter()
        files["tflite"] = (shared.tflite(rep, rung.stem, {}, key=key, ranges=ranges), time.perf_counter() - t)
        t = time.perf_counter()
        files["onnx (onnxruntime)"] = (shared.onnx(rep, rung, {}), time.perf_counter() - t)
        t = time.perf_counter()
        files["onnx (translated)"] = (shared.onnx_translated(rep, rung, {}, key), time.perf_counter() - t)
        for kind, (data, seconds) in files.items():
            r = Runner(data, "tflite") if kind == "tflite" else OnnxFile(data)
            if kind != "tflite":
                onnx_files[f"{ranges} {kind}"] = r
            fl = {s: int((r.predict(x).argmax(1) != ref[s]).sum()) for s, x in sets.items()}
            n = len(ref["other"])
            lo, hi = wilson(n - fl["other"], n)
            print(f"RESULT {name} {rung.name} {kind}: val flips {fl['val']}/{len(ref['val'])}, other flips "
                  f"{fl['other']}/{n} (agreement {1 - fl['other'] / n:.3f} [{lo:.3f}, {hi:.3f}]); built in {seconds:.0f} s "
                  f"({flags}, load {os.getloadavg()[0]:.1f})", flush=True)
    x = sets["val"]
    best = dict.fromkeys(onnx_files, float("inf"))
    for _ in range(5):  # interleaved rounds: the machine's load hits every file alike
        for k, r in onnx_files.items():
            best[k] = min(best[k], r.latency_ms(x))
    for k, ms in best.items():
        print(f"LATENCY {name} {k}: {ms:.2f} ms batch 1, 2 threads ({flags}, load {os.getloadavg()[0]:.1f})", flush=True)


def main(argv=None) -> int:
    import int8_zoo

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--ranges", default="minmax,mse")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/tledge-int8-zoo"))
    args = ap.parse_args(argv)
    out = Path(f"/tmp/onnx-translate-{os.getpid()}")
    int8_zoo.at_int8_loop(args.name, args.cache, out,
                          lambda ctx: measure(ctx, args.name, args.ranges.split(","), out / "rungs"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
