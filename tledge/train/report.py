"""What a run leaves in OUT: model.keras, model.h5, labels.txt, tledge.json, metrics.json and two plots
(model.h5 only where Keras 3 reloads it: not for bare keras ops, `bare_op`, nor InceptionResNetV2's
CustomScaleLayer, which its HDF5 loader does not know; a warning says why).

Every file is written under a temporary name in OUT and renamed. Both model files are reloaded in
safe mode (with tledge's custom objects) and must predict what the trained model predicts before
they replace anything; metrics.json is written last.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from tledge.artifacts import CONTRACT_FILE, LABELS_FILE
from tledge._deps import available, require
from tledge.errors import ExportError, TledgeWarning
from tledge.safejson import finite
from tledge.io import atomic_path, atomic_write_text, check_space, name_outside
from tledge.signals import signals_held, stop_if_signalled
from tledge.train.checkpoint import numpy2_quiet, temp_sibling, weight_bytes

RELOAD_TOLERANCE = 1e-5  # the reloaded file against the model in memory, both through predict_on_batch
EAGER_TOLERANCE = 1e-3  # the caller's outputs (an eager call) against predict_on_batch: kernels differ, not weights


def save_model(model, path: Path, check_x: np.ndarray, expected: np.ndarray) -> Path:
    """Save `model` (.keras or .h5 by suffix), reload it in safe mode and compare, then rename into place."""
    keras = require("keras")
    from tledge.layers import CUSTOM_OBJECTS

    from tledge.log import root_untouched

    absl, level = logging.getLogger("absl"), logging.getLogger("absl").level
    check_space(path.parent, weight_bytes(model.weights), path.name)
    with temp_sibling(path) as tmp:
        absl.setLevel(logging.ERROR)  # "HDF5 ... is considered legacy": model.h5 is asked for on purpose
        try:
            with numpy2_quiet(), root_untouched():  # (a library train() left a stderr handler on the root)
                model.save(str(tmp))
        finally:
            absl.setLevel(level)
        try:
            again = keras.saving.load_model(str(tmp), custom_objects=CUSTOM_OBJECTS, safe_mode=True, compile=False)
        except Exception as exc:
            raise ExportError(f"{path.name} does not reload in safe mode: {exc.__class__.__name__}: {exc}") from None
        # the saved file against the model in memory, run the same way: `expected` came from an eager call,
        # which differs from predict_on_batch's compiled graph by up to ~5e-5 (ResNet50): a finished run failed
        got = np.asarray(again.predict_on_batch(check_x), np.float32)
        want = np.asarray(model.predict_on_batch(check_x), np.float32) if len(check_x) else got
        diff = float(np.abs(got - want).max()) if len(check_x) else 0.0
        drift = float(np.abs(want - expected).max()) if len(check_x) else 0.0
        if not diff <= RELOAD_TOLERANCE or not drift <= EAGER_TOLERANCE:
            raise ExportError(f"{path.name} reloaded predicts differently (max abs diff {max(diff, drift):.3g})")
    return path


def bare_op(model) -> str | None:
    """The name of the first bare keras op (`x + 3.0`: an operation that is not a layer) in a functional
    model or the models nested in it, or None. Keras 3 saves such graphs to .h5 but cannot reload them
    (for the warning: it names the op instead of Keras' 'Only input tensors may be passed ...')."""
    keras = require("keras")
    for op in getattr(model, "operations", ()):
        if not isinstance(op, keras.layers.Layer):
            return op.name
        inner = bare_op(op) if isinstance(op, keras.Model) else None
        if inner is not None:
            return inner
    return None


DENSE_CONFUSION_MAX = 100  # classes: above, metrics.json holds the nonzero cells only. The full matrix grew with the
# classes squared: 81 MB of metrics.json at 3,000 classes, and a 10,000-class run killed past 7 GB while writing it
PLOT_CONFUSION_MAX = 1000  # classes: confusion.png above is a picture of nothing (and a dense n x n array)


def confusion(y: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    cm = np.zeros((n, n), np.int64)
    np.add.at(cm, (y, pred), 1)
    return cm


def confusion_fields(y: np.ndarray, pred: np.ndarray, n: int) -> dict:
    """metrics.json's confusion: the matrix up to DENSE_CONFUSION_MAX classes, else "confusion_cells", the
    [true, predicted, count] of every nonzero cell (as many as the validation images at most)."""
    if n <= DENSE_CONFUSION_MAX:
        return {"confusion_matrix": confusion(y, pred, n).tolist()}
    pairs = np.stack([np.asarray(y, np.int64), np.asarray(pred, np.int64)], 1)
    cells, counts = np.unique(pairs, axis=0, return_counts=True) if len(pairs) else (pairs, [])
    return {"confusion_matrix": None, "confusion_cells": [[int(t), int(p), int(c)] for (t, p), c in zip(cells, counts)]}


def confusion_of(metrics: dict, n: int) -> np.ndarray | None:
    """The matrix of metrics.json's confusion fields for the plot (None above PLOT_CONFUSION_MAX classes)."""
    if metrics.get("confusion_matrix") is not None:
        return np.asarray(metrics["confusion_matrix"])
    if n > PLOT_CONFUSION_MAX or "confusion_cells" not in metrics:
        return None
    cm = np.zeros((n, n), np.int64)
    for t, p, c in metrics["confusion_cells"]:
        cm[t, p] = c
    return cm


def plot_curves(history: list[dict], path: Path) -> bool:
    if not _can_plot(path):
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    x = np.arange(1, len(history) + 1)
    for ax, key, title in zip(fig.subplots(1, 2), ("accuracy", "loss"), ("Accuracy", "Loss")):
        ax.plot(x, [r[key] for r in history], label=f"train {key}")
        ax.plot(x, [r[f"val_{key}"] for r in history], label=f"val {key}")
        starts = [i + 1 for i, r in enumerate(history) if i and r["phase"] != history[i - 1]["phase"]]
        for s in starts:
            ax.axvline(s - 0.5, color="gray", linestyle="--", linewidth=0.8)
        ax.set_title(title + (" (dashed: fine-tuning starts)" if starts else ""))
        ax.set_xlabel("epoch (both phases)")
        ax.legend()
    fig.tight_layout()
    return _save_fig(fig, path)


MAX_PLOT_INCHES = 24.0  # the confusion matrix's side at most (2400 px at 100 dpi)
MAX_LABELLED_CLASSES = 40  # more: no class names on the axes (unreadable at that size)
MAX_COUNTED_CLASSES = 25  # more: no count in each cell


def plot_confusion(cm: np.ndarray, labels, path: Path) -> bool:
    if not _can_plot(path):
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(labels)
    side = min(0.6 * n, MAX_PLOT_INCHES)  # 0.6 inch a class made 250 classes a 7.9 GB figure (83 s)
    fig = Figure(figsize=(max(4.5, side + 2.5), max(4, side + 1.5)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(cm, cmap="Blues", interpolation="nearest")
    named = n <= MAX_LABELLED_CLASSES and _drawable(labels)  # CJK or emoji names were empty boxes: indices instead
    if n <= MAX_LABELLED_CLASSES:
        ticks = labels if named else [str(i) for i in range(n)]
        ax.set_xticks(range(n), ticks, rotation=45 if named else 0, ha="right" if named else "center")
        ax.set_yticks(range(n), ticks)
    ax.set_xlabel("predicted" if named else f"predicted (class index, {n} classes: labels.txt)")
    ax.set_ylabel("true")
    half = cm.max() / 2 if cm.size else 0
    for i in range(n if n <= MAX_COUNTED_CLASSES else 0):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > half else "black")
    ax.set_title(f"Validation: {int(np.trace(cm))}/{int(cm.sum())} right")
    fig.tight_layout()
    return _save_fig(fig, path)


def _drawable(labels) -> bool:
    """Whether matplotlib's default font has a glyph for every character of the labels."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    try:
        font = FT2Font(font_manager.findfont(font_manager.FontProperties()))
    except (OSError, RuntimeError, ValueError):
        return True
    return all(font.get_char_index(ord(ch)) for name in labels for ch in str(name) if not ch.isspace())


def _can_plot(path: Path) -> bool:
    if available("matplotlib"):
        return True
    warnings.warn(f"matplotlib is not installed: skipping {path.name} (pip install matplotlib, in tledge[train])",
                  TledgeWarning, stacklevel=3)
    return False


def _save_fig(fig, path: Path) -> bool:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return True


def write_all(out: Path, model, contract, metrics: dict, check_x: np.ndarray, expected: np.ndarray,
              t0: float | None = None, split=None) -> dict:
    """Write every output (metrics.json last, with the wall time since `t0`); returns {kind: path}. Everything is
    written and checked in a staging folder inside OUT first, then renamed into place in one quick pass: a run
    that dies while saving (seconds of model saves and plots) left the new model.keras beside the previous run's
    labels.txt and tledge.json, and an export of it passed parity under the wrong labels."""
    from tledge.images import TRAINING_SPLIT

    out.mkdir(parents=True, exist_ok=True)
    for left in out.glob(".tledge-final-*"):  # a killed run's (the train lock keeps out any live one)
        shutil.rmtree(left, ignore_errors=True)
    stage = out / f".tledge-final-{os.getpid()}"
    stage.mkdir()
    try:
        linked = link_split(stage, split) if split is not None else None
        try:
            names = _write_staged(stage, model, contract, metrics, check_x, expected, t0, linked)
        except OSError as exc:
            name_outside(exc, stage, out)  # --out's path in the message, not the staging folder's (gone by then)
            raise
        stop_if_signalled()  # a stop that got lost (tledge.signals) swaps in nothing
        if "h5" not in names:
            (out / "model.h5").unlink(missing_ok=True)  # an earlier run's file would not be this model
        with signals_held():  # Ctrl-C / SIGTERM / SIGHUP between two renames left a new model beside the old labels
            old_split = out / TRAINING_SPLIT
            if linked is None and old_split.is_dir() and not old_split.is_symlink():  # an earlier run's images:
                os.replace(old_split, stage / f".old-{TRAINING_SPLIT}")  # export would calibrate on them
            for kind, name in names.items():  # metrics.json last: it says the run's files are all there
                if (out / name).is_dir() and not (out / name).is_symlink():  # a folder (split/): the old one out first
                    os.replace(out / name, stage / f".old-{name}")
                os.replace(stage / name, out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {kind: out / name for kind, name in names.items()}


def link_split(stage: Path, split) -> str | None:
    """split/train/<class>/ and split/val/<class>/ in `stage`: symbolic links to the images the run trained and
    validated on (`split`: a DataPlan of the images that were read), so that `tledge export OUT/model.keras --int8`
    calibrates on the training images and checks parity on the held-out ones without being told where they are.
    None (and a note) where the file system has no symbolic links."""
    from tledge import log
    from tledge.images import TRAINING_SPLIT

    root = stage / TRAINING_SPLIT
    try:
        for part, images in (("train", split.train), ("val", split.val)):
            taken: dict[str, set[str]] = {}
            for f, y in zip(images.files, images.y):
                folder = root / part / images.classes[int(y)]
                name, k = f.name, 0
                while name in taken.setdefault(folder.name, set()):  # ants/a/x.png, ants/b/x.png, ants/a/2-x.png
                    k += 1
                    name = f"{k}-{f.name}"
                taken[folder.name].add(name)
                folder.mkdir(parents=True, exist_ok=True)
                os.symlink(Path(f).resolve(), folder / name)
    except OSError as exc:
        shutil.rmtree(root, ignore_errors=True)
        log.note(f"{TRAINING_SPLIT}/ not written (symbolic links: {exc.strerror or exc}): "
                 "export needs --calib and --val")
        return None
    return TRAINING_SPLIT


def _write_staged(stage: Path, model, contract, metrics, check_x, expected, t0, linked=None) -> dict[str, str]:
    names = {"keras": save_model(model, stage / "model.keras", check_x, expected).name}
    try:  # the legacy format is a convenience: model.keras (checked above) is the model
        names["h5"] = save_model(model, stage / "model.h5", check_x, expected).name
    except ExportError as exc:
        bare = bare_op(model)
        why = (f"the backbone computes with bare keras ops ({bare}, as keras.applications' MobileNetV3 writes "
               "hard-swish), which Keras 3 cannot reload from HDF5") if bare else str(exc)
        (stage / "model.h5").unlink(missing_ok=True)
        warnings.warn(f"model.h5 not written: {why}; model.keras holds the model", TledgeWarning, stacklevel=3)
    names["labels"] = atomic_write_text(stage / LABELS_FILE, "".join(f"{lab}\n" for lab in contract.labels)).name
    names["contract"] = contract.save(stage / CONTRACT_FILE).name
    if linked:
        names["split"] = linked
    if plot_curves(metrics["history"], stage / "curves.png"):
        names["curves"] = "curves.png"
    cm = confusion_of(metrics, len(contract.labels))
    if cm is not None and plot_confusion(cm, contract.labels, stage / "confusion.png"):
        names["confusion"] = "confusion.png"
    metrics["files"] = dict(names) | {"metrics": "metrics.json"}
    if t0 is not None:
        metrics["wall_time_s"] = round(time.perf_counter() - t0, 2)
    names["metrics"] = atomic_write_text(stage / "metrics.json", json.dumps(finite(metrics), indent=2, allow_nan=False) + "\n").name
    return names
