"""The two phases and their epoch loop: early stopping on val accuracy, best weights kept, a checkpoint per epoch.

Phase "head": backbone frozen. Without augmentation the backbone's features are computed once and only
the head trains on them (fast path); with augmentation every batch goes through the frozen backbone.
Phase "fine_tune": the top backbone layers are unfrozen (batch norm stays frozen) at a lower rate.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from tledge._deps import require
from tledge.train import model as tm
from tledge.train.augment import Augment, batches, epoch_rng
from tledge.train.checkpoint import Checkpoints
from tledge.train.config import TrainConfig

PHASES = ("head", "fine_tune")


@dataclass
class Data:
    x: np.ndarray  # prepared training images
    y: np.ndarray
    xv: np.ndarray  # prepared validation images
    yv: np.ndarray
    class_weights: np.ndarray | None = None


@dataclass
class Run:
    """Everything the loop needs; `state` is what checkpoints store."""

    cfg: TrainConfig
    parts: Any  # model.Parts
    data: Data
    ckpt: Checkpoints
    state: dict
    log: Callable[[str], None] = print
    best_weights: list | None = None  # in memory; the file copy is checkpoints/best-*.weights.h5


def new_state(cfg: TrainConfig, labels) -> dict:
    return {"config": cfg.to_dict(), "labels": list(labels), "phase": PHASES[0], "epoch": 0, "bad_epochs": 0,
            "history": [], "phases_done": [], "best_score": None, "phase_best": None, "complete": False}


def predict(net, x: np.ndarray, batch: int) -> np.ndarray:
    out = [np.asarray(net.predict_on_batch(np.asarray(x[i:i + batch], np.float32)), np.float32)
           for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def scores(probs: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean cross-entropy)."""
    p = np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)
    return float((probs.argmax(1) == y).mean()), float(-np.log(p).mean())


def _better(acc: float, loss: float, best: list | None) -> bool:
    return best is None or acc > best[0] or (acc == best[0] and loss < best[1])


def _compile(net, lr: float) -> None:
    keras = require("keras")
    net.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                metrics=["accuracy"])


def _prepare_phase(run: Run, name: str) -> tuple[Any, np.ndarray, np.ndarray, dict]:
    """(network to train, training inputs, validation inputs, phase record) for phase `name`."""
    cfg, parts, d = run.cfg, run.parts, run.data
    if name == "head":
        tm.freeze(parts)
        fast = not cfg.augment
        rec = {"name": name, "lr": cfg.lr, "fast_path": fast, "augment": cfg.augment}
        if fast:
            t = time.perf_counter()
            feats = tm.feature_model(parts)
            x, xv = predict(feats, d.x, cfg.batch * 2), predict(feats, d.xv, cfg.batch * 2)
            rec["feature_time_s"] = round(time.perf_counter() - t, 2)
            net = tm.head_model(parts)
        else:
            x, xv, net = d.x, d.xv, tm.trainer(parts)
        _compile(net, cfg.lr)
    else:
        rec = {"name": name, "lr": cfg.effective_fine_tune_lr, "fast_path": False, "augment": cfg.augment,
               "unfrozen": tm.unfreeze_top(parts, cfg.unfreeze, cfg.fine_tune_at)}
        x, xv, net = d.x, d.xv, tm.trainer(parts)
        _compile(net, cfg.effective_fine_tune_lr)
    rec["epochs_planned"] = cfg.epochs if name == "head" else cfg.fine_tune_epochs
    rec["trainable_weights"] = int(sum(np.prod(v.shape) for v in net.trainable_weights))
    return net, x, xv, rec


def _epoch(run: Run, net, x, phase: int, epoch: int, augment: Augment | None) -> dict:
    """One pass over the training data; the epoch's sample-weighted mean loss and accuracy."""
    rng = epoch_rng(run.cfg.seed, phase, epoch)
    total = np.zeros(3)  # loss * n, accuracy * n, n  (train_on_batch reports one batch)
    for xb, yb, wb in batches(x, run.data.y, run.cfg.batch, rng, weights=run.data.class_weights,
                              augment=augment):
        logs = net.train_on_batch(xb, yb, sample_weight=wb, return_dict=True)
        total += (float(logs["loss"]) * len(yb), float(logs.get("accuracy", np.nan)) * len(yb), len(yb))
    return {"loss": float(total[0] / total[2]), "accuracy": float(total[1] / total[2])}


