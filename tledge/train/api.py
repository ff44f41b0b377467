"""`train(data_dir, TrainConfig(...)) -> TrainResult`: the whole of `tledge train`."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from tledge.artifacts import CONTRACT_FILE, LABELS_FILE, MANIFEST
from tledge.backbones import contract_for
from tledge.contract import Contract
from tledge.errors import TledgeError, TledgeWarning
from tledge.train import data as td
from tledge.train import distributed, resume
from tledge.train.checkpoint import Checkpoints
from tledge.train.config import WEIGHTS_IMAGENET, ClassWeights, TrainConfig, TrainResult


def make_contract(cfg: TrainConfig, labels) -> Contract:
    """The backbone's contract; the Keras model takes float32 raw pixels (normalisation baked in)."""
    c = contract_for(cfg.backbone, cfg.size, grayscale=cfg.grayscale, labels=labels, baked=True)
    from tledge.backbones import get

    extra = {"backbone": get(cfg.backbone).name, "alpha": cfg.alpha, "trained_by": "tledge train"}
    return c.replace(input_dtype="float32", extra=extra)


def check_out(out: Path, *roots) -> None:
    """--out against the data folders: not inside one (its files would become training data), and its split/ (which
    every run replaces with links to the images it read) neither holding nor being the data nor holding files of
    the user's (`--out .` in a project whose data folder is named split/ deleted the photos)."""
    from tledge import images
    from tledge.images import TRAINING_SPLIT

    o, split = Path(out).resolve(), Path(out) / TRAINING_SPLIT
    if o.exists() and not o.is_dir():  # train(out="file") was a FileExistsError from mkdir
        raise TledgeError(f"--out {out} is a file: the run writes a folder there")
    for r in (Path(r).resolve() for r in roots if r is not None):
        if o == r or r in o.parents:
            raise TledgeError(f"--out {out} is inside the data folder {r}: its files would become training data")
        if r == split.resolve() or split.resolve() in r.parents:
            raise TledgeError(f"the data folder {r} is {out}/{TRAINING_SPLIT}/, which tledge train replaces with links "
                              f"to the images it read: move the data or choose another --out")
    if split.is_dir() and not split.is_symlink():
        for p in split.rglob("*"):
            if not p.is_symlink() and not p.is_dir() and not images.skipped_name(p.name):  # .DS_Store: junk
                raise TledgeError(f"{split}/ holds {p.relative_to(split)}, a file tledge train did not write (its "
                                  "split/ is links to images only), and every run replaces split/: choose another "
                                  "--out or move it")
    _refuse_foreign_outputs(Path(out))


RUN_FILES = ("model.keras", "model.h5", LABELS_FILE, CONTRACT_FILE, "metrics.json", "curves.png", "confusion.png")


def _refuse_foreign_outputs(out: Path) -> None:
    """A run replaces RUN_FILES in OUT. That is a rerun's job where OUT holds an earlier run (its checkpoints, or a
    tledge.json that says `tledge train`), and data loss where it does not: a hand-made model.keras was replaced."""
    if (out / MANIFEST).is_file():  # an export's tledge.json says `tledge train` too (copied from the model's)
        raise TledgeError(f"--out {out} is a tledge export folder (it has {MANIFEST}): a run there would replace its "
                          f"{CONTRACT_FILE} and the export would be refused; choose another --out")
    found = [n for n in RUN_FILES if (out / n).exists() or (out / n).is_symlink()]
    if not found or Checkpoints(out / "checkpoints").exists():
        return
    try:
        extra = json.loads((out / CONTRACT_FILE).read_text(encoding="utf-8")).get("extra") or {}
        if isinstance(extra, dict) and extra.get("trained_by") == "tledge train":
            return
    except (OSError, ValueError, AttributeError):
        pass
    raise TledgeError(f"--out {out} holds {', '.join(found)}, which tledge train did not write (no earlier run "
                      "there), and a run replaces them: choose another --out or move them")


