"""TFLite files with the non-linear activations kept float (issue 11, twentieth session): on the weight repair's
model with its float stem (`repair.apply(stem=...)`, the `repaired-stem6` rung), the ops that compute sigmoid,
swish, hard-swish and the squeeze-excite chain (its global pooling, its two 1x1 convolutions, its gate and the
excite multiply) stay float, chosen by op type on the calibrated graph (no names matched); every other
convolution, the residual adds and the head stay int8.

    python benchmarks/float_nonlinear.py hym-effb0 [--stem 6] [--cache DIR]

Prints flips against the original Keras model on the 153 val and 1300 imagenet_val1300 photos and batch-1
latencies (interleaved, best of rounds) of the plain int8 file, the stem file, the stem + non-linear file and
the fp32 file. Result: docs/int8-fidelity.md, "Non-linear activations kept float".
"""
from __future__ import annotations

import argparse
import collections
import os
import platform
import sys
import time
from pathlib import Path


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks"), str(REPO / "tests")]

NONLINEAR = ("LOGISTIC", "HARD_SWISH", "TANH", "EXP")  # op types whose int8 output tables cost the most
PASS = ("RESHAPE", "SQUEEZE", "EXPAND_DIMS", "QUANTIZE", "DEQUANTIZE")


def nonlinear_ops(graph, parts=("act", "se")) -> list[str]:
    """Output tensor names (a TFLite denylist) of the non-linear ops, the multiplies reading one (swish, the
    squeeze-excite gate), and every squeeze-excite chain: from a global pooling (MEAN) forward to the multiply it
    gates. A MEAN whose path reaches no multiply (the classifier's pooling) is left alone."""
    producer = {out: op for op, out, _ in graph}
    consumers: dict[str, list] = {}
    for node in graph:
        for t in node[2]:
            consumers.setdefault(t, []).append(node)
    keep = [out for op, out, _ in graph if op in NONLINEAR] if "act" in parts else []
    keep += [out for op, out, ins in graph if op == "MUL" and any(producer.get(t) in NONLINEAR for t in ins)
             and "act" in parts]
    for op, out, _ in graph:
        if op != "MEAN" or "se" not in parts:
            continue
        chain, frontier, gated = [out], [out], False
        while frontier:
            for c_op, c_out, _ in consumers.get(frontier.pop(), []):
                if c_out in chain:
                    continue
                chain.append(c_out)
                if c_op == "MUL":
                    gated = True
                elif c_op not in ("FULLY_CONNECTED", "SOFTMAX"):
                    frontier.append(c_out)
        if gated:
            keep += chain
    return list(dict.fromkeys(keep))


def measure(ctx, name: str, stem: int) -> None:
    import weight_bits

    from tledge.quant import repair, selective

    from lab.quant import quick

    model, calib, sets, ref = weight_bits.eval_sets(ctx)
    t = time.perf_counter()
    rep, _ = repair.apply(model, calib, stem=stem, errors=False)
    cal = selective.calibrate_tflite(rep, calib)
    graph = selective.tflite_graph(cal)
    stem_ops = selective.tflite_stem(cal, stem)
    files = {"plain int8": quick.tflite_int8(model, calib),
             f"stem{stem}": selective.quantize_tflite(cal, keep_float=stem_ops)}
    for parts in (("act", "se"), ("act",), ("se",)):
        extra = [n for n in nonlinear_ops(graph, parts) if n not in stem_ops]
        files[f"stem{stem}+{'+'.join(parts)}"] = selective.quantize_tflite(cal, keep_float=stem_ops + extra)
        print(f"{name}: {'+'.join(parts)}: {len(extra)} ops kept float beyond the stem: "
              f"{sorted(collections.Counter(op for op, out, _ in graph if out in extra).items())}", flush=True)
    files["fp32"] = selective.tflite_fp32(model)
    print(f"{name}: {time.perf_counter() - t:.0f} s to build", flush=True)
    runners = {k: quick.Runner(v, "tflite") for k, v in files.items()}
    for k, r in runners.items():
        flipped = {s: int((r.predict(x).argmax(1) != ref[s]).sum()) for s, x in sets.items()}
        n = len(ref["other"])
        print(f"RESULT {name} {k}: val flips {flipped['val']}/{len(ref['val'])}, other flips {flipped['other']}/{n} "
              f"(agreement {1 - flipped['other'] / n:.4f})", flush=True)
    lat = quick.compare_latency(runners, sets["val"][:8])
    flags = " ".join(f for f in ("avx2", "avx512f", "avx512_vnni") if f in Path("/proc/cpuinfo").read_text())
    print(f"LATENCY {name} ({platform.processor() or platform.machine()}, {flags}, load {os.getloadavg()[0]:.1f}): "
          + ", ".join(f"{k} {v:.2f} ms ({v / lat['plain int8']:.2f}x plain int8)" for k, v in lat.items()), flush=True)


def main(argv=None) -> int:
    import int8_zoo

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--stem", type=int, default=6)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/tledge-int8-zoo"))
    args = ap.parse_args(argv)
    int8_zoo.at_int8_loop(args.name, args.cache, Path(f"/tmp/float-nonlinear-{os.getpid()}"),
                          lambda ctx: measure(ctx, args.name, args.stem))
    return 0


if __name__ == "__main__":
    sys.exit(main())
