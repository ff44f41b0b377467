"""Slow matrix: real keras.applications families, one per preprocessing mode, briefly trained at
64 px (random init: no downloads), every format and precision through `tledge export`."""
import json

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from tledge.contract import Contract  # noqa: E402

FAMILIES = [("mobilenet_v2", "tf", 0.35), ("resnet50", "caffe", None), ("densenet121", "torch", None),
            ("efficientnet_b0", "raw", None)]


@pytest.fixture(scope="module", params=FAMILIES, ids=[f[0] for f in FAMILIES])
def family_export(request, shapes_dataset, tmp_path_factory):
    import keras

    from tledge import backbones
    from tledge.export.pipeline import ExportConfig, export
    from tledge.images import labelled_images
    from tledge.layers import Preprocess

    name, mode, alpha = request.param
    keras.utils.set_random_seed(0)
    c = Contract.for_backbone(name, 64, labels=("circle", "hstripes", "vstripes")).replace(input_dtype="float32")
    assert c.norm.value == mode
    inp = keras.Input((64, 64, 3))
    base = backbones.build(name, (64, 64, 3), weights=None, alpha=alpha)
    out = keras.layers.Dense(3, activation="softmax")(base(Preprocess(mode)(inp)))
    model = keras.Model(inp, out)
    files, y, _ = labelled_images(shapes_dataset / "train")
    x = np.stack([c.prepare(f) for f in files]).astype("float32")
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=12, batch_size=16, verbose=0)
    # a dozen steps leave batch-norm moving statistics far from the batch statistics the model was
    # trained with: set them from one full-batch pass so inference behaves like training
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(x, training=True)
    d = tmp_path_factory.mktemp(name)
    model.save(d / "model.keras")
    return name, export(d / "model.keras", ExportConfig(out=d / "export", int8=True, fp16=True, dynamic=True,
                                                        calib=str(shapes_dataset / "train"),
                                                        val=str(shapes_dataset / "val")))


@pytest.mark.slow
def test_family_exports_pass_parity(family_export):
    name, result = family_export
    report = json.loads((result.out / "parity.json").read_text())
    rows = {r["file"]: r for r in report["results"]}
    assert len(rows) == 6
    assert min(r["reference_accuracy"] for r in rows.values()) > 0.8, "the model did not learn: parity is moot"
    for f in ("model_fp32.tflite", "model_fp32.onnx"):
        assert rows[f]["passed"], rows[f]["failures"]
    failing = {f: r["failures"] for f, r in rows.items() if not r["passed"]}
    assert not failing, failing
