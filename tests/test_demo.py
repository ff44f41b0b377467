"""tledge demo: the whole chain from random initialisation on a smaller generated data set, how the
starting weights are chosen (no network needed), the data folder's reuse, and the command line."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from conftest import shared_asset

from tledge import demo
from tledge.cli import main
from tledge.errors import TledgeError

# Smaller than the demo's defaults (100/60/60 per class, 20 epochs) so the test takes ~30 s; 40 val
# images per class keep one int8 flip under the 1-point accuracy-drop threshold.
SMALL = dict(size=64, n_train=50, n_val=40, n_test=20, epochs=12)


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    lines: list[str] = []
    out = tmp_path_factory.mktemp("demo") / "out"
    res = demo.run_demo(out, weights="none", say=lines.append, **SMALL)
    return res, "\n".join(lines)


def test_demo_from_random_init_learns_exports_and_runs(small_demo):
    res, text = small_demo
    assert [s["step"] for s in res.steps] == ["data", "train", "export", "runtime"]
    assert res.failures == [] and res.passed is True
    assert res.weights == "none"

    train = res.step("train")
    assert train["val_accuracy"] >= 0.9  # chance is 0.333; a frozen random backbone gives exactly that
    assert train["val_images"] == 3 * SMALL["n_val"]
    assert train["settings"]["fine_tune_at"] == 0 and train["settings"]["epochs"] == 0  # whole network trained
    assert Path(train["init"]).is_file() and Path(train["init"]).parent.name == "train_init"

    export = res.step("export")
    kinds = {(p["format"], p["precision"]) for p in export["parity"]}
    assert kinds == {("tflite", "fp32"), ("tflite", "int8"), ("onnx", "fp32"), ("onnx", "int8")}
    assert all(p["passed"] for p in export["parity"])
    # plain int8 passes, but 120 val images cannot confirm a 0.98 budget: each int8 file is weighed against one
    # repair rung (the lower val mean error ships), and no further rung runs
    assert export["int8_repair_attempts"] == 2
    assert "plain int8 passed, but too few val images to confirm it" in text
    for p in export["parity"]:
        assert p["accuracy"] >= 0.9
        assert p["agreement"] >= (1.0 if p["precision"] == "fp32" else 0.98)

    runtime = res.step("runtime")
    assert len(runtime["files"]) == 4
    for r in runtime["files"]:
        assert r["images"] == 3 * SMALL["n_test"] and r["accuracy"] >= 0.85

    out = res.out
    for rel in ("data/train/circle", "data/val/vstripes", "data/test/hstripes", "train/model.keras",
                "train/model.h5", "train/metrics.json", "train/tledge.json", "export/parity.md",
                "export/parity.json", "export/model_int8.tflite", "export/model_int8.onnx",
                "export/model_fp32.tflite", "export/model_fp32.onnx"):
        assert (out / rel).exists(), rel
    assert len(list((out / "data" / "test" / "circle").iterdir())) == SMALL["n_test"]
    assert json.loads((out / "export" / "parity.json").read_text())["passed"] is True

    # the closing lines say where everything is and the accuracy of every step
    assert "demo OK" in text and f"artefacts in {out}/" in text
    assert "random initialisation" in text
    for name in ("model_int8.tflite", "model_int8.onnx", "model_fp32.tflite", "model_fp32.onnx"):
        assert f"export   {name}" in text and f"runtime  {name}" in text
    assert "train    Keras model" in text
    json.dumps(res.to_dict())  # what --json prints


def test_data_is_reused_or_remade_and_foreign_folders_are_refused(tmp_path):
    data = tmp_path / "data"
    spec = demo.make_data(data, 2, 1, 1)
    first = sorted(p.name for p in (data / "train" / "circle").iterdir())
    assert len(first) == 2 and demo.make_data(data, 2, 1, 1) == spec
    demo.make_data(data, 3, 1, 1)  # other settings: remade, not mixed
    assert len(list((data / "train" / "circle").iterdir())) == 3
    foreign = tmp_path / "mine"
    (foreign / "train").mkdir(parents=True)
    with pytest.raises(TledgeError, match="not made by tledge demo"):
        demo.make_data(foreign, 2, 1, 1)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No Keras cache, no shared weights file, and a probe that must not be needed unless allowed."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(demo, "shared_imagenet_file", lambda: None)


def _no_probe():
    raise AssertionError("the network was probed")


def test_choose_weights(offline, tmp_path, monkeypatch):
    assert demo.choose_weights("none", probe=_no_probe).kind == "none"
    s = demo.choose_weights(None, probe=lambda: False)
    assert (s.weights, s.kind) == ("none", "none") and "not reachable" in s.why
    assert demo.choose_weights(None, probe=lambda: True).weights == "imagenet"
    with pytest.raises(TledgeError, match="not reachable"):
        demo.choose_weights("imagenet", probe=lambda: False)
    f = tmp_path / "w.h5"
    f.write_bytes(b"x")
    assert demo.choose_weights(str(f), probe=_no_probe).kind == "file"
    with pytest.raises(TledgeError, match="not a file"):
        demo.choose_weights(str(tmp_path / "missing.h5"), probe=_no_probe)
    # a local copy of the ImageNet file next to the checkout wins over probing
    monkeypatch.setattr(demo, "shared_imagenet_file", lambda: f)
    s = demo.choose_weights(None, probe=_no_probe)
    assert (s.weights, s.kind) == (str(f), "file") and str(f) in s.why
    # weights already in the Keras cache need no network either
    cached = tmp_path / "keras_home" / "models" / demo.IMAGENET_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert demo.choose_weights(None, probe=_no_probe).weights == "imagenet"
    assert demo.choose_weights("imagenet", probe=_no_probe).weights == "imagenet"


def test_probe_is_short_and_never_raises(monkeypatch):
    seen = {}

    def refuse(addr, timeout):
        seen.update(addr=addr, timeout=timeout)
        raise socket.timeout("timed out")

    monkeypatch.setattr(socket, "create_connection", refuse)
    assert demo.imagenet_reachable() is False
    assert seen == {"addr": ("storage.googleapis.com", 443), "timeout": 2.0}


def test_cli_passes_arguments_and_maps_the_result_to_the_exit_code(monkeypatch, tmp_path, capsys):
    calls = []

    def fake(out, **kw):
        say = kw.pop("say")
        say("the step summary")  # the human summary: on stdout, on stderr with --json
        calls.append((out, kw))
        return demo.DemoResult(Path(out), kw["weights"] or "none", passed=kw["seed"] == 0)

    monkeypatch.setattr(demo, "run_demo", fake)
    assert main(["demo", "--out", str(tmp_path / "o"), "--weights", "none", "--n-train", "7", "--epochs", "3",
                 "--size", "48", "--json"]) == 0
    out, kw = calls[-1]
    assert out == tmp_path / "o"
    assert kw == dict(weights="none", size=48, n_train=7, n_val=demo.N_VAL, n_test=demo.N_TEST, epochs=3, seed=0,
                      verbose=0)
    printed = capsys.readouterr()
    assert json.loads(printed.out)["passed"] is True and "the step summary" in printed.err  # one JSON document
    assert main(["demo", "--seed", "1"]) == 1  # a failed step: exit 1
    assert "the step summary" in capsys.readouterr().out
    assert calls[-1][1]["weights"] is None and calls[-1][1]["epochs"] is None
    assert main(["demo", "--n-train", "0"]) == 2  # usage errors: exit 2, nothing runs
    assert len(calls) == 2
    capsys.readouterr()


def test_bad_arguments_raise_before_anything_runs(tmp_path):
    with pytest.raises(TledgeError, match="size must be >= 32"):
        demo.run_demo(tmp_path / "o", weights="none", size=16)
    with pytest.raises(TledgeError, match="not a file"):
        demo.run_demo(tmp_path / "o", weights=str(tmp_path / "missing.h5"))
    assert not (tmp_path / "o").exists()


def test_demo_without_tensorflow_stops_before_writing_anything(tmp_path, monkeypatch):
    """In a tledge[runtime] venv the demo wrote 660 images (8 MB), probed the network, then failed at training
    with exit 1 ("parity failed")."""
    import tledge._deps as deps
    from tledge.errors import MissingDependency

    real = deps.available
    monkeypatch.setattr(deps, "available", lambda name: name != "tensorflow" and real(name))
    with pytest.raises(MissingDependency, match="tensorflow is not installed"):
        demo.run_demo(tmp_path / "o", weights="none")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.real
def test_demo_from_the_shared_imagenet_file(tmp_path):
    w = shared_asset("keras_imagenet_weights", demo.IMAGENET_FILE)
    res = demo.run_demo(tmp_path / "out", weights=str(w), say=lambda *a: None, **SMALL)
    assert res.passed, res.failures
    assert res.step("train")["settings"]["epochs"] > 0  # two-phase transfer learning
    assert res.step("train")["val_accuracy"] >= 0.95
