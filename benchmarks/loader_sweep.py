"""`tledge export --int8` on models saved by OTHER tools: Keras 2 `.h5` (tf_keras) and TensorFlow SavedModels,
across architectures (a failure hunt, not a fidelity benchmark: outputs need not be good).

Each model is built the way a Keras 2 tutorial builds it (tf_keras.applications.X(include_top=False, weights=None),
GlobalAveragePooling, Dense softmax), trained for a few steps on a few dozen hymenoptera photos, and saved as
  h5   tf_keras `model.save("x.h5")` (loads translated to Keras 3, or through tf_keras)
  sm   tf_keras `model.save(dir)` (a Keras 2 SavedModel: rebuilt as Keras 3 from the float TFLite graph, or
       graph-level rungs only)
  tfsm `tf.saved_model.save(model, dir)` of the same .h5 (plain TensorFlow, no Keras metadata; not in the
       default --loaders)
then exported with `tledge export PATH --int8 --calib DIR --val DIR --fidelity 0.999 --repair-time inf` (every
rung runs).
Per model x loader: exit code, error tail, the loader path (parity.md / notes), attempts rows with an error,
the kept rung per format and seconds.

    nice -n 19 python benchmarks/loader_sweep.py [--only mnv2,tm] [--loaders h5,sm] [--timeout 1500]
        [--cache /tmp/tledge-loader-sweep] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO.parent / "shared" / "assets"
HYM = ASSETS / "hymenoptera_data"
SIZE = 96

# name -> (builder function name in this file, --preprocess for the export: raw when the model bakes its own
# preprocessing, which tledge does not recognise outside its own layer and so must be told)
MODELS = {
    "mnv2": ("mnv2", "tf"),  # preprocessing NOT in the model
    "mnv2-rescaling": ("mnv2_rescaling", "raw"),  # Rescaling(1/127.5, offset=-1) baked
    "tutorial-mnv2": ("tutorial_mnv2", "raw"),  # TF transfer-learning tutorial: augmentation + preprocess_input
    "mnv3s": ("mnv3s", "raw"),  # hard-swish, include_preprocessing=True (Rescaling baked)
    "effb0": ("effb0", "raw"),  # Rescaling + Normalization baked
    "resnet50": ("resnet50", "caffe"),
    "densenet121": ("densenet121", "torch"),
    "tm": ("teachable_machine", "tf"),  # Sequential(Sequential(MobileNetV2 0.35 functional, GAP), Sequential(Dense...))
}


def _images(n_per_class: int, split: str) -> tuple[list[Path], list[int]]:
    files, ys = [], []
    for y, cls in enumerate(sorted(p.name for p in (HYM / split).iterdir() if p.is_dir())):
        got = sorted((HYM / split / cls).glob("*.jpg"))[:n_per_class]
        files += got
        ys += [y] * len(got)
    return files, ys


def data_dirs(cache: Path) -> tuple[Path, Path]:
    """calib: 32 train photos (flat); val: 20 + 20 val photos in class folders (symlinks)."""
    calib, val = cache / "calib", cache / "val"
    if not calib.is_dir():
        files, _ = _images(16, "train")
        calib.mkdir(parents=True)
        for f in files:
            (calib / f"{f.parent.name}_{f.name}").symlink_to(f)
    if not val.is_dir():
        files, _ = _images(20, "val")
        for f in files:
            (val / f.parent.name).mkdir(parents=True, exist_ok=True)
            (val / f.parent.name / f.name).symlink_to(f)
    return calib, val


# ---- builders (run in a child process: tf_keras and Keras 3 in one process do not mix well) ----

def _head(tfk, base, inp, x=None):
    x = base(inp if x is None else x)
    x = tfk.layers.GlobalAveragePooling2D()(x)
    x = tfk.layers.Dropout(0.2)(x)
    return tfk.Model(inp, tfk.layers.Dense(2, activation="softmax")(x))


def mnv2(tfk):
    inp = tfk.Input((SIZE, SIZE, 3))
    return _head(tfk, tfk.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=0.35, include_top=False,
                                                   weights=None), inp)


def mnv2_rescaling(tfk):
    inp = tfk.Input((SIZE, SIZE, 3))
    x = tfk.layers.Rescaling(1 / 127.5, offset=-1)(inp)
    return _head(tfk, tfk.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=0.35, include_top=False,
                                                   weights=None), inp, x)


def tutorial_mnv2(tfk):
    """tensorflow.org 'Transfer learning and fine-tuning': augmentation Sequential, preprocess_input (TFOpLambda)."""
    import tensorflow as tf

    aug = tfk.Sequential([tfk.layers.RandomFlip("horizontal"), tfk.layers.RandomRotation(0.2)])
    base = tfk.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=0.35, include_top=False, weights=None)
    inp = tfk.Input((SIZE, SIZE, 3))
    x = tfk.applications.mobilenet_v2.preprocess_input(aug(inp))
    x = base(x, training=False)
    x = tfk.layers.GlobalAveragePooling2D()(x)
    x = tfk.layers.Dropout(0.2)(x)
    del tf
    return tfk.Model(inp, tfk.layers.Dense(2, activation="softmax")(x))


def mnv3s(tfk):
    inp = tfk.Input((SIZE, SIZE, 3))
    return _head(tfk, tfk.applications.MobileNetV3Small(input_shape=(SIZE, SIZE, 3), include_top=False,
                                                        weights=None), inp)


def effb0(tfk):
    inp = tfk.Input((SIZE, SIZE, 3))
    return _head(tfk, tfk.applications.EfficientNetB0(input_shape=(SIZE, SIZE, 3), include_top=False,
                                                      weights=None), inp)


def resnet50(tfk):
    inp = tfk.Input((SIZE, SIZE, 3))
    return _head(tfk, tfk.applications.ResNet50(input_shape=(SIZE, SIZE, 3), include_top=False, weights=None), inp)


def densenet121(tfk):
    inp = tfk.Input((SIZE, SIZE, 3))
    return _head(tfk, tfk.applications.DenseNet121(input_shape=(SIZE, SIZE, 3), include_top=False, weights=None),
                 inp)


def teachable_machine(tfk):
    """Teachable Machine's layout: a Sequential of two Sequentials, the first holding a truncated functional
    MobileNetV2 0.35 and a GlobalAveragePooling2D, the second Dense(100, relu), Dropout, Dense(n, softmax)."""
    full = tfk.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=0.35, include_top=False, weights=None)
    trunk = tfk.Model(full.inputs, full.get_layer("out_relu").output, name="model1")
    features = tfk.Sequential([trunk, tfk.layers.GlobalAveragePooling2D()], name="sequential_1")
    head = tfk.Sequential([tfk.Input((trunk.output_shape[-1],)),
                           tfk.layers.Dense(100, activation="relu", name="dense_Dense1"),
                           tfk.layers.Dropout(0.5),
                           tfk.layers.Dense(2, activation="softmax", use_bias=False, name="dense_Dense2")],
                          name="sequential_3")
    return tfk.Sequential([tfk.Input((SIZE, SIZE, 3)), features, head], name="sequential_4")


def build(name: str, out: Path) -> None:
    """Child process: build, train briefly and save `out/NAME.h5` and `out/NAME_savedmodel/`."""
    import numpy as np
    import tf_keras as tfk

    sys.path.insert(0, str(REPO))
    from tledge.contract import Contract

    fn, mode = MODELS[name]
    tfk.utils.set_random_seed(0)
    model = globals()[fn](tfk)
    c = Contract(SIZE, SIZE, norm=mode, baked=mode == "raw")
    files, y = _images(24, "train")
    x = np.stack([c.prepare(f) for f in files])
    model.compile(tfk.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    model.fit(x, np.asarray(y), epochs=3, batch_size=16, verbose=0)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / f"{name}.h5")
    model.save(out / f"{name}_savedmodel")  # a directory: tf_keras writes a (Keras 2) SavedModel


def build_tfsm(h5: Path, out: Path) -> None:
    """Child process: the tf_keras .h5 saved with tf.saved_model.save (no Keras metadata)."""
    import tensorflow as tf
    import tf_keras as tfk

    tf.saved_model.save(tfk.models.load_model(h5, compile=False), str(out))


# ---- the sweep ----

def model_paths(cache: Path, name: str) -> dict[str, Path]:
    d = cache / "models"
    return {"h5": d / f"{name}.h5", "sm": d / f"{name}_savedmodel", "tfsm": d / f"{name}_tfsm"}


def ensure_built(cache: Path, name: str, timeout: int) -> str | None:
    paths = model_paths(cache, name)
    for keys, flag in ((("h5", "sm"), "--build"), (("tfsm",), "--build-tfsm")):
        if all(paths[k].exists() for k in keys):
            continue
        proc = subprocess.run([sys.executable, __file__, flag, name, "--cache", str(cache)], capture_output=True, check=False,
                              text=True, timeout=timeout)
        if proc.returncode != 0:
            return proc.stderr[-2000:]
    return None


def loader_path(out: Path, notes: list[str]) -> str:
    """Which loader path the export took, from the report's notes and parity.md."""
    text = "\n".join(notes)
    md = out / "parity.md"
    if md.is_file():
        text += "\n" + md.read_text(errors="replace")
    low = text.lower()
    found = []
    for key, label in (("translating the keras 2 config", "translated"), ("with tf_keras (keras 2)", "tf_keras"),
                       ("savedmodel signature", "savedmodel"), ("was rebuilt as keras 3", "rebuilt"),
                       ("could not be rebuilt", "graph rungs only")):
        if key in low:
            found.append(label)
    why = re.search(r"could not be rebuilt as one([^)]*)\)", text)
    return "+".join(found) + (f" ({why.group(1).strip(': ')[:100]})" if why and why.group(1) else "") or "?"


