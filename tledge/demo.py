"""`tledge demo`: the whole chain on a data set the project generates, with nothing but a clone.

generate images -> train -> export --int8 (TFLite + ONNX, parity-checked) -> run the TensorFlow-free
runtime on held-out images; print every artefact and the accuracy at each step.

Where the starting weights come from (`weights=None`, the default), first match wins:

1. ImageNet weights already in the Keras cache (~/.keras/models): "imagenet", no download;
2. the Keras-Applications no-top file in ../shared/assets/keras_imagenet_weights/ next to the
   checkout (a local copy of the same ImageNet weights): used as a local file;
3. the ImageNet download host answers (a 2 s TCP probe): "imagenet";
4. otherwise random initialisation (what CI and most fresh machines get).

Pretrained weights train the usual two phases (head on the frozen backbone, then the top layers).
A random backbone cannot be frozen usefully, and tledge.train keeps batch norm in inference mode
(its moving statistics frozen): with Keras' initial statistics (mean 0, variance 1) activations
shrink ~10x per block and vanish. So from random initialisation the demo first sets every batch-norm
layer's statistics from a batch of training images (a data-dependent initialisation, written as a
local weights file under `train_init/`), then trains the whole network in one phase.
"""
from __future__ import annotations

import json
import numbers
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tledge.errors import TledgeError

BACKBONE, ALPHA = "mobilenet", 0.25
IMAGENET_FILE = "mobilenet_2_5_224_tf_no_top.h5"  # Keras' name for MobileNet v1 alpha 0.25 no-top weights
SHARED_WEIGHTS = Path("shared", "assets", "keras_imagenet_weights", IMAGENET_FILE)  # under the checkout's parent
PROBE_HOST = ("storage.googleapis.com", 443)

# Measured on a 2-core machine (docs/demo.md): with 100 training images per class the whole network
# trains from random init to >= 0.97 val accuracy in 2-4 epochs and 1.0 by ~10 (20 planned, ~0.5 s each);
# 60 validation / test images per class make one int8 flip 0.56 accuracy points (the threshold is 1 point).
N_TRAIN, N_VAL, N_TEST = 100, 60, 60
SOURCE_SIZE = 96  # generated image size; the model input (`size`) is smaller


@dataclass(frozen=True)
class Start:
    """Where training starts: `weights` is what TrainConfig gets; `kind` is imagenet / file / none."""

    weights: str
    kind: str
    why: str

    @property
    def pretrained(self) -> bool:
        return self.kind != "none"


@dataclass
class DemoResult:
    out: Path
    weights: str  # "imagenet", "none" (random init) or the local weights file
    steps: list[dict] = field(default_factory=list)
    passed: bool = False
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def step(self, name: str) -> dict:
        return next(s for s in self.steps if s["step"] == name)

    def to_dict(self) -> dict:
        return {"out": str(self.out), "weights": self.weights, "passed": self.passed,
                "failures": list(self.failures), "seconds": round(self.seconds, 1), "steps": self.steps}


def imagenet_reachable(timeout: float = 2.0) -> bool:
    """Whether Keras could download ImageNet weights (the storage host answers), without downloading."""
    try:
        socket.create_connection(PROBE_HOST, timeout=timeout).close()
        return True
    except OSError:
        return False


def keras_cached_imagenet() -> Path | None:
    """The weights file in the Keras cache, if a previous download left it there (then no network is needed)."""
    home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    p = home / "models" / IMAGENET_FILE
    return p if p.is_file() else None


def shared_imagenet_file() -> Path | None:
    """../shared/assets/keras_imagenet_weights/<file> beside the checkout (or beside the working directory)."""
    for root in (Path(__file__).resolve().parents[1], Path.cwd()):
        p = root.parent / SHARED_WEIGHTS
        if p.is_file():
            return p
    return None


