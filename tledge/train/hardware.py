"""Where training runs: plain CPU, one GPU, several GPUs, or several machines.

- No GPU: float32, no distribution strategy.
- GPUs: mixed precision (float16 compute, float32 weights) unless precision="float32" or --grayscale;
  the baked preprocessing and the softmax head stay float32 (tledge.train.model.compute_dtypes).
  More than one GPU: `tf.distribute.MirroredStrategy` over all of them.
- Several machines: set TF_CONFIG on every machine (the standard TensorFlow cluster JSON, e.g.
  {"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}})
  and run the same `tledge train` command on each: `MultiWorkerMirroredStrategy` is used. Only the
  chief (worker 0, or the "chief" task) writes OUT; the others write nothing there (see docs/train-cluster.md).

In every case `--batch` is per replica (a GPU, or a CPU worker): the global batch is batch x replicas,
and the learning rates are multiplied by sqrt(replicas) (tledge.train.distributed.lr_scale). The
training step is tledge.train.distributed's (not Keras' fit). The saved model is always float32 (it is
rebuilt without the mixed policy and outside the strategy before saving).
"""
from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from tledge._deps import require, swapped
from tledge.train.config import Precision


@dataclass(frozen=True)
class Env:
    strategy: Any  # a tf.distribute strategy, or None
    mixed: bool
    description: str
    runner: Any = None  # the strategy the training step runs under (TensorFlow's default one when `strategy` is None)

    @property
    def rebuild_for_saving(self) -> bool:
        return self.mixed or self.strategy is not None


def is_chief() -> bool:
    """False only for the non-chief workers of a TF_CONFIG cluster (they write to a temporary folder)."""
    from tledge.train.distributed import tf_config

    cfg = tf_config()
    task = cfg.get("task") or {}
    return task.get("type", "worker") == "chief" or (task.get("type", "worker") == "worker" and
                                                      int(task.get("index", 0)) == 0 and
                                                      "chief" not in cfg.get("cluster", {}))


@contextmanager
def environment(precision: Precision, *, grayscale: bool = False):
    """Distribution strategy scope and dtype policy. --grayscale stays float32: its RGB->gray fold probes the
    backbone's stem numerically, which float16 would make inexact."""
    tf = require("tensorflow", purpose="training")
    keras = require("keras", purpose="training")
    gpus = tf.config.list_physical_devices("GPU")
    mixed = precision is Precision.MIXED or (precision is Precision.AUTO and bool(gpus) and not grayscale)
    if os.environ.get("TF_CONFIG"):
        strategy, where = _multi_worker(tf), "multi-worker (TF_CONFIG)"
    elif len(gpus) > 1:
        strategy, where = tf.distribute.MirroredStrategy(), f"{len(gpus)} GPUs (MirroredStrategy)"
    else:
        strategy, where = None, "1 GPU" if gpus else f"CPU ({os.cpu_count()} cores)"
    desc = f"{where}, {'mixed_float16' if mixed else 'float32'}"
    # float32 set too: a caller's mixed_float16 trained a float32 run (a grayscale one as well) in float16 and saved it
    with swapped(keras.mixed_precision.global_policy, keras.mixed_precision.set_global_policy,
                 "mixed_float16" if mixed else "float32"), strategy.scope() if strategy is not None else nullcontext():
        yield Env(strategy, mixed, desc, strategy or tf.distribute.get_strategy())


@contextmanager
def seeded(seed: int):
    """keras.utils.set_random_seed(seed) for a run, the caller's Python and numpy generators back after it (a notebook's
    later shuffles repeated after every train()). TensorFlow's global seed cannot be read back: it stays the run's."""
    import random

    import numpy as np

    keras = require("keras", purpose="training")
    saved = random.getstate(), np.random.get_state()
    keras.utils.set_random_seed(seed)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])


CLUSTER_TIMEOUT = 600.0  # seconds the workers of TF_CONFIG have to start (TLEDGE_CLUSTER_TIMEOUT)


def cluster_timeout() -> float:
    """TLEDGE_CLUSTER_TIMEOUT in seconds (0: no limit), or TledgeError: `abc` was read as 600 and `-5` as no limit,
    a worker then waiting for ever, deaf to SIGTERM."""
    from tledge.errors import TledgeError

    text = os.environ.get("TLEDGE_CLUSTER_TIMEOUT", "").strip()
    try:
        value = float(text) if text else CLUSTER_TIMEOUT
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e9:
        raise TledgeError(f"TLEDGE_CLUSTER_TIMEOUT={text!r}: seconds the cluster's workers have to start, a number "
                          f"from 0 (no limit) on (default {CLUSTER_TIMEOUT:g})")
    return value


def _multi_worker(tf):
    """MultiWorkerMirroredStrategy, which waits inside TensorFlow, holding the GIL and deaf to SIGTERM, until every
    worker of TF_CONFIG has started: a worker that never starts would leave the others waiting for ever. A C-level
    timer (faulthandler's) ends the process after the timeout instead; the note says so beforehand."""
    import faulthandler
    import sys

    from tledge import log
    from tledge.train.distributed import Cluster

    cluster = Cluster.from_env()
    timeout = cluster_timeout()
    others = ", ".join(cluster.name(r) for r in range(cluster.workers) if r != cluster.rank)
    if timeout == 0:  # TLEDGE_CLUSTER_TIMEOUT=0: wait as long as TensorFlow does
        log.note(f"this is {cluster.name(cluster.rank)}: waiting for {others} (no time limit)")
        return _join(tf, cluster)
    console = log.current()
    where = console.log_path if console is not None and console.log_path is not None else None
    log.note(f"this is {cluster.name(cluster.rank)}: waiting for {others}; if they have not all started within "
             f"{timeout:g} s this process stops with exit code 1" + (f", where it waited written to {where}" if where
                                                                     else "") + " (TLEDGE_CLUSTER_TIMEOUT sets the seconds)")
    faulthandler.dump_traceback_later(timeout, exit=True, file=sys.__stderr__)  # where it waited: the log
    try:
        return _join(tf, cluster)
    finally:
        faulthandler.cancel_dump_traceback_later()


def _join(tf, cluster):
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except tf.errors.OpError as exc:  # this worker's own address: in use, or not one of this machine's
        if "gRPC server" not in str(exc):
            raise
        from tledge.errors import TledgeError

        raise TledgeError(f"cannot listen on {cluster.name(cluster.rank)}, this process's TF_CONFIG address (in use by "
                          "another process, or not an address of this machine): free it or change TF_CONFIG") from None


@contextmanager
def quiet_tensorflow():
    """Hide TensorFlow's "N of the last M calls triggered tf.function retracing" (one trace per phase model)."""
    tf = require("tensorflow")
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        yield
    finally:
        logger.setLevel(level)