def _already_complete(cfg: TrainConfig, ckpt: Checkpoints, plan: td.DataPlan, log) -> TrainResult:
    """`--resume` on a finished run: its result, exit 0 (a scheduler passes --resume on every restart, and a restart
    after the run finished is not a failure). Other settings or images than the run's are said, not trained."""
    state = ckpt.load_state()
    diff = resume.resume_differences(state, cfg, plan.classes, td.fingerprint(plan))
    try:
        metrics = json.loads((cfg.out / "metrics.json").read_text(encoding="utf-8"))
        contract = Contract.load(cfg.out / CONTRACT_FILE)
    except (OSError, ValueError, TledgeError) as exc:
        raise TledgeError(f"the run in {cfg.out} is complete but its files are not all there ({exc}): train "
                          "again without --resume") from None
    log(f"the run in {cfg.out} is complete: nothing to resume" + (
        f" (it was made with other settings: {', '.join(diff)}; train again without --resume for those)" if diff else ""))
    return TrainResult(cfg.out, cfg.out / "model.keras", _h5(cfg.out), contract, tuple(contract.labels),
                       float(metrics["val_accuracy"]), float(metrics.get("wall_time_s", 0.0)), metrics)


def _load_data(cfg: TrainConfig, plan: td.DataPlan, contract: Contract):
    from tledge.train.finetune import Data

    x, y, kept = td.load(plan.train, contract, what="training")
    xv, yv, kept_v = td.load(plan.val, contract, what="validation")
    w = td.class_weights(y, len(plan.classes)) if cfg.class_weights is ClassWeights.AUTO else None
    return Data(x, y, xv, yv, w), td.DataPlan(kept, kept_v, plan.classes, plan.source)  # the images that were read


def _final_model(cfg, env, parts, contract, n):
    """The model to save: float32 and outside any distribution strategy."""
    if not env.rebuild_for_saving:
        return parts.model
    from tledge.train import model as tm

    clean = tm.build(cfg, contract, n, pretrained=False)
    clean.model.set_weights(parts.model.get_weights())
    _same_trainable(parts.model, clean.model)
    return clean.model


def _same_trainable(trained, clean) -> None:
    """The trained model's trainable flags on its rebuilt copy (outer before inner: setting a model's flag sets its
    layers'): a mixed-precision run saved every layer trainable, batch norm included, a float32 run only the top."""
    clean.trainable = trained.trainable
    for a, b in zip(getattr(trained, "layers", ()), getattr(clean, "layers", ())):
        _same_trainable(a, b)


def _metrics(cfg, run, probs, plan, env, skipped) -> dict:
    import tledge
    from tledge._deps import require
    from tledge.train.finetune import scores
    from tledge.train.report import confusion_fields

    keras, tf = require("keras"), require("tensorflow")

    yv = run.data.yv
    acc, loss = scores(probs, yv)
    n, pred = len(plan.classes), probs.argmax(1)
    right, total = np.bincount(yv[pred == yv], minlength=n), np.bincount(yv, minlength=n)
    per_class = {c: (float(right[i] / total[i]) if total[i] else None) for i, c in enumerate(plan.classes)}
    best = run.state["best_score"]
    return {"val_accuracy": acc, "val_loss": loss, "val_images": int(len(yv)), "train_images": int(len(run.data.y)),
            "classes": list(plan.classes), "train_counts": np.bincount(run.data.y, minlength=len(plan.classes)).tolist(),
            "val_counts": np.bincount(yv, minlength=len(plan.classes)).tolist(), "val_source": plan.source,
            "skipped_files": skipped, "per_class_accuracy": per_class, **confusion_fields(yv, pred, n),
            "best": None if best is None else {"val_accuracy": best[0], "val_loss": best[1], "phase": best[2],
                                               "epoch": best[3]},
            "phases": run.state["phases_done"], "history": run.state["history"], "wall_time_s": None,
            "device": env.description, "grayscale_fold": None if run.parts.fold is None else run.parts.fold.to_dict(),
            "config": cfg.to_dict(), "versions": {"tledge": tledge.__version__, "keras": keras.__version__,
                                                  "tensorflow": tf.__version__}}


