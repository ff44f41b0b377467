"""Multi-worker `tledge train` on one machine: two processes on 127.0.0.1, each started by the cluster recipe
(docs/cluster/train-worker.sh, the entry point of docs/cluster/job.yaml) with a TF_CONFIG of its own.

The slow tests start real workers (free ports, bounded waits, every process ended by the test); the sharding and
TF_CONFIG bookkeeping without TensorFlow are in test_train_sharding.py."""
from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "docs" / "cluster" / "train-worker.sh"
JOB = REPO / "docs" / "cluster" / "job.yaml"
SIZE = 32
TINY = ["--size", str(SIZE), "--seed", "0", "--dropout", "0", "--lr", "0.01", "--patience", "0"]


# ---- real workers ------------------------------------------------------------------------------------
def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def recipe_command() -> list[str]:
    """The container command of docs/cluster/job.yaml, with the mounted script replaced by its source."""
    line = next(ln for ln in JOB.read_text().splitlines() if ln.strip().startswith("command:"))
    cmd = json.loads(line.split(":", 1)[1])
    assert cmd[:2] == ["sh", "/recipe/train-worker.sh"]
    return ["sh", str(RECIPE), *cmd[2:]]


def test_recipe_sets_what_the_worker_script_reads():
    yaml_env = set(re.findall(r"- name: (\w+)\n\s+value:", JOB.read_text()))
    script_env = set(re.findall(r"\$\{?(\w+)", RECIPE.read_text())) | {"WORKER_HOSTS", "JOB_COMPLETION_INDEX"}
    needed = {"WORKER_HOSTS", "DATA", "WEIGHTS", "OUT"}
    assert needed <= yaml_env and needed <= script_env
    assert "completionMode: Indexed" in JOB.read_text()  # Kubernetes sets JOB_COMPLETION_INDEX


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Generated data, a 'pretrained' tiny backbone file, and a `tledge` command on PATH (the recipe calls it)."""
    import keras

    from tledge import backbones
    from tledge.datasets import make_split_shapes
    from tledge.train.checkpoint import numpy2_quiet

    root = tmp_path_factory.mktemp("multiworker")
    data = make_split_shapes(root / "data")
    keras.utils.set_random_seed(1)
    bb = backbones.build("mobilenet", (SIZE, SIZE, 3), weights=None, alpha=0.25)
    for layer in bb.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    bb(np.random.default_rng(0).uniform(-1, 1, (32, SIZE, SIZE, 3)).astype("float32"), training=True)
    weights = root / "calibrated_mobilenet_025.weights.h5"
    with numpy2_quiet():
        bb.save_weights(str(weights))
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "tledge").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m tledge "$@"\n')
    (bin_dir / "tledge").chmod(0o755)
    (bin_dir / "python3").symlink_to(sys.executable)
    return {"root": root, "data": data, "weights": weights, "bin": bin_dir}


def base_env(setup) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "TLEDGE_SHARD_LOG")}
    env.update(PATH=f"{setup['bin']}{os.pathsep}{env.get('PATH', '')}", CUDA_VISIBLE_DEVICES="-1",
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    return env


class Workers:
    """The recipe started once per worker index; every process is ended on exit."""

    def __init__(self, setup, tag: str, args: list[str], outs: list[Path], ports: list[int] | None = None,
                 first: int = 0, data: Path | None = None):
        self.ports = ports or free_ports(len(outs))
        self.logs = [setup["root"] / f"{tag}-{i}.log" for i in range(len(outs))]
        self.shards = [setup["root"] / f"{tag}-{i}.shards.jsonl" for i in range(len(outs))]
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        self.procs = []
        for i, out in enumerate(outs):
            env = dict(base_env(setup), WORKER_HOSTS=hosts, JOB_COMPLETION_INDEX=str(first + i),
                       DATA=str(data or setup["data"]), WEIGHTS=str(setup["weights"]), OUT=str(out),
                       TLEDGE_SHARD_LOG=str(self.shards[i]))
            with open(self.logs[i], "w") as log:
                self.procs.append(subprocess.Popen(recipe_command() + args, env=env, stdout=log,
                                                   stderr=subprocess.STDOUT, start_new_session=True))

    def wait(self, timeout: float) -> list[int]:
        end = time.monotonic() + timeout
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=max(0.1, end - time.monotonic())))
            except subprocess.TimeoutExpired:
                codes.append(None)
        return codes

    def log(self, i: int) -> str:
        return self.logs[i].read_text(errors="replace")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=30)


def shard_rows(path: Path) -> dict[tuple[int, int], list[int]]:
    rows = [json.loads(s) for s in path.read_text().splitlines()] if path.exists() else []
    return {(r["phase"], r["epoch"]): r["images"] for r in rows}


def load_and_score(out: Path, data: Path) -> float:
    import keras

    from tledge.contract import Contract
    from tledge.layers import CUSTOM_OBJECTS
    from tledge.train import data as td

    contract = Contract.load(out / "tledge.json")
    model = keras.saving.load_model(str(out / "model.keras"), custom_objects=CUSTOM_OBJECTS, safe_mode=True)
    val = td.plan(data).val
    return float((np.asarray(model.predict(contract.prepare_batch(val.files), verbose=0)).argmax(1) == val.y).mean())


OUTPUTS = ["checkpoints", "confusion.png", "curves.png", "labels.txt", "metrics.json", "model.h5", "model.keras",
           "split", "tledge.json", "train.log"]


@pytest.mark.slow
def test_two_workers_train_like_one_process_with_the_global_batch(setup):
    t0 = time.monotonic()
    root, args = setup["root"], [*TINY, "--epochs", "4", "--fine-tune-epochs", "2", "--batch", "8"]
    outs = [root / "two" / "out0", root / "two" / "out1"]
    with Workers(setup, "two", args, outs) as w:
        codes = w.wait(240)
        assert codes == [0, 0], (codes, w.log(0)[-3000:], w.log(1)[-3000:])
    assert not outs[1].exists()  # the non-chief writes nothing into its --out
    assert "the chief (worker 0) writes the model into its own --out, this worker writes nothing" in w.log(1)
    assert sorted(p.name for p in outs[0].iterdir()) == OUTPUTS
    m = json.loads((outs[0] / "metrics.json").read_text())
    assert m["distribution"] == {"workers": 2, "replicas": 2, "batch_per_replica": 8, "global_batch": 16,
                                 "lr_scale": pytest.approx(math.sqrt(2)), "lr": pytest.approx(0.01 * math.sqrt(2)),
                                 "fine_tune_lr": pytest.approx(0.01 / 300 * math.sqrt(2))}
    assert [p["lr"] for p in m["phases"]] == pytest.approx([0.01 * math.sqrt(2), 0.01 / 300 * math.sqrt(2)])
    assert load_and_score(outs[0], setup["data"]) == pytest.approx(m["val_accuracy"])

    # sharding, counted: every epoch each training image went to exactly one worker
    n = m["train_images"]
    a, b = (shard_rows(p) for p in w.shards)
    assert len(a) == len(b) == len(m["history"]) == 6
    for key in a:
        assert sorted(a[key] + b[key]) == list(range(n)) and not set(a[key]) & set(b[key]), key
        assert abs(len(a[key]) - len(b[key])) <= 8
    assert all(row["images"] == n for row in m["history"])

    # one process with the global batch and the scaled rate does the same arithmetic
    single = root / "single"
    env = dict(base_env(setup))
    cmd = [sys.executable, "-m", "tledge", "train", str(setup["data"]), "--backbone", "mobilenet", "--alpha", "0.25",
           "--weights", str(setup["weights"]), *TINY, "--epochs", "4", "--fine-tune-epochs", "2", "--batch", "16",
           "--lr", str(0.01 * math.sqrt(2)), "--out", str(single)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    s = json.loads((single / "metrics.json").read_text())
    assert s["distribution"]["global_batch"] == 16 and s["distribution"]["workers"] == 1
    print(f"\n2 workers: val {m['val_accuracy']:.3f}; 1 process: val {s['val_accuracy']:.3f}; "
          f"train loss per epoch {[round(r['loss'], 4) for r in m['history']]} vs "
          f"{[round(r['loss'], 4) for r in s['history']]}; {time.monotonic() - t0:.0f}s")
    assert m["val_accuracy"] > 0.5  # learnt something (3 classes: chance is 0.33)
    assert abs(m["val_accuracy"] - s["val_accuracy"]) <= 1 / m["val_images"] + 1e-9
    np.testing.assert_allclose([r["loss"] for r in m["history"]], [r["loss"] for r in s["history"]], rtol=2e-3)


@pytest.mark.slow
def test_killed_worker_fails_the_other_fast_and_resume_continues(setup):
    root = setup["root"]
    outs = [root / "kill" / "out0", root / "kill" / "out1"]
    args = [*TINY, "--epochs", "200", "--fine-tune-epochs", "1", "--batch", "8", "--no-augment"]  # the fast path
    with Workers(setup, "kill", args, outs) as w:
        end = time.monotonic() + 180
        while time.monotonic() < end and len(shard_rows(w.shards[0])) < 2:
            time.sleep(0.1)
        assert len(shard_rows(w.shards[0])) >= 2, w.log(0)[-3000:]
        os.killpg(w.procs[1].pid, signal.SIGKILL)
        killed = time.monotonic()
        code = w.wait(120)[0]
        took = time.monotonic() - killed
    print(f"\nworker 0 ended {took:.1f}s after worker 1 was killed, exit {code}")
    assert code not in (None, 0) and took < 120
    assert f"lost worker 1 (127.0.0.1:{w.ports[1]})" in w.log(0) and "--resume" in w.log(0)
    state = json.loads((outs[0] / "checkpoints" / "state.json").read_text())
    assert state["phase"] == "head" and state["epoch"] >= 1 and not state.get("complete")
    done = state["epoch"]

    # every worker restarted with the recipe's --resume (fewer head epochs: those are not fixed by a run)
    args = [*TINY, "--epochs", str(done + 2), "--fine-tune-epochs", "1", "--batch", "8", "--no-augment"]
    with Workers(setup, "resume", args, outs) as w2:
        codes = w2.wait(240)
        assert codes == [0, 0], (codes, w2.log(0)[-3000:], w2.log(1)[-3000:])
    assert "resuming" in w2.log(0) and "resuming" in w2.log(1)
    m = json.loads((outs[0] / "metrics.json").read_text())
    hist = [(h["phase"], h["epoch"]) for h in m["history"]]
    assert hist == [("head", i) for i in range(1, done + 3)] + [("fine_tune", 1)]
    assert m["history"][:done] == state["history"][:done]  # carried over, not retrained
    assert sorted(shard_rows(w2.shards[0])) == [(0, done), (0, done + 1), (1, 0)]  # only the missing epochs ran
    assert not outs[1].exists()
    assert load_and_score(outs[0], setup["data"]) == pytest.approx(m["val_accuracy"])

    # the scheduler restarts every pod once more after the run finished: the worker waited for a chief that had
    # returned at once, until TLEDGE_CLUSTER_TIMEOUT, and failed; now the chief tells it, both exit 0, nothing trained
    kept = {f: (outs[0] / f).stat().st_mtime_ns for f in ("model.keras", "metrics.json", "checkpoints/state.json")}
    with Workers(setup, "again", args, outs) as w3:
        codes = w3.wait(150)
        assert codes == [0, 0], (codes, w3.log(0)[-3000:], w3.log(1)[-3000:])
    assert "is complete: nothing to resume" in w3.log(0), w3.log(0)[-2000:]
    assert "the run is complete (the chief's checkpoint says so)" in w3.log(1), w3.log(1)[-2000:]
    assert {f: (outs[0] / f).stat().st_mtime_ns for f in kept} == kept and not outs[1].exists()
    assert not shard_rows(w3.shards[0])  # no epoch ran


@pytest.mark.slow
def test_a_worker_that_never_starts_does_not_leave_the_others_waiting_for_ever(setup, monkeypatch):
    """Worker 1 of 2 never started: worker 0 waited inside TensorFlow for ever, deaf to SIGTERM."""
    monkeypatch.setenv("TLEDGE_CLUSTER_TIMEOUT", "5")
    args = [*TINY, "--epochs", "1", "--fine-tune-epochs", "0", "--batch", "8", "--no-augment"]
    out = setup["root"] / "alone" / "out0"
    with Workers(setup, "alone", args, [out], ports=free_ports(2)) as w:
        code = w.wait(150)[0]
    assert code == 1, w.log(0)[-3000:]
    assert f"waiting for worker 1 (127.0.0.1:{w.ports[1]})" in w.log(0) and "within 5 s" in w.log(0)
    assert "where it waited written to " in w.log(0)  # the temporary log: the run folder is not made yet


@pytest.mark.slow
def test_workers_started_with_other_settings_say_so_in_one_line(setup):
    """Worker 1 with --epochs 3 --batch 16 beside a chief with --epochs 2: 76 lines of TensorFlow traceback each."""
    root = setup["root"]
    outs = [root / "differ" / "out0", root / "differ" / "out1"]
    base = [*TINY, "--fine-tune-epochs", "0", "--no-augment"]
    ports = free_ports(2)
    w0 = Workers(setup, "differ0", [*base, "--epochs", "2", "--batch", "8"], outs[:1], ports=ports)
    w1 = Workers(setup, "differ1", [*base, "--epochs", "3", "--batch", "16"], outs[1:], ports=ports, first=1)
    with w0, w1:
        codes = w0.wait(180) + w1.wait(60)
    assert codes == [2, 2], (codes, w0.log(0)[-2000:], w1.log(0)[-2000:])
    assert "1 worker(s) of the 2-worker cluster were started with other settings" in w0.log(0)
    said = w1.log(0)
    assert "other settings than the chief: batch 16 vs 8; epochs 3 vs 2" in said and "Traceback" not in said, said


@pytest.mark.slow
def test_a_worker_reading_other_images_says_so_in_one_line(setup):
    """Worker 1's copy of the data with two class folders swapped: the workers compared only the classes and the
    number of files, trained half the images on the wrong labels and exited 0."""
    root = setup["root"]
    swapped = root / "swapped"
    for split in ("train", "val"):
        classes = sorted(p for p in (setup["data"] / split).iterdir() if p.is_dir())
        for c, other in zip(classes, classes[1:2] + classes[:1] + classes[2:]):
            (swapped / split).mkdir(parents=True, exist_ok=True)
            (swapped / split / c.name).symlink_to(other)
    outs = [root / "swap" / "out0", root / "swap" / "out1"]
    base = [*TINY, "--epochs", "1", "--fine-tune-epochs", "0", "--no-augment"]
    ports = free_ports(2)
    w0 = Workers(setup, "swap0", base, outs[:1], ports=ports)
    w1 = Workers(setup, "swap1", base, outs[1:], ports=ports, first=1, data=swapped)
    with w0, w1:
        codes = w0.wait(180) + w1.wait(60)
    assert codes == [2, 2], (codes, w0.log(0)[-2000:], w1.log(0)[-2000:])
    said = w1.log(0)
    assert "other settings than the chief: image sizes" in said and "training images" in said, said[-2000:]
    assert not (outs[0] / "model.keras").exists()


# ---- mixed precision (what GPUs get), forced on CPU ----------------------------------------------------
def test_mixed_precision_trains_float16_but_saves_float32_io_and_passes_export_parity(setup, tmp_path, capsys):
    """Under mixed_float16 the backbone computes in float16 while the baked preprocessing and the softmax stay
    float32; the saved model is float32 throughout, and its exported files pass parity against it."""
    import keras

    from tledge.cli import main
    from tledge.layers import CUSTOM_OBJECTS
    from tledge.runtime import load
    from tledge.train import TrainConfig, train

    out = tmp_path / "mixed"
    cfg = TrainConfig(backbone="mobilenet", alpha=0.25, weights=str(setup["weights"]), size=SIZE, epochs=2,
                      fine_tune_epochs=1, batch=16, lr=1e-2, precision="mixed", out=out, verbose=0)
    r = train(setup["data"], cfg)
    assert r.metrics["training_dtypes"] == {"preprocess": "float32", "backbone": "float16", "head": "float32"}
    assert "mixed_float16" in r.metrics["device"] and keras.mixed_precision.global_policy().name == "float32"
    assert all(np.isfinite(h["loss"]) for h in r.metrics["history"])  # loss scaling kept float16 gradients finite
    for path in (out / "model.keras", out / "model.h5"):
        m = keras.saving.load_model(str(path), custom_objects=CUSTOM_OBJECTS, safe_mode=True, compile=False)
        bb = next(layer for layer in m.layers if layer.__class__.__name__ == "Functional")
        assert m.input.dtype == "float32" and m.output.dtype == "float32"
        assert {layer.dtype_policy.name for layer in [*m.layers, *bb.layers]} == {"float32"}
        assert {str(v.dtype) for v in m.weights} == {"float32"}
    exp = tmp_path / "export"
    code = main(["export", str(out / "model.keras"), "--val", str(setup["data"] / "val"), "--out", str(exp)])
    assert code == 0, capsys.readouterr().out[-3000:]
    report = json.loads((exp / "parity.json").read_text())
    assert report["passed"] is True
    for name in ("model_fp32.tflite", "model_fp32.onnx"):
        model = load(exp / name)  # the exported file's own tensors: float32 in and out
        assert (model.backend.inp.dtype, model.backend.out.dtype, model.contract.input_dtype) == ("float32",) * 3


@pytest.mark.slow
def test_a_tf_config_address_in_use_is_one_line(setup):
    """This worker's own TF_CONFIG port held by another process: a traceback ending "Could not start gRPC server"."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        env = {**base_env(setup), "TF_CONFIG": json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}"]},
                                                           "task": {"type": "worker", "index": 0}})}
        proc = subprocess.run([sys.executable, "-m", "tledge", "train", str(setup["data"] / "train"), "--weights",
                               str(setup["weights"]), "--alpha", "0.25", *TINY, "--epochs", "1", "--fine-tune-epochs",
                               "0", "--out", str(setup["root"] / "in-use")], capture_output=True, text=True,
                              timeout=300, env=env)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"cannot listen on worker 0 (127.0.0.1:{port})" in err[-1], err[-3:]
