"""The training step and validation under any `tf.distribute` strategy (none, several GPUs, several workers).

Why a custom step and not `model.fit` / `train_on_batch`: with Keras 3 (3.15, TF 2.21) both fail under
`MultiWorkerMirroredStrategy` (train_on_batch: "Invalid reduction dimension 0 ... div_no_nan"; fit:
"Attempt to convert a value (PerReplica ...) to a Tensor"), and `tf_keras` would mean a second Keras and
Keras 2 model files. A step of our own (`strategy.run`, loss summed over the replica's share and divided
by the *global* batch, gradients all-reduced by the optimizer) runs the same way under every strategy,
so one code path trains on a laptop, on several GPUs and on several workers, and a 2-worker run does
the same arithmetic as a 1-process run with the global batch.

Sharding: every worker holds the whole (prepared) data set and draws the same permutation per epoch;
global batch k is images order[k*G:(k+1)*G] (G = batch x replicas), and replica r trains on
`np.array_split(range(len(batch)), R)[r]` of it: every image once per epoch, on exactly one replica.
Augmentation parameters are drawn per global batch from (seed, phase, epoch, step) and sliced the
same way, so every replica gets its own draws and the run does not depend on how many workers share it.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from tledge._deps import require
from tledge.safejson import NestedTooDeeply, loads_json
from tledge.errors import TledgeError


class WorkerLost(TledgeError):
    """A peer of a multi-worker run stopped answering; resume with --resume."""

    exit_code = 1


@dataclass(frozen=True)
class Cluster:
    """Who is who in a TF_CONFIG cluster (rank 0 = the chief, which writes OUT)."""

    addresses: tuple[str, ...]  # rank order: chief (if any), then workers
    rank: int
    chiefs: int = 0  # 1 when the cluster has a "chief" task (then worker i is rank i + 1)

    @property
    def workers(self) -> int:
        return len(self.addresses)

    def name(self, rank: int) -> str:
        return f"worker {rank} ({self.addresses[rank]})" if 0 <= rank < self.workers else f"worker {rank}"

    @classmethod
    def from_env(cls) -> "Cluster":
        cfg = tf_config()
        spec = cfg.get("cluster") or {}
        chief, workers = list(spec.get("chief", [])), list(spec.get("worker", []))
        task = cfg.get("task") or {}
        kind, index = task.get("type", "worker"), int(task.get("index", 0))
        rank = index if kind == "chief" else index + len(chief)
        return cls(tuple(chief + workers) or ("localhost",), rank if (chief or workers) else 0, len(chief))


def tf_config() -> dict:
    """TF_CONFIG, checked as tledge train uses it ({} when unset): a cluster of "chief" (at most one) and "worker"
    addresses host:port, and this process's task in it. A TledgeError (exit 2) says what is wrong, before
    TensorFlow reads it (its own errors are tracebacks, some after seconds)."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        return {}
    if not text.strip():  # TensorFlow parses it anyway: a JSONDecodeError traceback after the images loaded
        raise TledgeError("TF_CONFIG is set but blank: unset it, or give the cluster as JSON")
    try:
        cfg = loads_json(text)
    except json.JSONDecodeError as exc:
        raise TledgeError(f"TF_CONFIG is not valid JSON ({exc.msg} at character {exc.pos})") from None
    except NestedTooDeeply:  # nested thousands deep
        raise TledgeError("TF_CONFIG is nested too deeply to be a cluster: give the cluster as JSON") from None
    spec = cfg.get("cluster") if isinstance(cfg, dict) else None
    if not isinstance(spec, dict) or not spec:
        raise TledgeError('TF_CONFIG must be a JSON object with a "cluster" of addresses, e.g. {"cluster": {"worker": '
                          '["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}')
    other = sorted(set(spec) - {"chief", "worker"})
    if other:
        raise TledgeError(f"TF_CONFIG's cluster has {', '.join(other)} tasks: tledge train runs chief and worker "
                          "tasks only (MultiWorkerMirroredStrategy)")
    for kind, hosts in spec.items():
        bad = [h for h in hosts if not (isinstance(h, str) and re.fullmatch(r"[^\s:]+:\d{1,5}", h)
                                        and 0 < int(h.rsplit(":", 1)[1]) < 65536)] if isinstance(hosts, list) else [hosts]
        if bad or not hosts:
            raise TledgeError(f"TF_CONFIG's {kind} addresses must be a list of host:port, got {str(bad or hosts)[:80]}")
    if len(spec.get("chief", [])) > 1:
        raise TledgeError("TF_CONFIG's cluster has more than one chief")
    task = cfg.get("task", {})
    kind, index = (task.get("type"), task.get("index", 0)) if isinstance(task, dict) else (None, None)
    if not isinstance(kind, str) or kind not in spec or not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(spec[kind]):
        raise TledgeError(f"TF_CONFIG's task {json.dumps(task)[:80]} is not in its cluster "
                          f"({', '.join(f'{k}: {len(v)}' for k, v in spec.items())})")
    return cfg


