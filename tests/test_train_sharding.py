"""Multi-worker bookkeeping without TensorFlow: each replica's share of an epoch, the cluster read from TF_CONFIG,
and a TF_CONFIG TensorFlow would refuse, refused in one line first. The real workers: test_train_distributed.py."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tledge.train import distributed as dist
from tledge.train.augment import Augment, local_batches


# ---- sharding and bookkeeping (no TensorFlow) -------------------------------------------------------
def topo(replicas: int, rank: int) -> dist.Topology:
    cluster = dist.Cluster(tuple(f"127.0.0.1:{9000 + i}" for i in range(replicas)), rank)
    return dist.Topology(replicas, 1, rank, cluster)


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_every_image_is_trained_once_per_epoch_on_one_replica(replicas):
    """Each replica's share of every epoch: no image duplicated or skipped (the last, partial batch included),
    and an image's augmentation draws do not depend on how many replicas share the epoch."""
    n, batch = 23, 4
    x = np.random.default_rng(0).integers(0, 255, (n, 8, 8, 3)).astype(np.uint8)
    x[:, 0, 0, 0] = np.arange(n)  # recognisable images
    y = np.arange(n) % 2
    aug = Augment(shift=0.0)  # flips and brightness: pixel (0, 0) or (0, 7) keeps the index readable
    for epoch in range(3):
        seen, pixels = [], {}
        for r in range(replicas):
            for b in local_batches(x, y, batch * replicas, topo(replicas, r).local_bounds, 0, 0, epoch,
                                   augment=aug):
                assert len(b.index) <= batch and b.n_global <= batch * replicas
                seen += b.index.tolist()
                pixels.update({int(i): px for i, px in zip(b.index, b.x)})
        assert sorted(seen) == list(range(n)), (replicas, epoch)
        single = {int(i): px for b in local_batches(x, y, batch * replicas, topo(1, 0).local_bounds, 0, 0, epoch,
                                                     augment=aug) for i, px in zip(b.index, b.x)}
        assert all(np.array_equal(pixels[i], single[i]) for i in range(n))  # same draws, whoever trains it


def test_draws_differ_between_the_replicas_of_a_batch():
    x = np.full((8, 4, 4, 3), 100, np.uint8)
    shares = [next(local_batches(x, np.zeros(8, int), 8, topo(2, r).local_bounds, 0, 0, 0, augment=Augment()))
              for r in range(2)]
    assert not np.allclose(shares[0].x.mean(axis=(1, 2, 3)), shares[1].x.mean(axis=(1, 2, 3)))


def test_cluster_from_tf_config(monkeypatch):
    cfg = {"cluster": {"chief": ["a:1"], "worker": ["b:2", "c:3"]}, "task": {"type": "worker", "index": 1}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(cfg))
    c = dist.Cluster.from_env()
    assert (c.addresses, c.rank, c.workers) == (("a:1", "b:2", "c:3"), 2, 3)
    text = ("Graph execution error:\n...\nAdditional GRPC error information from remote target "
            "/job:worker/replica:0/task:1 while calling /tensorflow.WorkerService/RecvBuf:\n"
            ":UNKNOWN: failed to connect to all addresses; Connection refused")
    msg = dist.lost_message(text, dist.Cluster(("h0:1", "h1:2"), 0))
    assert "lost worker 1 (h1:2)" in msg and "this is worker 0" in msg and "--resume" in msg
    assert "Connection refused" in msg
    msg = dist.lost_message("from remote target /job:chief/replica:0/task:0 ...", dist.Cluster(("a:1", "b:2"), 1, 1))
    assert "lost worker 0 (a:1)" in msg


@pytest.mark.parametrize("tf_config, said", [
    ("{bad json", "not valid JSON"), ("[]", 'must be a JSON object with a "cluster"'),
    ('{"cluster": {"worker": ["127.0.0.1:29001"]}, "task": {"type": "worker", "index": 3}}', "not in its cluster"),
    ('{"cluster": {"worker": ["nohost"]}, "task": {"type": "worker", "index": 0}}', "list of host:port"),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "ps", "index": 0}}', "ps tasks"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "0"}}', "not in its cluster"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": ["worker"], "index": 0}}', "not in its cluster"),
    (" ", "set but blank"),
])
def test_a_tf_config_tensorflow_would_refuse_is_one_line_before_it_loads(tf_config, said, monkeypatch, capsys, tmp_path):
    """Tracebacks (exit 1) before, some after 7-10 s of TensorFlow start-up."""
    from tledge.cli import main

    monkeypatch.setenv("TF_CONFIG", tf_config)
    (tmp_path / "d" / "a").mkdir(parents=True)
    code = main(["train", str(tmp_path / "d"), "--weights", "none", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and said in err and len(err.splitlines()) == 1 and "TF_CONFIG" in err, err


@pytest.mark.parametrize("value", ["abc", "-5", "inf"])
def test_a_bad_cluster_timeout_is_one_line_before_it_loads(value, monkeypatch, capsys, tmp_path):
    """`abc` was read as 600 s and `-5` as no limit: a worker waited for ever, deaf to SIGTERM."""
    from tledge.cli import main

    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:29001", "127.0.0.1:29002"]}, '
                                    '"task": {"type": "worker", "index": 0}}')
    monkeypatch.setenv("TLEDGE_CLUSTER_TIMEOUT", value)
    (tmp_path / "d" / "a").mkdir(parents=True)
    code = main(["train", str(tmp_path / "d"), "--weights", "none", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and f"TLEDGE_CLUSTER_TIMEOUT={value!r}" in err, err


@pytest.mark.filterwarnings("ignore:skipping .* unreadable training image:tledge.errors.TledgeWarning")
def test_a_worker_that_stops_before_training_leaves_no_scratch_folder(monkeypatch, capsys, tmp_path):
    """Worker 1's temp folder was removed only once training began: an image it could not read (exit 2) left a
    tledge-train-worker-* folder in the temp dir for every such start."""
    import tempfile

    from tledge.cli import main

    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:29001", "127.0.0.1:29002"]}, '
                                    '"task": {"type": "worker", "index": 1}}')
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    for cls in ("a", "b"):
        (tmp_path / "d" / cls).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "d" / cls / f"{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg " + f"{cls}{i}".encode())
    code = main(["train", str(tmp_path / "d"), "--weights", "none", "--size", "32", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert not list(scratch.glob("tledge-train-worker-*")) and not (tmp_path / "o").exists()