def choose_weights(weights: str | None, *, probe=imagenet_reachable) -> Start:
    """The starting weights for `weights` = None (auto), "imagenet", "none" or a local file."""
    if weights == "none":
        return Start("none", "none", "random initialisation (--weights none)")
    if weights == "imagenet":
        if keras_cached_imagenet() or probe():
            return Start("imagenet", "imagenet", "ImageNet (--weights imagenet)")
        raise TledgeError(f"--weights imagenet: the download host {PROBE_HOST[0]} is not reachable and "
                          f"{IMAGENET_FILE} is not in the Keras cache; pass --weights PATH (a local copy), "
                          "or --weights none to train from random initialisation")
    if weights:
        if not Path(weights).is_file():
            raise TledgeError(f"--weights: {weights} is not a file (give imagenet, none or a no-top .h5 file)")
        return Start(str(weights), "file", f"local file {weights} (--weights)")
    cached = keras_cached_imagenet()
    if cached:
        return Start("imagenet", "imagenet", f"ImageNet, already in the Keras cache ({cached}): no download")
    shared = shared_imagenet_file()
    if shared:
        return Start(str(shared), "file", f"ImageNet weights from the local file {shared} (found beside the "
                     "checkout; no download; --weights none trains from random initialisation instead)")
    if probe():
        return Start("imagenet", "imagenet", f"ImageNet (download from {PROBE_HOST[0]} reachable)")
    return Start("none", "none", "the ImageNet download is not reachable from here: continuing from random "
                 "initialisation (pass --weights PATH to start from a local no-top .h5 file)")


def check_outputs(out: Path) -> None:
    """OUT's data/, train/ and export/ before anything is written or loaded (a train/model.keras of the user's was
    found after the data was generated and Keras loaded: exit 1 and a summary of five lines)."""
    from tledge.export.unit import not_an_export
    from tledge.train.api import check_out

    data = out / "data"
    if data.exists() and not (data / "demo_data.json").is_file():
        raise TledgeError(f"{data} exists but was not made by tledge demo: choose another --out")
    check_out(out / "train", data)
    foreign = not_an_export(out / "export")
    if foreign:
        raise TledgeError(foreign)


def make_data(data: Path, n_train: int, n_val: int, n_test: int, seed: int = 0) -> dict:
    """train/, val/ and test/ class folders of generated shapes; reused when a previous run made the same."""
    from tledge.datasets import SHAPE_CLASSES, make_shapes

    spec = {"generator": "tledge.datasets.make_shapes", "size": SOURCE_SIZE, "classes": list(SHAPE_CLASSES),
            "splits": {"train": [n_train, seed * 3 + 1], "val": [n_val, seed * 3 + 2], "test": [n_test, seed * 3 + 3]}}
    marker = data / "demo_data.json"
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == spec:
        return spec
    if data.exists():
        if not marker.is_file():
            raise TledgeError(f"{data} exists but was not made by tledge demo: choose another --out")
        for split in spec["splits"]:  # made by an earlier demo with other settings: remake it
            shutil.rmtree(data / split, ignore_errors=True)
        marker.unlink()
    for split, (n, s) in spec["splits"].items():
        make_shapes(data / split, n_per_class=n, size=SOURCE_SIZE, seed=s)
    marker.write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    return spec


def bn_initialised_weights(train_dir: Path, size: int, out_file: Path, *, n: int = 128, seed: int = 0) -> Path:
    """A randomly initialised backbone whose batch-norm statistics come from `n` training images.

    One forward pass in training mode with momentum 0 sets each layer's moving mean / variance to the
    batch statistics of its input (earlier layers already normalised), so the frozen statistics keep
    activations at unit scale through the network instead of vanishing.
    """
    from tledge import backbones
    from tledge._deps import require
    from tledge.backbones import contract_for
    from tledge.images import labelled_images
    from tledge.layers import Preprocess
    from tledge.train.checkpoint import numpy2_quiet

    keras = require("keras", purpose="training")
    keras.utils.set_random_seed(seed)  # (the demo's own process state: run_demo puts the caller's generators back)
    contract = contract_for(BACKBONE, size, baked=True)
    files, _, _ = labelled_images(train_dir)
    pick = np.random.default_rng(seed).permutation(len(files))[:n]
    x = np.stack([contract.prepare(files[i]) for i in pick]).astype(np.float32)
    x = np.asarray(Preprocess(contract.norm.value, channels=contract.channels)(x))
    bb = backbones.build(BACKBONE, (size, size, 3), weights=None, alpha=ALPHA)
    for layer in bb.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    bb(x, training=True)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with numpy2_quiet():
        bb.save_weights(str(out_file))
    return out_file