def export_one(model: Path, mode: str | None, calib: Path, val: Path, out: Path, timeout: int) -> dict:
    cmd = ["nice", "-n", "19", sys.executable, "-m", "tledge", "export", str(model), "--int8", "--calib", str(calib),
           "--val", str(val), "--fidelity", "0.999", "--repair-time", "inf", "--out", str(out), "--json"]
    if mode:
        cmd += ["--preprocess", mode]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    shutil.rmtree(out, ignore_errors=True)  # a run that dies must not be read from an earlier parity.md
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(REPO),
                              check=False)
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, stdout, stderr = "timeout", exc.stdout or "", exc.stderr or ""
        stdout, stderr = (s.decode() if isinstance(s, bytes) else s for s in (stdout, stderr))
    row = {"rc": rc, "seconds": round(time.perf_counter() - start, 1), "stderr_tail": stderr[-1500:]}
    try:
        rep = json.loads(stdout[stdout.index("{"):])
    except ValueError:
        rep = {}
    fidelity = rep.get("fidelity") or []
    row["notes"] = rep.get("notes") or []
    row["loader"] = loader_path(out, row["notes"])
    row["errors"] = [{k: a.get(k) for k in ("file", "rung", "error")} for a in fidelity if a.get("error")]
    row["kept"] = {a["file"]: a["rung"] for a in fidelity if a.get("kept")}
    row["final"] = {r["file"].rsplit("/", 1)[-1]: (r.get("top1_agreement"), r.get("passed"))
                    for r in rep.get("results") or [] if "int8" in r.get("file", "")}
    return row


