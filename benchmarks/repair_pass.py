"""Seconds and peak memory of the int8 weight repair pass (`tledge.quant.repair.apply`, the export's call: stem 4,
errors=False), per model, optionally beside another checkout's tledge in the same run (ratios side by side, and
whether the repaired weights are bit-identical).

    .venv/bin/python benchmarks/repair_pass.py                                    # this checkout
    git worktree add /tmp/tledge-base 3b1e4db
    .venv/bin/python benchmarks/repair_pass.py --baseline /tmp/tledge-base --json out.json

Models: `--model PATH` (repeatable; .keras / .h5 Keras 3 files), else a default set built once into --cache from
keras.applications with random weights (timing and bit-identity do not need trained ones; fidelity is measured by
benchmarks/int8_zoo.py): MobileNetV2 1.0 at 224 px, and EfficientNetB0, ResNet50 and MobileNetV3Small at 96 px.
Calibration: the first --images photos of ../shared/assets/hymenoptera_data/train, resized (INTER_AREA) to the
model's input. Each pass runs in its own process (`/usr/bin/time`-free: peak RSS from getrusage), one after the
other, so they do not share the 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO.parent / "shared" / "assets"
DEFAULTS = (("mnv2-224", "MobileNetV2", 224, None), ("effb0-96", "EfficientNetB0", 96, None),
            ("resnet50-96", "ResNet50", 96, "caffe"), ("mnv3s-96", "MobileNetV3Small", 96, None))

CHILD = r"""
import glob, json, os, sys, time
def hwm_gb():  # VmHWM: getrusage's ru_maxrss keeps the parent's peak across exec (a parent holding models showed its own)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e6
repo, model_path, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
sys.path.insert(0, repo)
import cv2, numpy as np, keras
import tledge.layers  # noqa: F401  (custom layers in the saved model)
from tledge.quant import repair
m = keras.models.load_model(model_path, compile=False)
size = m.inputs[0].shape[1]
files = sorted(glob.glob(os.path.join(sys.argv[5], "*", "*.jpg")))[:n]
x = np.stack([cv2.resize(cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2RGB), (size, size), interpolation=cv2.INTER_AREA)
              for f in files]).astype("float32")
before = hwm_gb()
t = time.perf_counter()
rm, _ = repair.apply(m, x, stem=4, errors=False)
seconds = time.perf_counter() - t
np.savez(out, *rm.get_weights())
print(json.dumps({"seconds": seconds, "peak_gb": hwm_gb(), "peak_before_gb": before, "images": len(x), "repo": repair.__file__}))
"""


def default_models(cache: Path) -> list[Path]:
    """Random-weight keras.applications models with the export's baked preprocessing, built once."""
    cache.mkdir(parents=True, exist_ok=True)
    missing = [d for d in DEFAULTS if not (cache / f"{d[0]}.keras").is_file()]
    if missing:
        sys.path.insert(0, str(REPO))
        import keras

        from tledge.layers import Preprocess
        for name, arch, size, mode in missing:
            keras.utils.set_random_seed(0)
            inp = keras.Input((size, size, 3))
            base = getattr(keras.applications, arch)(include_top=False, weights=None, input_shape=(size, size, 3),
                                                     pooling="avg")
            x = inp if mode is None else Preprocess(mode)(inp)
            keras.Model(inp, keras.layers.Dense(3, activation="softmax")(base(x))).save(cache / f"{name}.keras")
    return [cache / f"{d[0]}.keras" for d in DEFAULTS]


def run(repo: Path, model: Path, images: int, out: Path, photos: Path) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(repo), str(model), str(images), str(out), str(photos)],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def same_weights(a: Path, b: Path) -> bool:
    import numpy as np

    wa, wb = np.load(a), np.load(b)
    return wa.files == wb.files and all(np.array_equal(wa[k], wb[k]) for k in wa.files)


def cpu_line() -> str:
    """This CPU's int8-relevant flags (tledge.quant.kernels.cpu_flags, as parity.md gives them), cores and load."""
    sys.path.insert(0, str(REPO))
    from tledge.quant.kernels import cpu_flags

    return f"{cpu_flags()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", type=Path, help="a Keras 3 model (repeatable); default: built set")
    p.add_argument("--baseline", type=Path, help="another tledge checkout to time beside this one")
    p.add_argument("--images", type=int, default=243)
    p.add_argument("--cache", type=Path, default=Path("/tmp/tledge-repair-pass"))
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    photos = ASSETS / "hymenoptera_data" / "train"
    if not photos.is_dir():
        print(f"SKIP: no calibration photos at {photos}")
        return 0
    if a.baseline is not None and not (a.baseline / "tledge" / "quant" / "repair.py").is_file():
        p.error(f"--baseline {a.baseline}: not a tledge checkout")
    models = a.model or default_models(a.cache)
    print(f"# repair.apply(stem=4, errors=False), {a.images} calibration photos; {cpu_line()}")
    print("| model | baseline s | this s | ratio | baseline peak GB | this peak GB | weights identical |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for model in models:
        name = model.parent.name if model.stem == "model" else model.stem  # (the zoo's NAME/model.keras)
        row = {"model": name, "path": str(model)}
        for which, repo in (("baseline", a.baseline), ("this", REPO)):
            if repo is not None:
                row[which] = run(repo, model, a.images, a.cache / f"{name}-{which}.npz", photos)
        this, base = row["this"], row.get("baseline")
        ok = base and "error" not in base and "error" not in this
        ratio = f"{this['seconds'] / base['seconds']:.2f}x" if ok else "-"
        same = same_weights(a.cache / f"{name}-baseline.npz", a.cache / f"{name}-this.npz") if ok else None
        row["identical"] = same

        def cell(r, key, fmt):
            return "-" if not r else r.get("error", "")[:60] if "error" in r else format(r[key], fmt)
        print(f"| {name} | {cell(base, 'seconds', '.1f')} | {cell(this, 'seconds', '.1f')} | {ratio} | "
              f"{cell(base, 'peak_gb', '.1f')} | {cell(this, 'peak_gb', '.1f')} | {'-' if same is None else same} |",
              flush=True)
        rows.append(row)
    if a.json:
        a.json.write_text(json.dumps({"machine": cpu_line(), "images": a.images, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