def train_settings(start: Start, epochs: int | None) -> dict:
    """TrainConfig fields for the start (epochs=None: the demo's defaults)."""
    if start.pretrained:  # transfer learning: head on the frozen backbone, then the top 30% at lr/300
        head = 8 if epochs is None else max(1, epochs // 2)
        return {"epochs": head, "fine_tune_epochs": 6 if epochs is None else max(1, epochs - head),
                "lr": 3e-3, "patience": 4}
    # random init: no useful frozen features, so no head phase; every layer trains (batch norm keeps
    # the data-set statistics set by bn_initialised_weights); small batches = more updates per epoch
    return {"epochs": 0, "fine_tune_epochs": 20 if epochs is None else epochs, "fine_tune_at": 0,
            "fine_tune_lr": 2e-3, "batch": 16, "patience": 8}


def run_demo(out: str | Path = "demo_out", *, weights: str | None = None, size: int = 64,
             n_train: int = N_TRAIN, n_val: int = N_VAL, n_test: int = N_TEST, epochs: int | None = None,
             seed: int = 0, min_accuracy: float = 0.9, verbose: int = 0, say=print) -> DemoResult:
    """Generate -> train -> export --int8 -> parity -> runtime on held-out images.

    `passed` is True when the Keras model reaches `min_accuracy` on the validation images, every exported
    file passes parity (with an int8 TFLite and an int8 ONNX file among them) and every file's runtime
    accuracy on the held-out test images is within 5 points of the Keras validation accuracy. Bad
    arguments raise TledgeError before anything runs; a TledgeError inside a step is reported as that
    step's failure (the later steps are skipped) and the summary still lists what was made.
    """
    t_all = time.perf_counter()
    out = Path(out)
    for name, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test), ("size", size), ("seed", seed),
                    ("epochs", 1 if epochs is None else epochs)):  # n_train="50" was a TypeError, size=64.0 taken
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TledgeError(f"{name} must be an integer, got {v!r}")
    for name, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if v < 1:
            raise TledgeError(f"{name} must be >= 1, got {v}")
    if size < 32:
        raise TledgeError(f"size must be >= 32 pixels for {BACKBONE}, got {size}")
    if epochs is not None and epochs < 1:
        raise TledgeError(f"epochs must be >= 1, got {epochs}")
    from tledge._deps import need

    check_outputs(out)
    need(("tensorflow", "keras", "tf2onnx"), "the demo's train and export steps")  # exit 2 before writing anything
    start = choose_weights(weights)
    res = DemoResult(out, start.weights)
    ctx = {"out": out, "data": out / "data", "start": start, "size": size, "seed": seed, "epochs": epochs,
           "n": (n_train, n_val, n_test), "min_accuracy": min_accuracy, "verbose": verbose}
    import random

    saved = random.getstate(), np.random.get_state()  # training seeds them: the caller's generators back after
    try:
        for step in (_data_step, _train_step, _export_step, _runtime_step):
            try:
                step(res, ctx, say)
            except TledgeError as exc:
                name = step.__name__.strip("_").replace("_step", "")
                res.failures.append(f"{name}: {exc}")
                say(f"      error: {exc}")
                break
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
    res.passed = not res.failures
    res.seconds = time.perf_counter() - t_all
    _summary(res, say)
    return res


def _data_step(res: DemoResult, ctx: dict, say) -> None:
    data, (n_train, n_val, n_test) = ctx["data"], ctx["n"]
    say(f"[1/4] data: generating 3 classes of {SOURCE_SIZE} px shapes in {data}/ "
        f"(per class: {n_train} train, {n_val} val, {n_test} test)")
    t = time.perf_counter()
    make_data(data, n_train, n_val, n_test, ctx["seed"])
    res.steps.append({"step": "data", "seconds": time.perf_counter() - t, "artefacts": [str(data)],
                      "images": {"train": 3 * n_train, "val": 3 * n_val, "test": 3 * n_test}})


