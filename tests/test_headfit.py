"""Classifier-head refit (lab/quant/headfit.py: a measured lab experiment, not in the export loop)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import REPO

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from lab.quant import headfit  # noqa: E402


def _features(rng, n=200, d=24, k=3):
    f = rng.normal(0, 1, (n, d))
    w, b = rng.normal(0, 1, (d, k)), rng.normal(0, 0.5, k)
    return f, w, b


def test_solve_recovers_a_distorted_backbone_on_held_out_images():
    rng = np.random.default_rng(0)
    f, w, b = _features(rng)
    z = f @ w + b  # the float model's logits
    # an int8 backbone that shifts and mixes features: a head refit can undo it, the original head cannot
    mix = np.eye(f.shape[1]) + rng.normal(0, 0.15, (f.shape[1],) * 2)
    fq = f @ mix + 0.3 + rng.normal(0, 0.02, f.shape)
    fit = headfit.solve(fq, z, w, b)
    assert fit.accepted and fit.err_after < 0.2 * fit.err_before
    assert fit.agree_after >= fit.agree_before and fit.images_held == 50 and fit.images_fit == 150
    # the refitted weights are on the per-channel int8 grid
    scale = np.abs(fit.weights).max(axis=0) / 127.0
    steps = fit.weights / scale
    assert np.abs(steps - np.round(steps)).max() < 1e-3 and np.abs(np.round(steps)).max() == 127


def test_solve_keeps_nothing_when_the_head_has_nothing_to_fix():
    rng = np.random.default_rng(1)
    f, w, b = _features(rng)
    fit = headfit.solve(f + rng.normal(0, 1e-4, f.shape), f @ w + b, w, b)
    assert not fit.accepted and "not kept" in fit.summary()


def test_solve_needs_images_to_hold_out():
    with pytest.raises(ValueError, match="hold out"):
        headfit.solve(np.zeros((3, 2)), np.zeros((3, 2)), np.zeros((2, 2)), np.zeros(2))


def _calib(tiny_model, shapes_dataset):
    from tledge.export.imagesets import load_pixels

    x, _ = load_pixels(shapes_dataset / "train", tiny_model["contract"], 256)
    return x.astype(np.float32)


def test_onnx_head_refit_reduces_held_out_logit_error_of_the_tiny_model(tiny_model, tiny_export, shapes_dataset,
                                                                      tmp_path):
    onnx = pytest.importorskip("onnx")
    from tledge.export import onnx as onnx_export

    out = tiny_export.out
    fp32 = onnx_export.float_input((out / "model_fp32.onnx").read_bytes())
    src = tmp_path / "fp32.onnx"
    src.write_bytes(fp32)
    pre = onnx_export.preprocess(src, tmp_path / "pre.onnx")
    qdq = tmp_path / "int8.onnx"
    calib = _calib(tiny_model, shapes_dataset)
    scheme = onnx_export.quantize_int8(pre, qdq, calib)
    model = onnx.load(str(pre))
    head = headfit.onnx_head(model)
    assert head is not None and head.bias is not None
    w0, _ = headfit.onnx_weights(model, head)
    fit = headfit.onnx_refit(model, fp32, qdq.read_bytes(), calib, min_gain=0.0)
    assert fit.err_after < fit.err_before, fit.summary()
    # accepted: the float graph now carries the refitted head, quantised again it keeps those weights
    assert fit.accepted
    w1, b1 = headfit.onnx_weights(model, head)
    assert np.allclose(w1, fit.weights, atol=1e-6) and not np.allclose(w1, w0)
    onnx.save(model, str(pre))
    onnx_export.quantize_int8(pre, qdq, calib, scheme=scheme)
    z = headfit.onnx_tensor(fp32, calib, headfit.onnx_head(onnx.load_from_string(fp32)).logits)
    fq = headfit.onnx_features(qdq.read_bytes(), head, calib)
    held = np.arange(len(calib)) % 4 == 3
    err = np.mean((fq[held] @ w1 + b1 - z[held]) ** 2)
    assert err < fit.err_before


def test_tflite_head_refit_on_the_tiny_model(tiny_model, tiny_export, shapes_dataset):
    import keras

    out = tiny_export.out
    model = keras.models.load_model(tiny_model["keras"], compile=False)
    dense = headfit.keras_head(model)
    assert dense is not None
    before = [w.copy() for w in dense.get_weights()]
    fit = headfit.tflite_refit(dense, (out / "model_fp32.tflite").read_bytes(),
                               (out / "model_int8.tflite").read_bytes(), _calib(tiny_model, shapes_dataset),
                               min_gain=0.0)
    assert fit.err_after < fit.err_before, fit.summary()
    assert all(np.array_equal(a, b) for a, b in zip(before, dense.get_weights()))  # the layer is not changed
    assert fit.weights.shape == before[0].shape and fit.bias.shape == before[1].shape
