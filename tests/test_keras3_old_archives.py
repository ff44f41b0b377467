"""Sequential `.keras` archives of Keras 3.0-3.8 around a functional backbone (the transfer-learning layout) did not
load in Keras 3.15 ('expects 1 input(s), but it received 2 input tensors', keras-team/keras#20084): those releases
wrote a nested model's one input and output as lists of one reference. Session 37 (a helper's files from Keras
3.0.5, 3.3.3 and 3.8.0 under the JAX and torch backends: after the rewrite the exported file gave Keras 3.8's own
predictions within 2.7e-6). Here a 3.15 archive is written back in the old form."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from tledge.export import keras3_compat, loader  # noqa: E402


def _old_form(config):
    def visit(node):
        if isinstance(node, dict):
            cfg = node.get("config")
            if node.get("class_name") == "Functional" and isinstance(cfg, dict):
                for key in ("input_layers", "output_layers"):
                    if keras3_compat.is_ref(cfg.get(key)):
                        cfg[key] = [cfg[key]]
            for v in node.values():
                visit(v)
        elif isinstance(node, list):
            for v in node:
                visit(v)
    visit(config)
    return config


def test_a_keras_3_8_sequential_around_a_backbone_loads(tmp_path):
    import keras

    L = keras.layers
    i = keras.Input((16, 16, 3))
    backbone = keras.Model(i, L.Conv2D(4, 3, activation="relu")(i), name="backbone")
    model = keras.Sequential([keras.Input((16, 16, 3)), L.Rescaling(1 / 255.0), backbone,
                              L.GlobalAveragePooling2D(), L.Dense(2, activation="softmax")])
    model.save(tmp_path / "new.keras")
    old = tmp_path / "old.keras"
    with zipfile.ZipFile(tmp_path / "new.keras") as src, zipfile.ZipFile(old, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "config.json":
                data = json.dumps(_old_form(json.loads(data))).encode()
            dst.writestr(info.filename, data)
    with pytest.raises(Exception, match="input"):  # what Keras 3.15 itself says
        keras.saving.load_model(old, compile=False)
    lm = loader.load_model(old)
    assert any("keras-team/keras#20084" in n for n in lm.notes), lm.notes
    x = np.random.default_rng(0).uniform(0, 255, (3, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(lm.model(x)), np.asarray(model(x)), atol=1e-6)


def test_configs_with_nothing_to_rewrite_are_left_alone():
    config = {"class_name": "Functional", "config": {"input_layers": [["a", 0, 0]], "output_layers": ["b", 0, 0]}}
    assert keras3_compat.single_ends(config) == (config, 0)  # (the top model's lists are Keras's own to read)