def markdown(rows: list[dict]) -> str:
    """One row per model x loader; internal errors (crashes inside a rung) apart from rungs that had
    nothing to do."""
    header = ("| model | loader | rc | s | loader path | kept (tflite / onnx) | final int8 agreement (tflite / onnx) | "
              "internal errors | other rung errors |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kept = " / ".join(r.get("kept", {}).get(f"model_int8.{k}", "-") for k in ("tflite", "onnx"))
        final = " / ".join(_final(r.get("final", {}).get(f"model_int8.{k}")) for k in ("tflite", "onnx"))
        errs = r.get("errors", [])
        internal = [e for e in errs if str(e["error"]).startswith("internal error:")]
        other = sorted({f"{e['rung']}: {str(e['error'])[:60]}" for e in errs if e not in internal})
        lines.append(f"| {r['model']} | {r['loader']} | {r['rc']} | {r['seconds']} | {r.get('path', '')} | {kept} | "
                     f"{final} | {'; '.join(_error(e) for e in internal) or '-'} | {'; '.join(other) or '-'} |")
    return "\n".join(lines) + "\n"


def _error(e: dict) -> str:
    return f"{e['file']}:{e['rung']}: {str(e['error'])[:120]}"


def _final(entry) -> str:
    if not entry or entry[0] is None:
        return "-"
    return f"{entry[0]:.3f}{'' if entry[1] else ' (fallback)'}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/tledge-loader-sweep"))
    ap.add_argument("--only", default="")
    ap.add_argument("--loaders", default="h5,sm")
    ap.add_argument("--timeout", type=int, default=1500)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--build", help=argparse.SUPPRESS)
    ap.add_argument("--build-tfsm", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.build:
        build(args.build, args.cache / "models")
        return 0
    if args.build_tfsm:
        paths = model_paths(args.cache, args.build_tfsm)
        build_tfsm(paths["h5"], paths["tfsm"])
        return 0
    calib, val = data_dirs(args.cache)
    rows = []
    for name in [n for n in args.only.split(",") if n] or list(MODELS):
        failed = ensure_built(args.cache, name, args.timeout)
        if failed:
            rows.append({"model": name, "loader": "build", "rc": "build failed", "seconds": 0, "stderr_tail": failed})
            print(markdown(rows[-1:]), failed, flush=True)
            continue
        for loader in args.loaders.split(","):
            model = model_paths(args.cache, name)[loader]
            row = export_one(model, MODELS[name][1], calib, val, args.cache / "exports" / f"{name}-{loader}",
                             args.timeout)
            row.update(model=name, loader=loader, path=row.pop("loader"))
            rows.append(row)
            print(markdown(rows[-1:]), flush=True)
            if row["rc"] != 0:
                print(row["stderr_tail"], flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1, default=str))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
