"""Acceptance on real photos (../shared/assets): hymenoptera_data with ImageNet MobileNet-0.25 weights."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.real]
WEIGHTS = ("keras_imagenet_weights", "mobilenet_2_5_224_tf_no_top.h5")


def asset(root, *parts):
    p = root.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared asset not available: {p}")
    return p


@pytest.fixture(scope="module")
def hymenoptera_run(shared_assets, tmp_path_factory):
    """`tledge train` with the acceptance command, once for this module."""
    from tledge.cli import main

    data, weights = asset(shared_assets, "hymenoptera_data"), asset(shared_assets, *WEIGHTS)
    out = tmp_path_factory.mktemp("hymenoptera") / "run"
    code = main(["train", str(data), "--backbone", "mobilenet", "--alpha", "0.25", "--weights", str(weights),
                 "--size", "224", "--out", str(out)])
    return code, out, data


def test_cli_reaches_085_on_hymenoptera(hymenoptera_run):
    import keras

    from tledge.contract import Contract
    from tledge.layers import CUSTOM_OBJECTS
    from tledge.train import data as td

    code, out, data = hymenoptera_run
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    print(f"\nval_accuracy {m['val_accuracy']:.3f}, wall {m['wall_time_s']:.0f}s, best {m['best']}")
    assert m["val_accuracy"] >= 0.85
    head = [r["val_accuracy"] for r in m["history"] if r["phase"] == "head"]
    tune = [r["val_accuracy"] for r in m["history"] if r["phase"] == "fine_tune"]
    print(f"best head epoch {max(head):.3f}, fine-tuning epochs {min(tune):.3f}-{max(tune):.3f}")
    assert tune and max(head) - min(tune) <= 0.03 + 1e-9  # issue 14: fine-tuning keeps what the head learned
    assert m["train_counts"] == [124, 121] and m["val_counts"] == [70, 83]  # the placeholder GIF is kept
    contract = Contract.load(out / "tledge.json")
    model = keras.saving.load_model(str(out / "model.keras"), custom_objects=CUSTOM_OBJECTS, safe_mode=True)
    val = td.plan(data).val
    p = model.predict(contract.prepare_batch(val.files), verbose=0, batch_size=64)
    assert float((p.argmax(1) == val.y).mean()) == pytest.approx(m["val_accuracy"])


def test_grayscale_fold_of_real_imagenet_weights(shared_assets):
    """MobileNet (tf mode): the folded 1-channel backbone gives the RGB backbone's features on gray photos."""
    from tledge import backbones
    from tledge.backbones import contract_for
    from tledge.train import data as td
    from tledge.train import model as tm
    from tledge.train.grayscale import fold_to_gray

    weights = asset(shared_assets, *WEIGHTS)
    files = td.plan(asset(shared_assets, "hymenoptera_data")).val.files[::10]
    c3, c1 = contract_for("mobilenet", 224), contract_for("mobilenet", 224, grayscale=True)
    bb3 = backbones.build("mobilenet", (224, 224, 3), weights=str(weights), alpha=0.25)
    bb1, rep = fold_to_gray(bb3, tm._preprocess(c3, "a"), tm._preprocess(c1, "b"))
    assert rep.exact_at_borders
    g = c1.prepare_batch(files)
    f3 = np.asarray(tm.feature_model(tm.assemble(bb3, c3, 2, 0.2))(np.repeat(g, 3, axis=-1)))
    f1 = np.asarray(tm.feature_model(tm.assemble(bb1, c1, 2, 0.2))(g))
    assert np.abs(f3 - f1).max() <= 1e-5 * np.abs(f3).max()


def test_chain_train_export_int8_run_keeps_accuracy(hymenoptera_run, capsys):
    """Issue 4: train -> export --int8 -> run --source val/ keeps the val accuracy within 1 point."""
    from tledge.cli import main

    code, out, data = hymenoptera_run
    assert code == 0
    val_acc = json.loads((out / "metrics.json").read_text())["val_accuracy"]
    exp = out.parent / "export"
    assert main(["export", str(out / "model.h5"), "--int8", "--calib", str(data / "train"), "--val",
                 str(data / "val"), "--out", str(exp)]) == 0
    for name in ("model_int8.tflite", "model_int8.onnx"):
        capsys.readouterr()
        assert main(["run", str(exp / name), "--source", str(data / "val"), "--json"]) == 0
        rows = [json.loads(s) for s in capsys.readouterr().out.splitlines() if s.startswith("{")]
        rows = [r for r in rows if r.get("top")]
        truth = ["ants" if "/ants/" in r["source"].replace("\\", "/") else "bees" for r in rows]
        acc = float(np.mean([r["top"][0]["label"] == t for r, t in zip(rows, truth)]))
        print(f"\n{name}: runtime val accuracy {acc:.3f} (Keras {val_acc:.3f}, {len(rows)} images)")
        assert len(rows) == 153 and abs(acc - val_acc) <= 0.01 + 1e-9