@dataclass(frozen=True)
class Topology:
    """Replicas in sync, how many live in this process, and the global id of the first of them."""

    replicas: int
    local: int
    first: int
    cluster: Cluster

    @classmethod
    def of(cls, strategy) -> "Topology":
        cluster = Cluster.from_env() if os.environ.get("TF_CONFIG") else Cluster(("localhost",), 0)
        replicas = int(strategy.num_replicas_in_sync)
        local = max(1, replicas // cluster.workers)
        return cls(replicas, local, cluster.rank * local, cluster)

    def shares(self, n: int) -> list[np.ndarray]:
        """Positions 0..n-1 of one global batch, split over all replicas (sizes differ by at most one)."""
        return np.array_split(np.arange(n), self.replicas)

    def local_bounds(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions this process trains on, cumulative split points of its local replicas)."""
        parts = self.shares(n)[self.first:self.first + self.local]
        sizes = [len(p) for p in parts]
        return np.concatenate(parts) if parts else np.zeros(0, int), np.cumsum([0] + sizes).astype(np.int32)


def _local_slice(tf, x, bounds, first: int):
    rid = tf.distribute.get_replica_context().replica_id_in_sync_group
    i = tf.cast(rid, tf.int32) - first
    return x[bounds[i]:bounds[i + 1]]


def make_step(strategy, net, optimizer, topo: Topology, input_shape: tuple[int, ...]):
    """step(x_local, y_local, w_local, bounds, n_global) -> [weighted loss sum, correct, images] over all replicas.

    Traced once (the batch dimension is left open), so the workers stay in step with their collectives."""
    tf, keras = require("tensorflow"), require("keras")
    variables = net.trainable_variables

    def replica_step(x, y, w, bounds, n):
        x, y, w = (_local_slice(tf, t, bounds, topo.first) for t in (x, y, w))
        with tf.GradientTape() as tape:
            p = tf.cast(net(x, training=True), tf.float32)
            per = keras.losses.sparse_categorical_crossentropy(y, p) * w
            loss = tf.reduce_sum(per) / n  # tf.nn.compute_average_loss with the global batch, weighted
            scaled = optimizer.scale_loss(loss)
        optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        hit = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(p, axis=1), y), tf.float32))
        return tf.stack([tf.reduce_sum(per), hit, tf.cast(tf.shape(y)[0], tf.float32)])

    spec = [tf.TensorSpec((None,) + tuple(input_shape), tf.float32), tf.TensorSpec((None,), tf.int64),
            tf.TensorSpec((None,), tf.float32), tf.TensorSpec((topo.local + 1,), tf.int32),
            tf.TensorSpec((), tf.float32)]

    @tf.function(input_signature=spec)
    def step(x, y, w, bounds, n):
        out = strategy.run(replica_step, args=(x, y, w, bounds, n))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, out, axis=None)

    return step


def make_eval(strategy, net, topo: Topology, input_shape: tuple[int, ...]):
    """evaluate(x_local, y_local, bounds) -> [loss sum, correct, images] over all replicas (inference mode)."""
    tf, keras = require("tensorflow"), require("keras")

    def replica_eval(x, y, bounds):
        x, y = (_local_slice(tf, t, bounds, topo.first) for t in (x, y))
        p = tf.cast(net(x, training=False), tf.float32)
        loss = keras.losses.sparse_categorical_crossentropy(y, tf.clip_by_value(p, 1e-7, 1.0))
        hit = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(p, axis=1), y), tf.float32))
        return tf.stack([tf.reduce_sum(loss), hit, tf.cast(tf.shape(y)[0], tf.float32)])

    spec = [tf.TensorSpec((None,) + tuple(input_shape), tf.float32), tf.TensorSpec((None,), tf.int64),
            tf.TensorSpec((topo.local + 1,), tf.int32)]

    @tf.function(input_signature=spec)
    def evaluate(x, y, bounds):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_eval, args=(x, y, bounds)),
                               axis=None)

    return evaluate


def validate(evaluate, topo: Topology, xv: np.ndarray, yv: np.ndarray, batch: int) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) on the validation set, each replica scoring its share: every worker
    gets the same numbers (all-reduced), so all take the same early-stopping decisions."""
    total, g = np.zeros(3), batch * topo.replicas
    for start in range(0, len(yv), g):
        pos, bounds = topo.local_bounds(min(g, len(yv) - start))
        idx = start + pos
        total += np.asarray(guard(evaluate, np.asarray(xv[idx], np.float32), yv[idx], bounds, topo=topo))
    return float(total[1] / total[2]), float(total[0] / total[2])


def guard(fn, *args, topo: Topology):
    """Call a step; a collective that fails because a peer died becomes WorkerLost naming that peer."""
    tf = require("tensorflow")
    try:
        return fn(*args)
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
            tf.errors.CancelledError, tf.errors.InternalError, tf.errors.UnknownError) as exc:
        if topo.cluster.workers <= 1:
            raise
        raise WorkerLost(lost_message(str(exc), topo.cluster)) from None


