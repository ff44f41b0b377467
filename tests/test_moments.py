"""Second moments for the weight repair (tledge.quant.moments): the shift-structured gram of stride-1
'same' convolutions against the patches it replaces (tf.image.extract_patches)."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

from tledge.quant import moments  # noqa: E402


def _rows(layer, x):
    return np.asarray(moments.patches(layer, x), np.float64)[0]


@pytest.mark.parametrize("hw,kernel", [((9, 7), (3, 3)), ((4, 4), (3, 3)), ((2, 5), (3, 3)), ((8, 9), (5, 3)),
                                       ((1, 1), (3, 3))])
def test_shift_gram_equals_the_patch_gram(hw, kernel):
    rng = np.random.default_rng(sum(hw))
    c = 4
    layer = keras.layers.Conv2D(2, kernel, padding="same")
    layer.build((None, *hw, c))
    assert moments.shift_conv(layer)
    xa = np.maximum(rng.normal(0.3, 1.0, (3, *hw, c)), 0).astype(np.float32)  # ReLU-like, with zeros
    xb = xa + rng.normal(0, 0.1, xa.shape).astype(np.float32)
    pa, pb = _rows(layer, xa), _rows(layer, xb)
    for a, b, ra, rb in ((xa, xa, pa, pa), (xa, xb, pa, pb), (xb, xb, pb, pb)):
        ref = ra.T @ rb
        # shifts in both directions, and (conv_gram: narrow inputs) row patches with vertical shifts
        for got in (moments.shift_gram(a, b, kernel), moments.conv_gram(a, b, kernel)):
            assert got.shape == ref.shape
            np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())
    np.testing.assert_allclose(moments.window_sums(xb, kernel), pb.sum(0), rtol=1e-12, atol=1e-9)


def test_collect_is_the_same_with_and_without_the_shift_gram(monkeypatch):
    """A whole collect() (chunks, the bias row, the cross moments on the first images) both ways."""
    rng = np.random.default_rng(5)
    layer = keras.layers.Conv2D(3, 3, padding="same")
    layer.build((None, 6, 6, 5))
    xq = np.maximum(rng.normal(0.2, 1.0, (7, 6, 6, 5)), 0).astype(np.float32)
    xf = xq + rng.normal(0, 0.05, xq.shape).astype(np.float32)
    fast = moments.collect(layer, xq, xf, cross_images=3, budget=6 * 6 * 45 * 2)  # chunks of 2 images
    monkeypatch.setattr(moments, "shift_conv", lambda layer: False)
    slow = moments.collect(layer, xq, xf, cross_images=3, budget=6 * 6 * 45 * 2)
    for key in ("hqq", "fsum", "hqf", "hff", "sub_qq"):
        a, b = getattr(fast, key), getattr(slow, key)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * np.abs(b).max(), err_msg=key)
    assert fast.hqq[0, -1, -1] == 7 * 36 and fast.sub_qq[0, -1, -1] == 4 * 36  # rows: all images / 2 chunks
    assert not np.allclose(fast.hqq, fast.sub_qq)


def test_depthwise_collect_is_the_same_with_and_without_the_shift_gram(monkeypatch):
    """Stride-1 'same' depthwise layers take the shift gram (channel-wise products, chunks of float64 inputs);
    a whole collect() equals the strided-view one, cross moments on the first images included."""
    rng = np.random.default_rng(6)
    layer = keras.layers.DepthwiseConv2D(3, padding="same")
    layer.build((None, 7, 5, 4))
    assert moments.shift_depthwise(layer) and not moments.shift_conv(layer)
    xq = np.maximum(rng.normal(0.2, 1.0, (9, 7, 5, 4)), 0).astype(np.float32)
    xf = xq + rng.normal(0, 0.05, xq.shape).astype(np.float32)
    budget = 7 * 5 * 36 * 2  # views: chunks of 2 images (the cross moments: the first 4); the shift gram: 4, 5
    fast = moments.collect(layer, xq, xf, cross_images=3, budget=budget)
    monkeypatch.setattr(moments, "shift_depthwise", lambda layer: False)
    slow = moments.collect(layer, xq, xf, cross_images=3, budget=budget)
    for key in ("hqq", "fsum", "hqf", "hff", "sub_qq"):
        a, b = getattr(fast, key), getattr(slow, key)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * np.abs(b).max(), err_msg=key)
    assert fast.hqq[0, -1, -1] == 9 * 35 and fast.sub_qq[0, -1, -1] == 4 * 35


def test_strided_and_valid_convolutions_keep_the_patches():
    for kw in (dict(strides=2, padding="same"), dict(padding="valid"), dict(dilation_rate=2, padding="same")):
        layer = keras.layers.Conv2D(2, 3, **kw)
        layer.build((None, 8, 8, 3))
        assert not moments.shift_conv(layer)
    one = keras.layers.Conv2D(2, 1)
    one.build((None, 8, 8, 3))
    assert not moments.shift_conv(one)


@pytest.mark.parametrize("hw,kw", [((9, 7), dict(kernel_size=3, padding="same")),
                                   ((9, 8), dict(kernel_size=3, strides=2, padding="valid")),
                                   ((9, 8), dict(kernel_size=3, strides=2, padding="same")),
                                   ((7, 10), dict(kernel_size=5, strides=2, padding="same")),
                                   ((8, 8), dict(kernel_size=(5, 3), padding="same")),
                                   ((9, 9), dict(kernel_size=3, dilation_rate=2, padding="same")),
                                   ((4, 4), dict(kernel_size=3, depth_multiplier=2, padding="valid"))])
def test_depthwise_grams_from_views_equal_the_patch_grams(hw, kw):
    """MobileNet's depthwise layers: per-channel grams from strided views of the padded input (no patch copy)
    equal those of tf.image.extract_patches' rows, for TensorFlow's 'same' (extra pad after) and 'valid',
    strides, non-square kernels, dilation and a depth multiplier."""
    rng = np.random.default_rng(sum(hw))
    c = 3
    layer = keras.layers.DepthwiseConv2D(**kw)
    layer.build((None, *hw, c))
    xq = np.maximum(rng.normal(0.3, 1.0, (4, *hw, c)), 0).astype(np.float32)
    xf = xq + rng.normal(0, 0.1, xq.shape).astype(np.float32)
    pq, pf = (np.asarray(moments.patches(layer, x), np.float64) for x in (xq, xf))  # (C, M, k)
    assert pq.shape[1] == 4 * int(np.prod(layer.compute_output_shape((None, *hw, c))[1:3]))
    got = moments.collect(layer, xq, xf, cross_images=None, budget=10 ** 9)
    ones_q = np.concatenate([pq, np.ones(pq.shape[:2] + (1,))], 2)
    ones_f = np.concatenate([pf, np.ones(pf.shape[:2] + (1,))], 2)
    for key, a, b in (("hqq", ones_q, ones_q), ("hqf", ones_q, ones_f), ("hff", ones_f, ones_f)):
        ref = np.stack([x.T @ y for x, y in zip(a, b)])
        np.testing.assert_allclose(getattr(got, key), ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max(), err_msg=key)
    np.testing.assert_allclose(got.fsum, ones_f.sum(1), rtol=1e-12)


@pytest.mark.parametrize("size,k,stride,dilation", [(7, 3, 2, 1), (8, 3, 2, 1), (9, 5, 3, 1), (5, 4, 2, 1), (1, 3, 2, 1),
                                                    (6, 3, 1, 2), (7, 2, 1, 3), (4, 1, 3, 1), (3, 7, 1, 1)])
def test_tf_pad_is_tensorflows_same_padding(size, k, stride, dilation):
    """tf_pad's 'same' rule (the weight repair's windows and the TFLite bias correction's taps, which share it)
    against TensorFlow's own SAME convolution: the output size and where the zeros go (before / after)."""
    import tensorflow as tf

    out, before, after = moments.tf_pad(size, k, stride, dilation, "same")
    rng = np.random.default_rng(size * 100 + k * 10 + stride + dilation)
    x, w = rng.normal(size=size), rng.normal(size=k)
    xp = np.pad(x, (before, after))
    assert (len(xp) - (k - 1) * dilation - 1) // stride + 1 == out
    mine = [sum(w[u] * xp[q * stride + u * dilation] for u in range(k)) for q in range(out)]
    ref = tf.nn.conv2d(x.reshape(1, 1, size, 1), w.reshape(1, k, 1, 1), strides=[1, 1, stride, 1], padding="SAME",
                       dilations=[1, 1, dilation, 1])
    np.testing.assert_allclose(mine, np.asarray(ref).reshape(-1), rtol=1e-9, atol=1e-12)