def warn_if_no_better_than_the_largest_class(m: dict) -> None:
    """192 ants and 10 bees: "val accuracy 0.950" from a model that answers "ants" for everything. Said when the
    accuracy is no better than always answering the largest validation class."""
    counts, n = m["val_counts"], m["val_images"]
    if n < 2 or len(counts) < 2:
        return
    top = int(np.argmax(counts))
    if m["val_accuracy"] <= counts[top] / n + 1e-9:
        recall = ", ".join(f"{c} {v:.2f}" for c, v in m["per_class_accuracy"].items() if v is not None)
        warnings.warn(f"val accuracy {m['val_accuracy']:.3f} is no better than always answering "
                      f"'{m['classes'][top]}' ({counts[top]} of {n} validation images); per class: {recall}"
                      + ("; --class-weights auto weighs the smaller classes up" if m["config"]["class_weights"] == "none"
                         and max(counts) > 2 * min(c for c in counts if c) else ""), TledgeWarning, stacklevel=4)


def _distribution(cfg: TrainConfig, topo) -> dict:
    from tledge.train.distributed import lr_scale

    return {"workers": topo.cluster.workers, "replicas": topo.replicas, "batch_per_replica": cfg.batch,
            "global_batch": cfg.batch * topo.replicas, "lr_scale": lr_scale(topo),
            "lr": cfg.lr * lr_scale(topo), "fine_tune_lr": cfg.effective_fine_tune_lr * lr_scale(topo)}


def _worker_result(cfg: TrainConfig, run, plan, contract, t0: float, log) -> TrainResult:
    """A non-chief worker writes nothing: it reports the validation accuracy of the epoch the chief saves (the best
    of the run: the last one's was printed) and returns."""
    best = run.state.get("best_score") or [float("nan")]
    wall = round(time.perf_counter() - t0, 2)
    metrics = {"role": f"{run.topo.cluster.name(run.topo.cluster.rank)} of {run.topo.cluster.workers}",
               "files": {}, "history": run.state["history"], "val_images": int(len(run.data.yv)),
               "wall_time_s": wall, "distribution": _distribution(cfg, run.topo)}
    # the chief's --out may be another folder (or machine): this worker's was named as the chief's, and stays absent
    log(f"{metrics['role']}: done in {wall:.0f}s; the chief (worker 0) writes the model into its own --out, this "
        "worker writes nothing")
    return TrainResult(cfg.out, cfg.out / "model.keras", _h5(cfg.out), contract, plan.classes,
                       float(best[0]), wall, metrics)


def _finished_worker(cfg: TrainConfig, topo, state: dict, plan, contract, t0: float, log) -> TrainResult:
    """A worker restarted with --resume after the run finished: the chief's state says so; nothing is trained."""
    wall = round(time.perf_counter() - t0, 2)
    role = f"{topo.cluster.name(topo.cluster.rank)} of {topo.cluster.workers}"
    best = state.get("best_score") or [float("nan")]
    log(f"{role}: the run is complete (the chief's checkpoint says so): nothing to resume")
    metrics = {"role": role, "files": {}, "complete": True, "val_images": len(plan.val.files), "wall_time_s": wall}
    return TrainResult(cfg.out, cfg.out / "model.keras", _h5(cfg.out), contract, plan.classes, float(best[0]), wall,
                       metrics)


def _h5(out: Path) -> Path | None:
    """model.h5, where it was written (not for graphs Keras 3 cannot reload from HDF5: tledge.train.report)."""
    return out / "model.h5" if (out / "model.h5").is_file() else None