def lost_message(text: str, cluster: Cluster) -> str:
    tasks = re.findall(r"/job:(worker|chief)/replica:\d+/task:(\d+)", text)
    ranks = {int(i) if job == "chief" else int(i) + cluster.chiefs for job, i in tasks}
    others = sorted(ranks - {cluster.rank})
    who = ", ".join(cluster.name(r) for r in others) or "a peer worker"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "Graph execution error" not in ln]
    hint = re.compile(r"refused|heartbeat|crashed|unavailable|failed to connect|deadline|timed? ?out", re.I)
    first = next((ln for ln in lines if hint.search(ln)), lines[0] if lines else "collective operation failed")[:240]
    return (f"lost {who} of the {cluster.workers}-worker cluster; this is {cluster.name(cluster.rank)}. "
            f"Restart every worker with --resume to continue from the chief's last checkpoint. (TensorFlow: {first})")


def broadcast(strategy, topo: Topology, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """The chief's values of `arrays` on every worker (identity in a single process)."""
    if topo.cluster.workers <= 1 or not arrays:
        return arrays
    tf = require("tensorflow")
    flat = np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])
    mine = flat if topo.cluster.rank == 0 else np.zeros_like(flat)

    def value(ctx):
        return tf.constant(mine if ctx.replica_id_in_sync_group == topo.first else np.zeros_like(flat))

    per = strategy.experimental_distribute_values_from_function(value)
    total = np.asarray(guard(lambda: strategy.reduce(tf.distribute.ReduceOp.SUM, per, axis=None), topo=topo))
    out, at = [], 0
    for a in arrays:
        a = np.asarray(a)
        out.append(total[at:at + a.size].reshape(a.shape).astype(a.dtype))
        at += a.size
    return out


def broadcast_json(strategy, topo: Topology, value: Any) -> Any:
    """The chief's JSON-serialisable `value` on every worker."""
    if topo.cluster.workers <= 1:
        return value
    raw = np.frombuffer(json.dumps(value).encode(), np.uint8) if topo.cluster.rank == 0 else np.zeros(0, np.uint8)
    (n,) = broadcast(strategy, topo, [np.array([len(raw)], np.float64)])
    pad = np.zeros(int(n[0]), np.float64)
    pad[:len(raw)] = raw
    (data,) = broadcast(strategy, topo, [pad])
    return json.loads(data.astype(np.uint8).tobytes().decode())


def agree(strategy, topo: Topology, settings: dict) -> None:
    """Every worker started with the chief's settings (the same command: only paths may differ), or a
    TledgeError on every worker, before the first collective that would fail on other shapes (76 lines of
    TensorFlow traceback: "Shape mismatch in the collective")."""
    if topo.cluster.workers <= 1:
        return
    tf = require("tensorflow")
    chief = broadcast_json(strategy, topo, settings)
    differ = [f"{k} {settings.get(k)} vs {chief.get(k)}" for k in sorted(set(settings) | set(chief))
              if settings.get(k) != chief.get(k)
              and not (k in IMAGE_KEYS and None in (settings.get(k), chief.get(k)))]
    per = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(float(bool(differ)) if ctx.replica_id_in_sync_group == topo.first else 0.0))
    others = int(np.asarray(guard(lambda: strategy.reduce(tf.distribute.ReduceOp.SUM, per, axis=None), topo=topo)))
    if differ:
        raise TledgeError(f"{topo.cluster.name(topo.cluster.rank)} was started with other settings than the chief: "
                          f"{'; '.join(differ)[:300]}. Start every worker with the same command (only --out may "
                          "differ, and the paths of --weights and --val)")
    if others:
        raise TledgeError(f"{others} worker(s) of the {topo.cluster.workers}-worker cluster were started with other "
                          "settings than the chief (their messages say which): start every worker with the same "
                          "command")


IMAGE_KEYS = ("training images", "validation images", "image sizes")


def images_read(fp: dict | None) -> dict:
    """What the workers of a cluster compare of the images each read (tledge.train.data.fingerprint): by class, name
    and size. The count of planned files alone passed swapped class folders, a worker that skipped an unreadable
    copy (50 images trained twice, 50 never) and another --val (the figures driving early stopping mixed both)."""
    if fp is None:  # a chief whose run is complete reads no images: not compared (its workers learn it next)
        return dict.fromkeys(IMAGE_KEYS)
    return {"training images": f"{fp['images'][0]} ({fp['train']})",
            "validation images": f"{fp['images'][1]} ({fp['val']})", "image sizes": fp.get("bytes")}


def sync_variables(strategy, topo: Topology, variables) -> None:
    """Give every worker the chief's values of `variables` (model weights, optimizer state)."""
    variables = list(variables)
    if topo.cluster.workers <= 1 or not variables:
        return
    for v, x in zip(variables, broadcast(strategy, topo, [np.asarray(v.numpy()) for v in variables])):
        v.assign(x)


def shard_log(record: dict) -> None:
    """Append one JSON line to $TLEDGE_SHARD_LOG (diagnostics: which images this worker trained on)."""
    path = os.environ.get("TLEDGE_SHARD_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def lr_scale(topo: Topology) -> float:
    """Learning rates are given for one replica at --batch; with R replicas (global batch R x batch) they are
    multiplied by sqrt(R), the square-root rule for Adam (Malladi et al., NeurIPS 2022)."""
    return float(np.sqrt(topo.replicas))