def _train_step(res: DemoResult, ctx: dict, say) -> None:
    from tledge.train import TrainConfig, train

    start, size, seed, out, data = ctx["start"], ctx["size"], ctx["seed"], ctx["out"], ctx["data"]
    say(f"[2/4] train: {BACKBONE} alpha {ALPHA} at {size} px; weights: {start.why}")
    t = time.perf_counter()
    init = start.weights
    if not start.pretrained:
        init = str(bn_initialised_weights(data / "train", size, out / "train_init" /
                                          f"{BACKBONE}_{ALPHA}_{size}px_random_bn.weights.h5", seed=seed))
        say(f"      random init: batch-norm statistics set from training images -> {init}; training all layers")
    settings = train_settings(start, ctx["epochs"])
    tr = train(data / "train", TrainConfig(backbone=BACKBONE, alpha=ALPHA, weights=init, size=size,
                                           val_dir=data / "val", out=out / "train", seed=seed,
                                           verbose=ctx["verbose"], **settings))
    ran = sum(p.get("epochs_run", 0) for p in tr.metrics.get("phases", []))
    res.steps.append({"step": "train", "val_accuracy": tr.val_accuracy, "val_images": tr.metrics["val_images"],
                      "epochs_run": ran, "settings": settings, "init": init, "seconds": time.perf_counter() - t,
                      "model": str(tr.model_path),
                      "artefacts": [str(p) for p in (tr.model_path, tr.h5_path, tr.out / "metrics.json") if p]})
    say(f"      Keras val accuracy {tr.val_accuracy:.3f} ({tr.metrics['val_images']} images, {ran} epochs, "
        f"{time.perf_counter() - t:.0f} s) -> {tr.model_path}")
    if tr.val_accuracy < ctx["min_accuracy"]:
        res.failures.append(f"train: Keras val accuracy {tr.val_accuracy:.3f} < {ctx['min_accuracy']}")


def _export_step(res: DemoResult, ctx: dict, say) -> None:
    from tledge.export.pipeline import ExportConfig, export

    data = ctx["data"]
    say("[3/4] export: TFLite + ONNX, fp32 and int8, parity against the Keras model on the val images")
    t = time.perf_counter()
    ex = export(res.step("train")["model"], ExportConfig(out=ctx["out"] / "export", int8=True,
                                                         calib=str(data / "train"), val=str(data / "val")))
    results = ex.report.results
    rows = [a for a in getattr(ex.report, "fidelity", None) or [] if "skipped" not in a]  # the int8 loop's rows
    repairs = [a for a in rows if a["rung"] != "plain"]  # repair rungs tried
    missed = any(not a["passed"] for a in rows if a["rung"] == "plain")
    res.steps.append({"step": "export", "passed": ex.passed, "seconds": time.perf_counter() - t,
                      "files": [str(f) for f in ex.files], "report": str(ex.out / "parity.md"),
                      "artefacts": [str(f) for f in ex.files] + [str(ex.out / "parity.md")],
                      "int8_repair_attempts": len(repairs),
                      "parity": [{"file": r.file, "format": r.format, "precision": r.precision,
                                  "agreement": r.top1_agreement, "accuracy": r.accuracy,
                                  "reference_accuracy": r.reference_accuracy, "max_abs": r.max_abs_error,
                                  "passed": r.passed, "failures": list(r.failures)} for r in results]})
    say(_indent(ex.report.table()))
    if repairs:
        why = "missed the parity thresholds" if missed else "passed, but too few val images to confirm it"
        say(f"      plain int8 {why}; the export's int8 repair loop tried {len(repairs)} variant(s)")
    say(f"      report: {ex.out / 'parity.md'}")
    res.failures += [f"export: {r.file}: {f}" for r in results if not r.passed for f in (r.failures or ["failed"])]
    for fmt in ("tflite", "onnx"):  # the demo promises an int8 file of each format that passed parity
        if not any(r.format == fmt and r.precision == "int8" and r.passed for r in results):
            res.failures.append(f"export: no int8 {fmt} file passed parity")


