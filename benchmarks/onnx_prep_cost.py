"""What the normalisation tledge adds in front of a model (`--preprocess`) costs in its ONNX files, as written before
and as exported now, side by side in one run.

Before 2026-12-07 trace() wrote `pixels * [s, s, s] + [o, o, o]` on NHWC pixels and tf2onnx kept that Mul and Add,
with [3] constants, before the Transpose to NCHW: onnxruntime broadcast them three floats at a time. Now one value
for every channel (tf, scale) is a scalar and a value per channel (torch, custom) is tiled along the rows, [W, C]
(tledge.export.onnx_prep). For MobileNet v1 0.25 + Dense(2) on hymenoptera at 224 px (tests/realdata.py),
exported with --preprocess tf and with --preprocess torch (fp32 and plain int8 ONNX, --no-repair), each file is
timed against its before-style copy (the same file rewritten: constants [3], the chain before the Transpose); both
give the same outputs (checked). Batch 1, `--threads` intra-op threads, the files timed in turns: per round each
file's median; per pair the median over rounds of exported/before and its range over rounds. With one thread
onnxruntime runs the graph on the calling thread, whose CPU time (time.thread_time) other processes' load barely
moves: its ratio is given too.

    python benchmarks/onnx_prep_cost.py [--rounds 9] [--runs 40] [--threads 1] [--cache /tmp/tledge-onnx-prep]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))
ASSETS = Path(os.environ.get("TLEDGE_SHARED_ASSETS", REPO.parent / "shared" / "assets"))
HYM = ASSETS / "hymenoptera_data"
ELEMENTWISE = ("Mul", "Add", "Sub", "Div")
SOURCES = ("tledge/export/loader.py", "tledge/export/onnx.py", "tledge/export/onnx_prep.py")  # what shapes the files


def exported(cache: Path, mode: str) -> Path:
    """The export folder of the hymenoptera model with --preprocess `mode` (ONNX fp32 + int8), made once per version
    of SOURCES."""
    from realdata import hymenoptera_mobilenet

    from tledge.export.pipeline import ExportConfig, export

    digest = hashlib.sha1(b"".join((REPO / s).read_bytes() for s in SOURCES if (REPO / s).is_file())).hexdigest()[:10]
    out = cache / f"{mode}-{digest}"
    if not (out / "model_int8.onnx").is_file():
        h5 = hymenoptera_mobilenet(ASSETS, cache)
        export(h5, ExportConfig(out=out, formats=("onnx",), int8=True, repair=False, preprocess=mode,
                                calib=str(HYM / "train"), val=str(HYM / "val"), calib_limit=64))
    return out


def before_style(model):
    """A copy of an ONNX model whose input chain (Mul / Add / Sub / Div with constants, then or after the NHWC -> NCHW
    Transpose) is written as before: the chain on the NHWC pixels, every constant a [C] vector, then the Transpose."""
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def follow(t):
        chain = []
        while len(consumers.get(t, [])) == 1 and consumers[t][0].op_type in ELEMENTWISE:
            chain.append(consumers[t][0])
            t = chain[-1].output[0]
        return chain, t

    t = g.input[0].name
    if len(consumers.get(t, [])) == 1 and consumers[t][0].op_type == "Cast":
        t = consumers[t][0].output[0]
    first = consumers[t][0]
    if first.op_type == "Transpose":  # after-style: move the chain in front of it
        chain, end = follow(first.output[0])
        chain[0].input[list(chain[0].input).index(first.output[0])] = t
        nhwc = end + "_nhwc"
        chain[-1].output[0] = nhwc
        first.input[0], first.output[0] = nhwc, end
    else:
        chain, _ = follow(t)
    channels = g.input[0].type.tensor_type.shape.dim[3].dim_value
    inits = {i.name: i for i in g.initializer}
    for n in chain:
        j = next(k for k, i in enumerate(n.input) if i in inits)
        value = numpy_helper.to_array(inits[n.input[j]]).reshape(-1)
        value = value[:channels] if value.size > channels else value  # [W, C] rows: the same C values each
        n.input[j] = n.input[j] + "_before"
        g.initializer.append(numpy_helper.from_array(np.broadcast_to(value, (channels,)).copy(), n.input[j]))
    _toposort(g)
    onnx.checker.check_model(m)
    return m


def _toposort(g) -> None:
    """The graph's nodes in an order where every input is made before it is used."""
    made = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    todo, order = list(g.node), []
    while todo:
        ready = [n for n in todo if all(i in made for i in n.input)]
        assert ready, "not a DAG"
        for n in ready:
            made.update(n.output)
        order += ready
        todo = [n for n in todo if not any(n is r for r in ready)]
    copies = []
    for n in order:
        copies.append(type(n)())
        copies[-1].CopyFrom(n)
    del g.node[:]
    g.node.extend(copies)


