"""The blocked GPTQ solver (tledge.quant.gptq) against the plain row-by-row loop it replaced.

The reference below is the loop tledge.quant.repair._gptq ran before the solver was blocked (kept here,
not in the package): inv + Cholesky, one rank-1 update of every later row per rounded row."""
from __future__ import annotations

import numpy as np
import pytest

from tledge.quant import gptq


def _reference(w, h, scale, damp):
    G, D, _ = w.shape
    h = h.copy()
    diag = np.einsum("gii->gi", h)
    dead = diag <= 0
    h[:, np.arange(D), np.arange(D)] += damp * diag.mean(axis=1, keepdims=True) + dead
    u = np.linalg.cholesky(np.linalg.inv(h)).transpose(0, 2, 1)
    top = np.abs(w[:, :-1]).argmax(axis=1)
    sign = np.sign(np.take_along_axis(w[:, :-1], top[:, None], 1))[:, 0]
    w = w.copy()
    safe = np.where(scale > 0, scale, 1.0)[:, 0]
    for i in range(D - 1):
        col = w[:, i]
        q = np.clip(np.round(col / safe), -127, 127)
        q = np.where(top == i, 127 * sign, q) * scale[:, 0]
        err = (col - q) / u[:, i, i][:, None]
        w[:, i + 1:] -= u[:, i, i + 1:, None] * err[:, None, :]
        w[:, i] = q
    return w


def _layer(rng, groups, rows, k, dead=()):
    """Kernel rows (G, rows + 1, k) with the bias row last, and the second moments of correlated
    inputs (a shared low-rank part plus noise, channel scales over two decades, a mean offset) with
    [x, 1] rows; `dead` inputs are always zero (zero diagonal)."""
    m = 3 * rows + 50
    mix = rng.normal(size=(groups, rows // 4 + 1, rows))
    x = rng.normal(size=(groups, m, rows // 4 + 1)) @ mix + 0.3 * rng.normal(size=(groups, m, rows))
    x = x * np.logspace(-1, 1, rows) + rng.normal(size=(groups, 1, rows))
    x[:, :, list(dead)] = 0.0
    xs = np.concatenate([x, np.ones((groups, m, 1))], 2)
    h = xs.transpose(0, 2, 1) @ xs
    w = rng.normal(size=(groups, rows + 1, k)) / np.sqrt(rows)
    w[:, -1] = rng.normal(size=(groups, k))
    w[:, rows // 3, 0] = 5.0 / np.sqrt(rows)  # a clear extreme, inside the second block
    return w, h


@pytest.mark.parametrize("groups,rows,k,block", [(1, 300, 7, 64), (1, 257, 5, 128), (6, 9, 3, 4),
                                                 (3, 130, 2, 32)])
def test_blocked_solver_equals_the_row_by_row_loop(groups, rows, k, block):
    rng = np.random.default_rng(rows + k)
    w, h = _layer(rng, groups, rows, k, dead=(2, rows // 2))
    scale = np.abs(w[:, :-1]).max(axis=1, keepdims=True) / 127.0
    scale[:, :, -1] = 0.0  # a dead channel: its column rounds to 0 and still compensates nothing
    w[:, :-1, -1] = 0.0
    got = gptq.solve(w, h, scale, 0.01, block=block)
    ref = _reference(w, h, scale, 0.01)
    q = got[:, :-1] / np.where(scale > 0, scale, 1.0)
    assert np.abs(q - np.round(q)).max() < 1e-9  # every kernel row on the grid
    top = np.abs(w[:, :-1, :-1]).argmax(axis=1)  # the largest element of each live channel at +-127
    assert np.all(np.round(np.abs(np.take_along_axis(q[:, :, :-1], top[:, None], 1))) == 127)
    assert not np.allclose(got[:, -1], w[:, -1])  # the free bias row took compensation
    assert np.array_equal(np.round(q), np.round(ref[:, :-1] / np.where(scale > 0, scale, 1.0)))
    np.testing.assert_allclose(got[:, -1], ref[:, -1], rtol=1e-9, atol=1e-9 * np.abs(ref[:, -1]).max())
    assert np.abs(got - ref).max() < 1e-9 * np.abs(ref).max()


def test_inverse_cholesky_is_the_factor_of_the_inverse():
    rng = np.random.default_rng(3)
    _, h = _layer(rng, 2, 200, 1, dead=(5,))
    h = gptq.damped(h, 0.01)
    u = gptq.inverse_cholesky(h)
    ref = np.linalg.cholesky(np.linalg.inv(h)).transpose(0, 2, 1)
    assert np.array_equal(u, np.triu(u))
    np.testing.assert_allclose(u, ref, rtol=0, atol=1e-9 * np.abs(ref).max())


def test_fake_quant_gives_the_bits_of_the_plain_formula():
    """repair.fake_quant works in place in float32; the values must be those of the float64 formula."""
    from tledge.quant import repair

    rng = np.random.default_rng(4)
    x = (rng.normal(0.5, 2.0, (4, 9, 9, 16)) ** 3).astype(np.float32)  # wide tails, exact zeros below
    x[0, 0, 0, :4] = [-0.0, 0.0, 1e-9, -1e-9]
    for lo, hi in ((float(x.min()) / 3, float(x.max()) / 2), (0.5, 7.0), (-3.0, -1.0)):
        lo_, hi_ = min(lo, 0.0), max(hi, 0.0)
        scale = (hi_ - lo_) / 255
        zp = np.round(-lo_ / scale)
        ref = ((np.clip(np.round(x / scale) + zp, 0, 255) - zp) * scale).astype(np.float32)
        got = repair.fake_quant(x, lo, hi)
        assert got.dtype == np.float32 and np.array_equal(got.view(np.int32), ref.view(np.int32))
        x64 = x.astype(np.float64) * 1.001  # other dtypes: the formula itself
        ref64 = ((np.clip(np.round(x64 / scale) + zp, 0, 255) - zp) * scale).astype(np.float32)
        assert np.array_equal(repair.fake_quant(x64, lo, hi), ref64)


def test_fake_quant_tensor_gives_the_bits_of_fake_quant():
    """The repair pass rounds activations with backend ops (tensors stay tensors): the same bits as numpy's."""
    from tledge.quant import repair

    rng = np.random.default_rng(7)
    x = (rng.normal(0.5, 2.0, (3, 9, 9, 16)) ** 3).astype(np.float32)
    x[0, 0, 0, :4] = [-0.0, 0.0, 1e-9, -1e-9]
    lo_hi = ((float(x.min()) / 3, float(x.max()) / 2), (0.5, 7.0), (-3.0, -1.0), (float(x.min()), float(x.max())))
    for lo, hi in lo_hi:
        want = repair.fake_quant(x, lo, hi)
        for chunk_bytes, keep in ((1 << 26, None), (9 * 9 * 16 * 4, None), (9 * 9 * 16 * 4, 1 << 10)):
            got = repair.fake_quant_tensor(x, lo, hi, chunk_bytes=chunk_bytes, keep_bytes=keep)  # whole, slices
            assert isinstance(got, np.ndarray) == (keep is not None)  # a tensor, unless larger than keep_bytes
            got = np.asarray(got)
            assert got.dtype == np.float32 and np.array_equal(got.view(np.int32), want.view(np.int32))
    assert repair.fake_quant_tensor(x, 0.0, 0.0) is x  # an empty range: unchanged