def _reporters(verbose: int):
    """(note, epoch line) callables: through tledge.log on the CLI (stderr, prefixed notes, progress lines,
    nothing but errors with -q); for a library call with verbose set, the same lines on stderr."""
    from tledge import log as tlog

    if not verbose:
        return (lambda *a, **k: None), (lambda *a: None)
    if tlog.current() is not None:
        return tlog.note, tlog.progress
    return (lambda text: print(text, file=sys.stderr)), \
        (lambda *a: print(tlog.progress_line(*a), file=sys.stderr))


def train(data_dir: str | Path, config: TrainConfig | None = None) -> TrainResult:
    """Train a classifier on class folders and write it to `config.out` (see TrainConfig)."""
    from tledge.errors import ArgumentError

    if not isinstance(data_dir, (str, os.PathLike)):
        raise ArgumentError(f"train() takes the data folder's path, got {type(data_dir).__name__}")
    if config is not None and not isinstance(config, TrainConfig):
        raise ArgumentError(f"train() takes a TrainConfig, got {type(config).__name__}")
    cfg = config or TrainConfig()
    t0 = time.perf_counter()
    log, progress = _reporters(cfg.verbose)
    check_out(cfg.out, data_dir, cfg.val_dir)
    plan = td.plan(data_dir, cfg.val_dir, cfg.val_split, cfg.seed)
    contract = make_contract(cfg, plan.classes)
    from tledge.train import hardware

    chief = hardware.is_chief()
    # one train at a time into one --out; a worker writes into a temp folder removed however the run ends
    with _out_lock(cfg.out) if chief else _worker_folder() as out:
        ckpt = Checkpoints(out / "checkpoints")
        finished = chief and cfg.resume and ckpt.exists() and resume.is_complete(ckpt)
        if finished and not distributed.tf_config():
            return _already_complete(cfg, ckpt, plan, log)
        # a cluster's chief says so to the workers, which wait for it (they have no checkpoint of their own)
        resumed = (ckpt.load_state() if finished else resume.resume_state(cfg, ckpt, plan.classes, td.fingerprint(plan))) \
            if chief else None  # workers: the chief's
        if resumed is None and str(cfg.weights) == WEIGHTS_IMAGENET and not distributed.tf_config():
            from tledge.train import model as tm

            tm.fetch_weights(cfg, contract)  # offline: exit 2 now, not after the images load
        data, read = (None, None) if finished else _load_data(cfg, plan, contract)
        if data is not None:
            shown = ", ".join(plan.classes[:12]) + (f", ... ({len(plan.classes)} classes: labels.txt)"
                                                      if len(plan.classes) > 12 else "")
            log(f"data: {len(data.y)} training / {len(data.yv)} validation images, classes {shown} "
                f"(validation: {plan.source})")
        with hardware.quiet_tensorflow():
            return _fit_and_save(cfg, out, plan, contract, ckpt, resumed, data, read, (log, progress), t0)


@contextlib.contextmanager
def _worker_folder():
    """A non-chief worker's scratch folder. It was removed only once training began, so a worker that stopped
    before (no weights offline, an unreadable image, a cluster that never formed) left it in the temp dir."""
    out = Path(tempfile.mkdtemp(prefix="tledge-train-worker-"))
    try:
        yield out
    finally:
        shutil.rmtree(out, ignore_errors=True)


@contextlib.contextmanager
def _out_lock(out: Path):
    """The train lock on OUT for the whole run: two trains into one folder each deleted the other's checkpoints and
    both said they wrote it. A folder made here and left empty (a refusal) is removed again."""
    from tledge.folderlock import FolderLock

    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(out, "train").acquire()
    try:
        lock.exclude("export")  # (released and refused: an export's files replaced by this run's final save)
    except BaseException:
        if made and not any(out.iterdir()):
            out.rmdir()
        raise
    try:
        for note in lock.notes:
            warnings.warn(note, TledgeWarning, stacklevel=4)
        yield out
    finally:
        lock.release()
        if made and not any(out.iterdir()):
            out.rmdir()