def sessions(files: dict[str, bytes], threads: int, photos: np.ndarray) -> dict:
    import onnxruntime as ort

    out = {}
    for name, data in files.items():
        so = ort.SessionOptions()
        so.log_severity_level, so.intra_op_num_threads, so.inter_op_num_threads = 3, threads, 1
        s = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        inp = s.get_inputs()[0]
        x = photos.astype(np.uint8 if inp.type == "tensor(uint8)" else np.float32)
        out[name] = (s, inp.name, x)
    return out


def timed(sess: dict, rounds: int, runs: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per file, its median batch-1 latency and calling-thread CPU time (ms) in each round; the files in a rotated
    order each round."""
    names = list(sess)
    for s, name, x in sess.values():
        for _ in range(5):
            s.run(None, {name: x[:1]})
    med, cpu = {n: np.zeros(rounds) for n in names}, {n: np.zeros(rounds) for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            s, name, x = sess[n]
            ts, cs = [], []
            for k in range(runs):
                one = x[k % len(x):k % len(x) + 1]
                c0, t0 = time.thread_time(), time.perf_counter()
                s.run(None, {name: one})
                ts.append(time.perf_counter() - t0)
                cs.append(time.thread_time() - c0)
            med[n][r], cpu[n][r] = np.median(ts) * 1e3, np.median(cs) * 1e3
    return med, cpu


def main(argv=None) -> int:
    import onnx
    import onnxruntime as ort

    from int8_onnx_kernels import cpu_line

    from tledge.contract import Contract
    from tledge.images import labelled_images

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/tledge-onnx-prep"))
    args = ap.parse_args(argv)
    files, _, _ = labelled_images(HYM / "val")
    raw = Contract(224, 224, norm="raw", baked=True, input_dtype="float32")
    photos = np.stack([raw.prepare(f) for f in files[::10]]).astype(np.float32)
    pairs = {}
    for mode in ("tf", "torch"):
        out = exported(args.cache, mode)
        for prec in ("fp32", "int8"):
            model = onnx.load(str(out / f"model_{prec}.onnx"))
            pairs[f"{mode} {prec}"] = {"before": before_style(model).SerializeToString(),
                                       "exported": model.SerializeToString()}
    print(f"{cpu_line()}; onnxruntime {ort.__version__}; batch 1, {args.threads} thread(s), {args.rounds} rounds x "
          f"{args.runs} runs, files in turns", flush=True)
    sess = sessions({f"{p}/{k}": d for p, both in pairs.items() for k, d in both.items()}, args.threads, photos)
    med, cpu = timed(sess, args.rounds, args.runs)
    print(f"{'file':12s} {'before ms':>10s} {'exported ms':>12s}  exported/before [range]  same outputs"
          + ("  thread CPU ms before / exported, ratio [range]" if args.threads == 1 else ""))
    for p in pairs:
        (sb, nb, xb), (se, ne, xe) = sess[f"{p}/before"], sess[f"{p}/exported"]
        same = np.array_equal(sb.run(None, {nb: xb})[0], se.run(None, {ne: xe})[0])
        ratio = med[f"{p}/exported"] / med[f"{p}/before"]
        c = cpu[f"{p}/exported"] / cpu[f"{p}/before"]
        print(f"{p:12s} {np.median(med[f'{p}/before']):10.3f} {np.median(med[f'{p}/exported']):12.3f}  "
              f"{np.median(ratio):.2f} [{ratio.min():.2f}-{ratio.max():.2f}]          {'yes' if same else 'NO '}"
              + (f"           {np.median(cpu[f'{p}/before']):.3f} / {np.median(cpu[f'{p}/exported']):.3f}, "
                 f"{np.median(c):.2f} [{c.min():.2f}-{c.max():.2f}]" if args.threads == 1 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
