"""Block reconstruction, BRECQ-style (lab/quant/brecq.py: a measured lab experiment, not in the export loop)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import REPO

pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from lab.quant import brecq  # noqa: E402
from tledge.quant import repair  # noqa: E402

STEM = 1  # the tiny model's first conv stays float, as a stem would


@pytest.fixture(scope="module")
def calib(tiny_model, shapes_dataset):
    from tledge.export.imagesets import load_pixels

    x, _ = load_pixels(shapes_dataset / "train", tiny_model["contract"], 96)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def reconstructed(tiny_model, calib):
    fixed, _ = repair.apply(tiny_model["model"], calib, stem=STEM)
    keep = repair.stem_layers(fixed, STEM)
    new, results = brecq.reconstruct(fixed, tiny_model["model"], calib, keep_float=keep, iters=100, batch=16)
    return fixed, new, results, keep


def _kernels(model, keep):
    return {layer.name: layer.get_weights()[0] for layer in model.layers
            if repair.linear_kind(layer) and layer.name not in keep}


def _walk(model, reference, calib, keep):
    """Outputs of every layer: the folded float model (float path) and `model` with its 8-bit activations
    fake-quantised on the float ranges (the quantised path, as the converters run it; each output is
    recorded before its own rounding, as brecq measures a block's output)."""
    ref, _ = repair.fold_bn(reference)
    flat = keras.Model(ref.inputs, [layer.output for layer in ref.layers[1:]])
    floats = dict(zip([layer.name for layer in ref.layers[1:]], flat.predict(calib, verbose=0)))
    acts = {id(t): calib for t in model.inputs}
    quant = {}
    for op, node in repair.nodes(model):
        args, kwargs = node.arguments.fill_in(acts)
        out = quant[op.name] = repair.apply_layer(op, args, kwargs)  # recorded before its own rounding
        if repair.quantised_output(op, set(keep)) and op.name not in model.output_names and op.name in floats:
            out = repair.fake_quant(out, floats[op.name].min(), floats[op.name].max())
        for t in node.outputs:
            acts[id(t)] = out
    return floats, quant


def test_blocks_cut_the_tiny_model_after_its_stem(reconstructed):
    fixed, _, results, keep = reconstructed
    found, note = brecq.blocks(fixed, keep)
    assert note is None and [blk.nodes[0][0].name for blk in found][0] not in keep
    linear = [name for r in results for name in r.ops]
    assert linear == [n for n in _kernels(fixed, keep)]  # every non-stem kernel in exactly one block
    assert len(results) == 2 and len(results[0].ops) == 2  # depthwise + pointwise, then the head


def test_weights_stay_on_the_int8_grid_with_the_same_scale(reconstructed):
    fixed, new, _, keep = reconstructed
    before, after = _kernels(fixed, keep), _kernels(new, keep)
    changed = 0
    for name, k in after.items():
        axes = (0, 1) if k.ndim == 4 and type(new.get_layer(name)).__name__ == "DepthwiseConv2D" else \
            tuple(range(k.ndim - 1))
        scale = np.abs(k).max(axis=axes, keepdims=True) / 127.0
        np.testing.assert_allclose(scale, np.abs(before[name]).max(axis=axes, keepdims=True) / 127.0, rtol=1e-6)
        steps = k / np.where(scale > 0, scale, 1.0)
        assert np.abs(steps - np.round(steps)).max() < 1e-3
        assert np.all(np.abs(np.round(steps)).max(axis=axes)[scale.reshape(-1) > 0] == 127)
        changed += int((np.round(steps) != np.round(before[name] / np.where(scale > 0, scale, 1.0))).sum())
    assert changed > 0  # the reconstruction re-chose roundings


def test_block_output_error_does_not_increase(tiny_model, calib, reconstructed):
    fixed, new, results, keep = reconstructed
    assert all(min(r.err_input, r.err_brecq) == (r.err_brecq if r.kept else r.err_input) for r in results)
    assert any(r.kept for r in results)  # on the tiny model: the head block (GPTQ stays better on the first)
    floats, q_old = _walk(fixed, tiny_model["model"], calib, keep)
    _, q_new = _walk(new, tiny_model["model"], calib, keep)
    found, _ = brecq.blocks(fixed, keep)
    for blk in found:
        name = blk.last.name
        old, now = (float(np.mean((q[name] - floats[name]) ** 2)) for q in (q_old, q_new))
        assert now <= old * 1.001, (name, old, now)


def test_holdout_judges_each_block_on_images_it_was_not_fitted_on(tiny_model, calib, reconstructed):
    fixed, _, fitted, keep = reconstructed
    new, results = brecq.reconstruct(fixed, tiny_model["model"], calib, keep_float=keep, iters=50, holdout=4)
    assert [r.ops for r in results] == [r.ops for r in fitted]
    held = np.arange(len(calib)) % 4 == 3
    # the input model's error on the first block is judged on the held-out quarter only
    found, _ = brecq.blocks(fixed, keep)
    floats, quant = _walk(fixed, tiny_model["model"], calib, keep)
    sq = (quant[found[0].last.name] - floats[found[0].last.name]) ** 2
    on_held, on_all = float(np.mean(sq[held])), float(np.mean(sq))
    # (this walk's float path starts from the original preprocessing, brecq's from the exact-input one)
    assert results[0].err_input == pytest.approx(on_held, rel=0.1)
    assert abs(results[0].err_input - on_held) < abs(results[0].err_input - on_all)
    for r in results:
        assert r.kept == (r.err_brecq < r.err_input)
    for name, k in _kernels(new, keep).items():
        if not any(name in r.ops and r.kept for r in results):
            np.testing.assert_array_equal(k, _kernels(fixed, keep)[name])