def _fit_and_save(cfg, out, plan, contract, ckpt, resumed, data, read, reporters, t0) -> TrainResult:
    from tledge.train import distributed as dist
    from tledge.train import finetune, hardware, model as tm
    from tledge.train.report import write_all

    log, progress = reporters
    with hardware.seeded(cfg.seed), hardware.environment(cfg.precision, grayscale=cfg.grayscale) as env:
        topo = dist.Topology.of(env.runner)
        local = ("out", "weights", "val_dir", "verbose")  # paths may differ between machines
        dist.agree(env.runner, topo, {**{k: v for k, v in cfg.to_dict().items() if k not in local},
                                      "classes": list(plan.classes),
                                      **dist.images_read(None if read is None else td.fingerprint(read))})
        resumed = dist.broadcast_json(env.runner, topo, resumed)  # the chief's checkpoint state, everywhere
        if resumed is not None and resumed.get("complete"):  # a scheduler's restart after the run finished
            return _already_complete(cfg, ckpt, plan, log) if topo.cluster.rank == 0 else \
                _finished_worker(cfg, topo, resumed, plan, contract, t0, log)
        resume.same_replicas(resumed, topo.replicas, cfg.out)
        resume.same_precision(cfg, resumed, env.mixed)
        log(f"model: {contract.extra['backbone']} {contract.height}x{contract.width}x{contract.channels}, "
            f"{env.description}{', resuming' if resumed else ''}")
        parts = dist.guard(lambda: tm.build(cfg, contract, len(plan.classes), pretrained=resumed is None),
                           topo=topo)  # variables are made in step with the peers: one gone is said, not traced
        if cfg.fine_tune_epochs:  # a bad layer name, or no weights to train, stops here, not after phase 1
            tm.check_fine_tune(parts.backbone.layers, cfg.unfreeze, cfg.fine_tune_at)
        run = finetune.Run(cfg, parts, data, ckpt, resumed or {**finetune.new_state(cfg, plan.classes),
                                                               "data": td.fingerprint(plan), "mixed": env.mixed,
                                                               "replicas": topo.replicas}, log,
                           progress=progress, strategy=env.runner, topo=topo,
                           started=t0 - float((resumed or {}).get("elapsed_s") or 0.0))  # wall time: all processes
        if resumed is not None:
            run.load_checkpoint_weights(resumed, "last")
        else:
            if cfg.backbone_weights is None:
                n = tm.init_batchnorm_from_data(parts, data.x, seed=cfg.seed)
                log(f"random init: batch-norm statistics of {n} layers set from the training images" + (
                    "" if n == 0 else "; a frozen random backbone learns little: --fine-tune-at 0 trains it all"))
            dist.sync_variables(env.runner, topo, parts.model.weights)  # every worker starts from the chief's
        dtypes = tm.compute_dtypes(parts)
        finetune.run_all(run)
    if not run.chief:
        return _worker_result(cfg, run, plan, contract, t0, log)
    final = _final_model(cfg, env, parts, contract, len(plan.classes))
    probs = finetune.predict(final, data.xv, cfg.batch * 2)
    skipped = len(plan.train.files) + len(plan.val.files) - len(read.train.files) - len(read.val.files)
    metrics = _metrics(cfg, run, probs, plan, env, skipped)
    warn_if_no_better_than_the_largest_class(metrics)
    metrics["distribution"] = _distribution(cfg, run.topo)
    metrics["training_dtypes"] = dtypes
    n_check = min(8, len(data.xv))
    write_all(out, final, contract, metrics, data.xv[:n_check].astype(np.float32), probs[:n_check], run.started, read)
    ckpt.mark_complete(run.state)
    from tledge import log as tlog

    if tlog.current() is None:  # the CLI prints it as its result, on stdout
        log(f"val accuracy {metrics['val_accuracy']:.3f} ({metrics['val_images']} images), "
            f"{metrics['wall_time_s']:.0f}s; wrote {out}/")
    return TrainResult(out, out / "model.keras", _h5(out), contract, plan.classes,
                       metrics["val_accuracy"], metrics["wall_time_s"], metrics)
