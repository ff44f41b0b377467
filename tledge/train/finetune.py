"""The two phases and their epoch loop: early stopping on val accuracy, best weights kept, a checkpoint per epoch.

Phase "head": backbone frozen. Without augmentation the backbone's features are computed once and only
the head trains on them (fast path); with augmentation every batch goes through the frozen backbone.
Phase "fine_tune": the top backbone layers are unfrozen (batch norm stays frozen) at a lower rate (LR/300);
it also stops as soon as an epoch's val accuracy falls more than `fine_tune_max_drop` (at least one val image)
under the best head epoch, and the best weights so far (maybe the head's) are kept.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from tledge._deps import require
from tledge.errors import TledgeError
from tledge.train import distributed as dist
from tledge.train import model as tm
from tledge.train.augment import Augment, local_batches
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
    progress: Callable[[int, int, str, float], None] = lambda *a: None  # one line per epoch (tledge.log)
    best_weights: list | None = None  # in memory; the file copy is checkpoints/best-*.weights.h5
    strategy: Any = None  # the tf.distribute strategy in force (the default one in a single process)
    topo: Any = None  # distributed.Topology
    started: float = field(default_factory=time.perf_counter)  # perf_counter() at the start, less earlier processes'

    def elapsed(self) -> float:
        """Seconds of the whole run so far, those of the processes it resumes from included."""
        return round(time.perf_counter() - self.started, 2)

    @property
    def chief(self) -> bool:
        return self.topo.cluster.rank == 0

    def load_checkpoint_weights(self, state: dict, which: str) -> None:
        """The chief reads its checkpoint file; every worker then holds the chief's weights."""
        if self.chief:
            self.ckpt.load_weights(self.parts.model, state, which)
        dist.sync_variables(self.strategy, self.topo, self.parts.model.weights)


@dataclass
class Stepper:
    """One phase's network, optimizer and compiled train / validation steps."""

    net: Any
    optimizer: Any
    step: Any
    evaluate: Any


def new_state(cfg: TrainConfig, labels) -> dict:
    return {"config": cfg.to_dict(), "labels": list(labels), "phase": PHASES[0], "epoch": 0, "bad_epochs": 0,
            "history": [], "phases_done": [], "best_score": None, "phase_best": None, "complete": False}


