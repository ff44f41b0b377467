"""int8 TFLite files with and without the ops LiteRT's CPU delegate has no int8 kernel for kept float
(tledge.export.tflite.CPU_FLOAT_OPS: HARD_SWISH), A/B on the same zoo model, calibration and repaired weights.

For the plain int8 file and the `repaired-stem6` rung's file, each built both ways: XNNPACK partitions, batch-1
latency (the four files and the fp32 file timed in turns), flips against Keras on the val photos and against the fp32
file on the 1300 imagenet_val1300 photos no step of the export saw.

    python benchmarks/cpu_float_ops.py [--only hym-mnv3s,hym-mnv3s-s1] [--cache DIR] [--json out.json]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))


def partitions(data: bytes) -> int:
    """XNNPACK partitions LiteRT's default interpreter makes of a TFLite file (its DELEGATE nodes)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=data, num_threads=2)
    it.allocate_tensors()
    return collections.Counter(d["op_name"] for d in it._get_ops_details())["DELEGATE"]


def flips(files: dict[str, bytes], ctx, photos: list[Path]) -> dict[str, dict]:
    """Per file: flips against Keras on the val photos, and against the fp32 file on `photos`."""
    import numpy as np

    from tledge.images import prepare_all
    from tledge.runtime.model import load

    out, other = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            path = Path(tmp) / f"{name}.tflite"
            path.write_bytes(data)
            m = load(path)
            val = np.concatenate([m.predict(m.from_nhwc(ctx.val_x[i:i + 32])) for i in range(0, len(ctx.val_x), 32)])
            other[name] = np.concatenate([m.predict(np.stack(prepare_all(m.prepare, photos[i:i + 64])))
                                          for i in range(0, len(photos), 64)]) if photos else None
            out[name] = {"val_flips": int((val.argmax(1) != ctx.reference.argmax(1)).sum()), "val_images": len(val)}
    for name in files:
        if other[name] is not None:
            out[name].update(other_flips=int((other[name].argmax(1) != other["fp32"].argmax(1)).sum()),
                             other_images=len(photos))
    return out


def measure(ctx, name: str, results: dict) -> None:
    from int8_zoo import ASSETS, IMAGENET

    from tledge.export import repair_model, tflite
    from tledge.export.parity import latencies_in_turns
    from tledge.export.rungs import Shared
    from tledge.images import iter_image_files

    model, _ = repair_model.pixel_model_and_note(ctx)
    concrete = ctx.trace()[1]
    both = {"int8": (), "cpufloat": tflite.CPU_FLOAT_OPS}
    caches = {k: Shared(model, ctx.contract, ctx.calib, ctx.out, trace=ctx.trace, float_ops=ops) for k, ops in both.items()}
    caches["cpufloat"].repaired = caches["int8"].repaired  # one weight repair for both files
    files = {"fp32": caches["int8"].embed_tflite(tflite.convert(concrete, "fp32"), {})}
    for k, ops in both.items():
        files[f"plain-{k}"] = caches[k].embed_tflite(tflite.convert(concrete, "int8", ctx.calib, float_ops=ops), {})
        files[f"stem6-{k}"] = caches[k].tflite(caches[k].repaired_model(6), 6, {})
    photos = sorted(iter_image_files(ASSETS / IMAGENET)) if (ASSETS / IMAGENET).is_dir() else []
    row = flips(files, ctx, photos)
    ms = latencies_in_turns(files, ctx.val_x, suffix=".tflite", threads=2)
    for f, data in files.items():
        row[f].update(partitions=partitions(data), batch1_ms=round(ms[f], 3))
    results[name] = row
    for f, r in row.items():
        print(f"{name:14s} {f:16s} partitions {r['partitions']:3d}  {r['batch1_ms']:.3f} ms  val flips "
              f"{r['val_flips']}/{r['val_images']}  other flips {r.get('other_flips', '-')}/{r.get('other_images', '-')}",
              flush=True)


def main(argv=None) -> int:
    from int8_zoo import at_int8_loop

    from int8_onnx_kernels import cpu_line

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="hym-mnv3s,hym-mnv3s-s1")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/tledge-int8-zoo"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    results: dict = {"machine": cpu_line()}
    print(results["machine"], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in [n for n in args.only.split(",") if n]:
            at_int8_loop(name, args.cache, Path(tmp), lambda ctx, n=name: measure(ctx, n, results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
