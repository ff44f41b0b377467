"""The several-GPU path of `tledge train` (MirroredStrategy: two replicas in one process) on two logical CPU devices,
against one device (moved from test_train_distributed.py, whose tests start real TF_CONFIG workers)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


MIRRORED_SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from tledge.train import distributed as dist
from tledge.train.augment import local_batches

def run(strategy):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        net = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                                keras.layers.Dense(3, activation="softmax", dtype="float32")])
        fixed = np.random.default_rng(1)
        net.set_weights([fixed.normal(0, 0.5, v.shape).astype("float32") for v in net.weights])
        opt = keras.optimizers.Adam(0.05)
        opt.build(net.trainable_variables)
        topo = dist.Topology.of(strategy)
        step = dist.make_step(strategy, net, opt, topo, (6,))
        evaluate = dist.make_eval(strategy, net, topo, (6,))
        rng = np.random.default_rng(0)
        x = rng.normal(size=(37, 6)).astype("float32")
        y = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 1).astype("int64")
        w = np.array([1.0, 2.0, 0.5], "float32")
        losses = []
        for epoch in range(3):
            tot = np.zeros(3)
            for b in local_batches(x, y, 10, topo.local_bounds, 0, 0, epoch, weights=w):  # global batch 10
                tot += np.asarray(step(b.x, b.y, b.w, b.bounds, np.float32(b.n_global)))
            losses.append(tot.tolist())
        return topo.replicas, losses, dist.validate(evaluate, topo, x, y, 4), [v.numpy().tolist() for v in net.weights]

two = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
one = run(tf.distribute.get_strategy())
print(json.dumps({"two": two, "one": one}))
"""


@pytest.mark.slow
def test_mirrored_strategy_over_two_local_devices_matches_one_device(tmp_path):
    """The several-GPU path (MirroredStrategy, two replicas in one process: each slices its share of the local
    batch) on two logical CPU devices: same losses, validation and weights as one device with the same global
    batch. (NCCL and real GPUs are not available here.)"""
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(CUDA_VISIBLE_DEVICES="-1", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads(done.stdout.strip().splitlines()[-1])
    (r2, loss2, val2, w2), (r1, loss1, val1, w1) = res["two"], res["one"]
    assert (r2, r1) == (2, 1)
    assert all(row[2] == 37 for row in loss2)  # every sample once per epoch, over both replicas
    np.testing.assert_allclose(loss2, loss1, rtol=1e-4)
    assert val2 == pytest.approx(val1, rel=1e-5)
    for a, b in zip(w2, w1):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
