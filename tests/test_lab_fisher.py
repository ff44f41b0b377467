"""Output-aware (Fisher-weighted) GPTQ rounding (lab/quant/fisher.py: a measured lab experiment, not in the export
loop; docs/int8-fidelity.md "Output-aware rounding")."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import REPO

pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from lab.quant import fisher  # noqa: E402
from tledge.quant import repair  # noqa: E402


def _model():
    keras.utils.set_random_seed(3)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same")(inp)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.Conv2D(12, 1, name="pw")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))


def test_fisher_grams_are_the_weighted_second_moments():
    m = _model()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 8, 8, 8)).astype(np.float32)
    w2 = rng.random((5, 8, 8, 12)).astype(np.float32)
    x1 = np.concatenate([x.reshape(-1, 8), np.ones((320, 1))], 1)
    want = np.einsum("no,ni,nj->oij", w2.reshape(-1, 12).astype(np.float64), x1, x1)
    np.testing.assert_allclose(fisher.fisher_grams(m.get_layer("pw"), x, w2, chunk=2), want, rtol=1e-10)
    wd = rng.random((5, 8, 8, 8)).astype(np.float32)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    p = np.stack([xp[:, i:i + 8, j:j + 8] for i in range(3) for j in range(3)], -1)  # (N, H, W, C, 9)
    p1 = np.concatenate([p, np.ones(p.shape[:-1] + (1,))], -1).reshape(-1, 8, 10)
    want = np.einsum("nc,nci,ncj->cij", wd.reshape(-1, 8).astype(np.float64), p1, p1)
    np.testing.assert_allclose(fisher.fisher_grams(m.get_layer("dw"), x, wd, chunk=3), want, rtol=1e-10)


def test_only_linear_pointwise_and_depthwise_layers_are_eligible():
    m = _model()
    assert [layer.name for layer in m.layers if fisher.eligible(layer)] == ["dw", "pw"]
    assert not fisher.eligible(keras.layers.Conv2D(4, 1, activation="relu"))


def test_beta_zero_is_repairs_rounding_and_beta_one_changes_it():
    """beta 0 solves GPTQ per output channel on repair's own second moments: the same weights as repair's
    grouped solve. beta 1 weighs by the margin gradients and rounds some weights the other way."""
    m = _model()
    x = np.random.default_rng(1).uniform(0, 255, (24, 16, 16, 3)).astype(np.float32) / 255
    ref, _ = repair.apply(m, x, ("fold", "adaptive", "bias_correction"), errors=False)
    runs = {}
    for beta in (0.0, 1.0):
        log = repair.RepairLog(())
        runs[beta] = fisher.step(beta, stem=0)(repair.fold_bn(m)[0], x, log)
        assert "2 kernels Fisher-weighted" in log.notes[-1]
    for name in ("dw", "pw"):
        for got, want in zip(runs[0.0].get_layer(name).get_weights(), ref.get_layer(name).get_weights()):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    changed = {name: float(np.mean(runs[1.0].get_layer(name).get_weights()[0] != ref.get_layer(name).get_weights()[0]))
               for name in ("dw", "pw")}
    assert min(changed.values()) > 0, changed
