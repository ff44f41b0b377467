"""Pair-safe grids inside the repair's GPTQ (lab.quant.pairsafe_gptq): no pair of the chosen integers can pass the
AVX2 kernels' int16 bound, the rounding is GPTQ's where no bound is near, and the U8S8 file carries exactly the
integers the repair chose."""
import sys

import numpy as np
import pytest

from conftest import REPO

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _problem(d=64, k=8, seed=0):
    """w (1, d+1, k) with the bias row last, its inputs' second moments h (1, d+1, d+1): heavy same-sign pairs."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.05, (1, d + 1, k))
    w[0, 0:d:2, :] = np.abs(w[0, 0:d:2, :]) + 0.3  # rows 2i and 2i+1 large and positive: pairs far over 128
    w[0, 1:d:2, :4] = np.abs(w[0, 1:d:2, :4]) + 0.3
    x = np.abs(rng.normal(0, 1, (500, d)))  # non-negative inputs, as after a ReLU
    xb = np.concatenate([x, np.ones((500, 1))], 1)
    return w, (xb.T @ xb)[None]


def _pair_sums(q: np.ndarray, amax: int = 255) -> np.ndarray:
    """(d, k) integers -> (k,) largest same-sign neighbouring pair's amax-weighted |sum| (and single product)."""
    from lab.quant.pairsafe import channel_growth

    return channel_growth(q.T, np.full(len(q), amax), 1)  # with limit 1 the growth is the need itself


@pytest.mark.parametrize("kind", ["Conv2D", "Dense"])
def test_no_pair_of_the_chosen_integers_passes_the_bound(kind):
    from lab.quant import pairsafe_gptq as ps

    w, h = _problem()
    grid = ps.grid_for(w[0, :-1], kind)
    assert grid.coarser >= 4  # the channels with heavy pairs on both rows
    out = ps.solve(w, h, grid, 0.01)
    q = out[0, :-1] / grid.scale
    assert np.abs(q - np.rint(q)).max() < 1e-9  # on the grid
    assert _pair_sums(np.rint(q)).max() <= grid.limit
    near = ps.nearest(w[:, :-1], grid)[0] / grid.scale
    assert _pair_sums(np.rint(near)).max() <= grid.limit
    # rounded on the plain int8 grid instead, the same kernel has pairs over the bound: the test can fail
    plain = np.rint(w[0, :-1] / (np.abs(w[0, :-1]).max(axis=0) / 127))
    assert _pair_sums(plain).max() > grid.limit


def test_far_from_the_bound_it_is_gptq():
    """Nothing qualifies and no clip binds (small weights, one large per channel): gptq.solve's result exactly."""
    from lab.quant import pairsafe_gptq as ps
    from tledge.quant import gptq

    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.01, (1, 41, 6))
    w[0, 7, :] = 0.5  # each channel's largest weight, 127 steps; its pair partner ~1 step
    h = rng.normal(0, 1, (300, 41))
    h = (h.T @ h)[None]
    grid = ps.grid_for(w[0, :-1], "Conv2D")
    assert grid.coarser == 0
    ref = gptq.solve(w, h, np.abs(w[:, :-1]).max(axis=1, keepdims=True) / 127, 0.01)
    assert np.array_equal(ps.solve(w, h, grid, 0.01), ref)


def test_the_u8s8_file_carries_the_repairs_integers(tmp_path):
    """End to end on a tiny Keras model: the repair's pass puts its Conv2D and Dense on pair-safe grids, and the
    U8S8 file onnxruntime's quantiser writes holds exactly those integers, with no pair over the bound."""
    keras = pytest.importorskip("keras")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("tf2onnx")
    from lab.quant import pairsafe_gptq as ps
    from tledge.contract import Contract
    from tledge.export import onnx as onnx_export
    from tledge.export.rungs import serve
    from tledge.quant import saturation
    from lab.quant.pairsafe import is_safe

    rng = np.random.default_rng(0)
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(inp)
    x = keras.layers.Conv2D(16, 3, activation="relu", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(3, name="head")(x))
    k = np.abs(rng.normal(0, 0.05, (3, 3, 8, 16))).astype(np.float32)  # all positive: pairs over 128 steps
    model.get_layer("c2").set_weights([k, np.zeros(16, np.float32)])
    calib = rng.uniform(0, 1, (48, 12, 12, 3)).astype(np.float32)
    fixed, _, grids = ps.apply(model, calib, stem=0, steps=("fold", "adaptive", "bias_correction"), errors=False)
    assert set(grids) == {"c1", "c2", "head"} and grids["c2"].coarser > 0
    src, dst = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    contract = Contract(12, 12)
    onnx_export.save(onnx_export.convert_fp32(serve(fixed, contract), contract), src)
    pinned = ps.quantize(src, dst, calib, fixed, grids)
    assert sorted(pinned.values()) == ["c1", "c2", "head"]
    data = dst.read_bytes()
    found = ps.carried(data, fixed, grids, pinned)
    assert sorted(found) == ["c1", "c2", "head"]
    assert all(found[name] == (0, 0) for name in found)
    assert is_safe(onnx.load_from_string(data))
    assert not any(layer.saturated for layer in saturation.check(data, np.full((4, 12, 12, 3), 1.0, np.float32)))