def predict(net, x: np.ndarray, batch: int) -> np.ndarray:
    """Outputs in inference mode (a plain call: Keras 3's predict functions fail under multi-worker strategies)."""
    out = [np.asarray(net(np.asarray(x[i:i + batch], np.float32), training=False), np.float32)
           for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def scores(probs: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean cross-entropy)."""
    p = np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)
    return float((probs.argmax(1) == y).mean()), float(-np.log(p).mean())


def _better(acc: float, loss: float, best: list | None) -> bool:
    """(a NaN loss is stored as null in the checkpoint state: no loss to beat)"""
    return best is None or acc > best[0] or (acc == best[0] and (best[1] is None or loss < best[1]))


def below_head(history: list[dict], val_accuracy: float, max_drop: float, n_val: int) -> float | None:
    """Fine-tuning's guard: how far `val_accuracy` is under the best head epoch in `history` when that is more
    than the allowed drop (`max_drop`, but at least one of the `n_val` images), else None (within it, or no
    head epoch to compare with)."""
    head = [r["val_accuracy"] for r in history if r["phase"] == "head"]
    if not head:
        return None
    drop = max(head) - val_accuracy
    return drop if drop > max(max_drop, 1.0 / max(n_val, 1)) + 1e-9 else None


def _stepper(run: Run, net, lr: float, input_shape: tuple[int, ...]) -> Stepper:
    """Adam at `lr` (with loss scaling under mixed precision), built for the net's trainable variables."""
    keras = require("keras")
    opt = keras.optimizers.Adam(lr)
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    opt.build(net.trainable_variables)
    return Stepper(net, opt, dist.make_step(run.strategy, net, opt, run.topo, input_shape),
                   dist.make_eval(run.strategy, net, run.topo, input_shape))


def _prepare_phase(run: Run, name: str) -> tuple[Stepper, np.ndarray, np.ndarray, dict]:
    """(what trains, training inputs, validation inputs, phase record) for phase `name`."""
    cfg, parts, d = run.cfg, run.parts, run.data
    scale = dist.lr_scale(run.topo)
    if name == "head":
        tm.freeze(parts)
        fast = not cfg.augment
        rec = {"name": name, "lr": cfg.lr * scale, "fast_path": fast, "augment": cfg.augment}
        if fast:
            t = time.perf_counter()
            feats = tm.feature_model(parts)
            x, xv = predict(feats, d.x, cfg.batch * 2), predict(feats, d.xv, cfg.batch * 2)
            rec["feature_time_s"] = round(time.perf_counter() - t, 2)
            net = tm.head_model(parts)
        else:
            x, xv, net = d.x, d.xv, tm.trainer(parts)
    else:
        rec = {"name": name, "lr": cfg.effective_fine_tune_lr * scale, "fast_path": False, "augment": cfg.augment,
               "unfrozen": tm.unfreeze_top(parts, cfg.unfreeze, cfg.fine_tune_at)}
        x, xv, net = d.x, d.xv, tm.trainer(parts)
    stepper = _stepper(run, net, rec["lr"], tuple(x.shape[1:]))
    rec["epochs_planned"] = cfg.epochs if name == "head" else cfg.fine_tune_epochs
    rec["trainable_weights"] = int(sum(np.prod(v.shape) for v in net.trainable_weights))
    return stepper, x, xv, rec


def reseed_dropout(model, seed: int, phase: int, epoch: int) -> int:
    """Every random layer's state (Dropout's seed generator) set from (seed, phase, epoch) at the start of each
    epoch, as the batches and augmentations already are: the state is not in the checkpoint, so a resumed run
    dropped other units than the uninterrupted one (weights 0.039 apart after one epoch). Returns how many."""
    states = [v for v in model.variables if v.path.endswith("seed_generator_state")]
    for i, v in enumerate(states):
        v.assign(np.array([(seed * 1_000_003 + phase * 10_007 + epoch * 101 + i * 7_919 + 1) % 2**31, 0], v.dtype))
    return len(states)


def _epoch(run: Run, stepper: Stepper, x, phase: int, epoch: int, augment: Augment | None) -> dict:
    """One pass over the training data (this process's share of it); the epoch's sample-weighted mean loss
    and accuracy over all replicas, and how many images this process trained on."""
    cfg, topo = run.cfg, run.topo
    reseed_dropout(run.parts.model, cfg.seed, phase, epoch)
    total, mine = np.zeros(3), []  # weighted loss sum, correct, images (all replicas)
    for b in local_batches(x, run.data.y, cfg.batch * topo.replicas, topo.local_bounds, cfg.seed, phase, epoch,
                           weights=run.data.class_weights, augment=augment):
        total += np.asarray(dist.guard(stepper.step, b.x, b.y, b.w, b.bounds, np.float32(b.n_global), topo=topo))
        mine.append(b.index)
    mine = np.concatenate(mine) if mine else np.zeros(0, int)
    dist.shard_log({"rank": topo.cluster.rank, "phase": phase, "epoch": epoch, "images": sorted(mine.tolist())})
    return {"loss": float(total[0] / total[2]), "accuracy": float(total[1] / total[2]), "images": int(total[2]),
            "images_here": int(len(mine))}


def run_phase(run: Run, name: str) -> None:
    cfg, st = run.cfg, run.state
    idx = PHASES.index(name)
    stepper, x, xv, rec = _prepare_phase(run, name)
    if st["epoch"] > 0:  # resuming inside this phase (the weights were loaded with the model)
        if run.chief and not run.ckpt.load_optimizer(stepper.optimizer, stepper.net.trainable_variables, st):
            run.log("  (optimizer state not restored: it starts fresh)")
        dist.sync_variables(run.strategy, run.topo, stepper.optimizer.variables)
    augment = Augment() if cfg.augment and not rec["fast_path"] else None
    # a run stopped early, killed before the next phase began: that decision is in the checkpoint, kept on resume
    reason = st.get("stop_reason") if st["epoch"] > 0 else None
    if reason:
        run.log(f"{name} had stopped early before the restart: {reason}")
    for epoch in range(st["epoch"], rec["epochs_planned"] if reason is None else st["epoch"]):
        t = time.perf_counter()
        row = {"phase": name, "epoch": epoch + 1, **_epoch(run, stepper, x, idx, epoch, augment)}
        if not np.isfinite(row["loss"]):  # every worker sees the same all-reduced loss: all stop here
            lr = cfg.lr if name == "head" else cfg.fine_tune_lr
            raise TledgeError(f"the training loss became {row['loss']} in {name} epoch {epoch + 1} (learning rate "
                              f"{'LR/300' if lr is None else f'{lr:g}'}: too high?); nothing of this epoch was saved")
        row["val_accuracy"], row["val_loss"] = dist.validate(stepper.evaluate, run.topo, xv, run.data.yv,
                                                             cfg.batch * 2)
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
        reason = _stop_reason(run, name, row) if epoch + 1 < rec["epochs_planned"] else None
        st["elapsed_s"], st["stop_reason"] = run.elapsed(), reason
        run.state = st = run.ckpt.save(run.parts.model, stepper.optimizer, st, best=improved)
        run.progress(epoch + 1, rec["epochs_planned"], f"{name}: loss {row['loss']:.4f}  acc {row['accuracy']:.3f}  "
                     f"val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.3f}{'  best' if improved else ''}",
                     row["seconds"])
        if reason:
            run.log(f"{name} stopped early: {reason}")
            break
    rows = [r for r in st["history"] if r["phase"] == name]
    rec.update(epochs_run=len(rows), stopped_early=bool(reason), stop_reason=reason,  # the epochs of every process
               wall_time_s=round(sum(r.get("seconds", 0.0) for r in rows), 2),  # (a resumed phase showed its last)
               best_val_accuracy=max((r["val_accuracy"] for r in rows), default=None))
    _end_phase(run, stepper, rec)


def _stop_reason(run: Run, name: str, row: dict) -> str | None:
    """Why the phase stops after this epoch (None: it goes on). patience 0 turns both rules off."""
    cfg, st = run.cfg, run.state
    if not cfg.patience:
        return None
    if st["bad_epochs"] >= cfg.patience:
        return f"val accuracy did not improve (nor val loss at the same accuracy) for {cfg.patience} epochs"
    drop = below_head(st["history"], row["val_accuracy"], cfg.fine_tune_max_drop, len(run.data.yv)) \
        if name == "fine_tune" else None
    return None if drop is None else f"val accuracy {100 * drop:.1f} points under the best head epoch"


def _end_phase(run: Run, stepper: Stepper, rec: dict) -> None:
    """Restore the best weights so far and checkpoint the start of the next phase."""
    st = run.state
    if run.best_weights is None and st.get("best"):
        run.load_checkpoint_weights(st, "best")
    elif run.best_weights is not None:
        run.parts.model.set_weights(run.best_weights)
    st["phases_done"].append(rec)
    nxt = PHASES.index(rec["name"]) + 1
    st.update(phase=PHASES[nxt] if nxt < len(PHASES) else "done", epoch=0, bad_epochs=0, phase_best=None,
              elapsed_s=run.elapsed(), stop_reason=None)
    run.state = run.ckpt.save(run.parts.model, stepper.optimizer, st, best=False)


def run_all(run: Run) -> None:
    done = {r["name"] for r in run.state["phases_done"]}
    for name in PHASES:
        planned = run.cfg.epochs if name == "head" else run.cfg.fine_tune_epochs
        if name in done:
            continue
        started = run.state["phase"] == name and run.state["epoch"] > 0  # its epochs so far: ended, best restored
        if (planned == 0 and not started) or (name == "fine_tune" and tm.cut_index(
                run.parts.backbone.layers, run.cfg.unfreeze, run.cfg.fine_tune_at) >= len(run.parts.backbone.layers)):
            run.state["phases_done"].append({"name": name, "skipped": True, "epochs_run": 0})
            continue
        if run.state["phase"] != name:
            run.state.update(phase=name, epoch=0, bad_epochs=0)
        run_phase(run, name)
