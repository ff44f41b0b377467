"""Adaptive rounding of a layer's kernel on the int8 grid (GPTQ / OBQ), for tledge.quant.repair.

`solve(w, h, scale, damp)`: w (G, d, k) holds G independent groups of d-1 kernel rows and the bias row
last, h (G, d, d) the second moments of the rows they multiply ([x, 1]^T [x, 1]). Rows 0..d-2 are
rounded in order, each rounding error compensated on the rows not yet rounded through the upper
Cholesky factor U of h^-1 (Frantar et al. 2022, "GPTQ", Algorithm 1); the bias row stays free.

The lazy-batch form: rank-1 updates only inside a block of `block` rows, one matrix product per block
for the rows after it. It is the row-by-row algorithm re-associated (tests/test_gptq.py checks it
against the plain loop), but memory traffic drops from O(d^2 k) passes over the whole kernel to
O(d k) per block (ResNet50's 3x3x512 convolutions: d = 4609). U comes from one Cholesky of the
row-reversed h and a blocked triangular inverse (2/3 d^3 flops) instead of inv + Cholesky (3 d^3).
"""
from __future__ import annotations

import numpy as np

QMAX = 127  # the symmetric int8 weight limit of the converters' per-channel grid (lab: benchmarks/weight_bits.py widens it)
BLOCK = 128  # rows per lazy batch (the paper's choice; 64..256 measure alike)
_BASE = 64  # triangular inverse: below this size, numpy's inv


def damped(h, damp):
    """h plus damp x its mean diagonal on the diagonal; a dead input (zero diagonal) gets 1 more."""
    h = np.array(h, dtype=np.float64, copy=True)
    d = h.shape[1]
    diag = np.einsum("gii->gi", h)
    dead = diag <= 0
    h[:, np.arange(d), np.arange(d)] += damp * diag.mean(axis=1, keepdims=True) + dead
    return h


def _inv_upper(r):
    """Inverse of an upper-triangular (G, n, n) array by blocks: [[A, B], [0, C]]^-1 =
    [[A^-1, -A^-1 B C^-1], [0, C^-1]]."""
    n = r.shape[1]
    if n <= _BASE:
        return np.triu(np.linalg.inv(r))
    m = n // 2
    ai, ci = _inv_upper(r[:, :m, :m]), _inv_upper(r[:, m:, m:])
    out = np.zeros_like(r)
    out[:, :m, :m], out[:, m:, m:] = ai, ci
    out[:, :m, m:] = -np.matmul(np.matmul(ai, r[:, :m, m:]), ci)
    return out


def inverse_cholesky(h):
    """Upper U with U^T U = h^-1 (h symmetric positive definite, (G, n, n)): the transpose of
    cholesky(inv(h)). With J the row reversal, J h J = M M^T gives h = R R^T for the upper R = J M J,
    so h^-1 = R^-T R^-1 and U = R^-1 (the Cholesky factor is unique)."""
    m = np.linalg.cholesky(h[:, ::-1, ::-1])
    return _inv_upper(np.ascontiguousarray(m[:, ::-1, ::-1]))


def solve(w, h, scale, damp, block=BLOCK):
    """Round rows 0..d-2 of w (G, d, k) to the grid `scale` (G, 1, k), compensating later rows (see the
    module doc); the last row (bias) stays free. The largest element of each channel goes to +-127
    exactly, so the converters re-derive the same scale. Returns the new w (float64)."""
    G, D, _ = w.shape
    u = inverse_cholesky(damped(h, damp))
    top = np.abs(w[:, :-1]).argmax(axis=1)  # (G, k) the row holding each channel's extreme
    sign = np.sign(np.take_along_axis(w[:, :-1], top[:, None], 1))[:, 0]
    w = np.array(w, dtype=np.float64, copy=True)
    s = scale[:, 0]
    safe = np.where(s > 0, s, 1.0)
    for b in range(0, D - 1, block):
        e = min(b + block, D - 1)
        errs = np.empty((G, e - b, w.shape[2]))
        for i in range(b, e):
            col = w[:, i]
            q = np.clip(np.round(col / safe), -QMAX, QMAX)
            q = np.where(top == i, QMAX * sign, q) * s
            err = (col - q) / u[:, i, i][:, None]
            w[:, i + 1:e] -= u[:, i, i + 1:e, None] * err[:, None, :]
            w[:, i] = q
            errs[:, i - b] = err
        if e < D:  # the rows after the block, the bias row included: one product
            if G == 1:  # a 2-D product of a transposed view goes to BLAS; a stacked one may not
                w[0, e:] -= u[0, b:e, e:].T @ errs[0]
            else:
                w[:, e:] -= np.matmul(u[:, b:e, e:].transpose(0, 2, 1), errs)
    return w
