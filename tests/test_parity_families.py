"""Slow matrix: real keras.applications families, one per preprocessing mode, briefly trained at
64 px (random init: no downloads), every format and precision through `tledge export`."""
import json
import warnings

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from tledge.backbones import contract_for
from tledge.errors import TledgeWarning  # noqa: E402

FAMILIES = [("mobilenet_v2", "tf", 0.35), ("resnet50", "caffe", None), ("densenet121", "torch", None),
            ("efficientnet_b0", "raw", None)]
# EfficientNet (swish, squeeze-excitation, depthwise) is the known int8-hostile family: where its int8
# files fail, the test checks that the export says so and falls back correctly instead of shipping the
# error. (With this recipe, on 2026-12-03's code, its plain int8 files agreed 1.000 on both formats and
# the loop's repair rung too, so that branch did not run; the hymenoptera EfficientNetB0 of
# benchmarks/int8_zoo.py is the one that still fails: docs/int8-fidelity.md.)
INT8_MAY_FALL_BACK = {"efficientnet_b0"}


@pytest.fixture(scope="module")
def family_data(tmp_path_factory):
    """More images than the default fixture: with 150 val images one int8 flip is 0.7 points of
    agreement, not 4 (24 images), and the models learn the shapes well enough to be healthy."""
    from tledge.datasets import make_split_shapes

    return make_split_shapes(tmp_path_factory.mktemp("family_shapes"), n_train=80, n_val=50, size=64)


@pytest.fixture(scope="module", params=FAMILIES, ids=[f[0] for f in FAMILIES])
def family_export(request, family_data, tmp_path_factory):
    import keras

    from tledge import backbones
    from tledge.export.pipeline import ExportConfig, export
    from tledge.images import labelled_images
    from tledge.layers import Preprocess

    name, mode, alpha = request.param
    keras.utils.set_random_seed(0)
    c = contract_for(name, 64, labels=("circle", "hstripes", "vstripes")).replace(input_dtype="float32")
    assert c.norm.value == mode
    inp = keras.Input((64, 64, 3))
    base = backbones.build(name, (64, 64, 3), weights=None, alpha=alpha)
    files, y, _ = labelled_images(family_data / "train")
    x = np.stack([c.prepare(f) for f in files]).astype("float32")
    # random init: batch-norm statistics from one full-batch pass over the data, then frozen
    # (inference mode), so training and inference see the same network; Keras' initial statistics
    # would shrink activations to ~0 and a few epochs cannot train them (the healthy-model recipe of
    # benchmarks/int8_fidelity.py)
    bns = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:
        layer.momentum = 0.0
    base(np.asarray(Preprocess(mode)(x)), training=True)
    for layer in bns:
        layer.trainable = False
    out = keras.layers.Dense(3, activation="softmax")(base(Preprocess(mode)(inp), training=False))
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=15, batch_size=16, verbose=0)
    d = tmp_path_factory.mktemp(name)
    model.save(d / "model.keras")
    # Families expected to pass plain int8 skip the repair loop (--no-repair): at 150 val photos even 150/150
    # cannot confirm a 0.98 pass, so the loop would hold it and run a weight repair (measured 2026-12-03: 281 s of
    # the slow suite for these three, whose plain and repaired files all agreed 1.000).
    # The hold itself is tested in test_fidelity_selection.py, test_fidelity.py and test_cli_output.py; the
    # int8-hostile family keeps the loop, which the fallback branch below checks.
    cfg = ExportConfig(out=d / "export", int8=True, fp16=True, dynamic=True, calib=str(family_data / "train"),
                       val=str(family_data / "val"), repair=name in INT8_MAY_FALL_BACK)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always", TledgeWarning)
        result = export(d / "model.keras", cfg)
    return name, result, [str(w.message) for w in rec if issubclass(w.category, TledgeWarning)]


@pytest.mark.slow
def test_family_exports_pass_parity(family_export):
    name, result, warned = family_export
    report = json.loads((result.out / "parity.json").read_text())
    rows = {r["file"]: r for r in report["results"]}
    assert min(r["reference_accuracy"] for r in rows.values()) > 0.8, "the model did not learn: parity is moot"
    for f in ("model_fp32.tflite", "model_fp32.onnx", "model_fp16.tflite"):
        assert rows[f]["passed"], rows[f]["failures"]
    failing = {f: r["failures"] for f, r in rows.items() if not r["passed"]}
    if name in INT8_MAY_FALL_BACK and failing:
        assert set(failing) <= {"rejected/model_int8.tflite", "rejected/model_int8.onnx", "rejected/model_dynamic.tflite"}
        assert not report["passed"] and len(warned) == len(failing)
        for f in failing:
            assert (result.out / f).is_file() and not (result.out / f.split("/")[1]).exists()
        assert any(a["rung"] != "plain" for a in report["fidelity"])
        return
    assert len(rows) == 6 and not failing and not warned, (failing, warned)