def _runtime_step(res: DemoResult, ctx: dict, say) -> None:
    from tledge.images import labelled_images
    from tledge.runtime import load

    files = [Path(f) for f in res.step("export")["files"]]
    test_dir = ctx["data"] / "test"
    say(f"[4/4] runtime (no TensorFlow): {3 * ctx['n'][2]} held-out test images through each exported file")
    if not files:
        raise TledgeError("no exported files to run")
    rows = []
    t0 = time.perf_counter()
    for f in files:
        model = load(f)
        paths, y, _ = labelled_images(test_dir, model.contract.labels)
        t = time.perf_counter()
        preds = [p[0].index for p in model.classify(paths, top_k=1)]
        ms = 1000 * (time.perf_counter() - t) / len(paths)
        acc = float(np.mean(np.asarray(preds) == y))
        rows.append({"file": f.name, "path": str(f), "accuracy": acc, "images": len(paths), "ms_per_image": ms})
        say(f"      {f.name:22} test accuracy {acc:.3f}  ({ms:.1f} ms/image incl. decode)")
    res.steps.append({"step": "runtime", "files": rows, "seconds": time.perf_counter() - t0})
    keras_acc = res.step("train")["val_accuracy"]
    res.failures += [f"runtime: {r['file']} test accuracy {r['accuracy']:.3f} is more than 5 points below the "
                     f"Keras val accuracy {keras_acc:.3f}" for r in rows if r["accuracy"] < keras_acc - 0.05]


def _indent(text: str, pad: str = "      ") -> str:
    return "\n".join(pad + line for line in text.splitlines())


def _summary(res: DemoResult, say) -> None:
    out = res.out
    steps = {s["step"]: s for s in res.steps}
    times = ", ".join(f"{k} {s['seconds']:.0f} s" for k, s in steps.items())
    weights = "random initialisation" if res.weights == "none" else res.weights
    say("")
    say(f"demo {'OK' if res.passed else 'FINISHED WITH FAILURES'} in {res.seconds:.0f} s ({times}); "
        f"weights: {weights}")
    say(f"artefacts in {out}/:")
    if "data" in steps:
        n = steps["data"]["images"]
        say(f"  data/        generated images: train/ {n['train']}, val/ {n['val']}, test/ {n['test']}")
    if "train" in steps:
        tr = steps["train"]
        if res.weights == "none":
            say(f"  train_init/  {Path(tr['init']).name} (random weights, batch-norm statistics from the data)")
        say("  train/       model.keras, model.h5, tledge.json, labels.txt, metrics.json, curves.png, confusion.png, "
            "split/ (links to the images it trained and validated on), checkpoints/ (for --resume)")
    if "export" in steps:
        files = [Path(f).name for f in steps["export"]["files"]]
        folder = Path(steps["export"]["files"][0]).parent if files else Path(out) / "export"
        others = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir()
                        if p.name not in files and not p.name.startswith(".")) if folder.is_dir() else []
        say(f"  export/      {', '.join(files + others)}")
    if steps.keys() - {"data"}:
        say("accuracy at each step:")
    if "train" in steps:
        tr = steps["train"]
        say(f"  train    {'Keras model':18} val accuracy  {tr['val_accuracy']:.3f} ({tr['val_images']} images)")
    for p in steps.get("export", {}).get("parity", []):
        acc = "-    " if p["accuracy"] is None else f"{p['accuracy']:.3f}"
        say(f"  export   {p['file']:18} val accuracy  {acc}, top-1 agreement with Keras {p['agreement']:.3f}  "
            f"{'pass' if p['passed'] else 'FAIL'}")
    for r in steps.get("runtime", {}).get("files", []):
        say(f"  runtime  {r['file']:18} test accuracy {r['accuracy']:.3f} ({r['images']} held-out images)")
    for f in res.failures:
        say(f"FAILED: {f}")