def run_phase(run: Run, name: str) -> None:
    cfg, st = run.cfg, run.state
    idx = PHASES.index(name)
    net, x, xv, rec = _prepare_phase(run, name)
    if st["epoch"] > 0:  # resuming inside this phase (the weights were loaded with the model)
        if not run.ckpt.load_optimizer(net.optimizer, net.trainable_variables, st):
            run.log("  (optimizer state not restored: it starts fresh)")
    augment = Augment() if cfg.augment and not rec["fast_path"] else None
    t0, stopped = time.perf_counter(), False
    for epoch in range(st["epoch"], rec["epochs_planned"]):
        t = time.perf_counter()
        row = {"phase": name, "epoch": epoch + 1, **_epoch(run, net, x, idx, epoch, augment)}
        row["val_accuracy"], row["val_loss"] = scores(predict(net, xv, cfg.batch * 2), run.data.yv)
        row["seconds"] = round(time.perf_counter() - t, 2)
        improved = _better(row["val_accuracy"], row["val_loss"], st["best_score"])  # best of the run
        if improved:
            st["best_score"] = [row["val_accuracy"], row["val_loss"], name, epoch + 1]
            run.best_weights = run.parts.model.get_weights()
        # early stopping looks at this phase's own best: fine-tuning may start below the head's best
        phase_best = st.get("phase_best") if epoch > 0 else None
        if _better(row["val_accuracy"], row["val_loss"], phase_best):
            st["phase_best"], st["bad_epochs"] = [row["val_accuracy"], row["val_loss"]], 0
        else:
            st["bad_epochs"] += 1
        st["history"].append(row)
        st["epoch"] = epoch + 1
        stopped = bool(cfg.patience) and st["bad_epochs"] >= cfg.patience and epoch + 1 < rec["epochs_planned"]
        run.state = st = run.ckpt.save(run.parts.model, net.optimizer, st, best=improved)
        run.log(f"{name:>9} {epoch + 1:3d}/{rec['epochs_planned']}  loss {row['loss']:.4f}  "
                f"acc {row['accuracy']:.3f}  val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.3f}"
                f"  {row['seconds']:.1f}s{'  *' if improved else ''}")
        if stopped:
            run.log(f"{name:>9} stopped early: val accuracy did not improve for {cfg.patience} epochs")
            break
    rows = [r for r in st["history"] if r["phase"] == name]
    rec.update(epochs_run=len(rows), stopped_early=stopped, wall_time_s=round(time.perf_counter() - t0, 2),
               best_val_accuracy=max((r["val_accuracy"] for r in rows), default=None))
    _end_phase(run, net, rec)


def _end_phase(run: Run, net, rec: dict) -> None:
    """Restore the best weights so far and checkpoint the start of the next phase."""
    st = run.state
    if run.best_weights is None and st.get("best"):
        run.ckpt.load_weights(run.parts.model, st, "best")
    elif run.best_weights is not None:
        run.parts.model.set_weights(run.best_weights)
    st["phases_done"].append(rec)
    nxt = PHASES.index(rec["name"]) + 1
    st.update(phase=PHASES[nxt] if nxt < len(PHASES) else "done", epoch=0, bad_epochs=0, phase_best=None)
    run.state = run.ckpt.save(run.parts.model, net.optimizer, st, best=False)


def run_all(run: Run) -> None:
    done = {r["name"] for r in run.state["phases_done"]}
    for name in PHASES:
        planned = run.cfg.epochs if name == "head" else run.cfg.fine_tune_epochs
        if name in done:
            continue
        if planned == 0 or (name == "fine_tune" and tm.cut_index(
                run.parts.backbone.layers, run.cfg.unfreeze, run.cfg.fine_tune_at) >= len(run.parts.backbone.layers)):
            run.state["phases_done"].append({"name": name, "skipped": True, "epochs_run": 0})
            continue
        if run.state["phase"] != name:
            run.state.update(phase=name, epoch=0, bad_epochs=0)
        run_phase(run, name)
