"""Second moments of the rows a kernel multiplies, for the sequential weight repair (tledge.quant.repair).

`collect(layer, xq, xf)` walks the calibration images in chunks: `patches` turns a layer input into the
(G, M, d) rows its kernel multiplies (the order of `repair.to_groups`), `gram` forms [a,1]^T [b,1].
Issue 11: of the three products the repair used to form over every image (quantised x quantised,
quantised x float, float x float), the rounding and the bias correction need only the first and the
float rows' sums; the other two serve the logged per-layer errors, on a subsample.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tledge._deps import require


def patches(layer, x):
    """Layer input -> (G, M, d) rows the kernel multiplies (the order of repair.to_groups)."""
    tf = require("tensorflow")
    kind = type(layer).__name__
    if kind == "Dense":
        return x.reshape(1, -1, x.shape[-1])
    kh, kw = layer.kernel_size
    if (kh, kw) == (1, 1) and tuple(layer.strides) == (1, 1):
        p = x
    else:
        p = tf.image.extract_patches(x, [1, kh, kw, 1], [1, *layer.strides, 1], [1, *layer.dilation_rate, 1],
                                     layer.padding.upper()).numpy()
    if kind == "DepthwiseConv2D":
        return p.reshape(-1, kh * kw, x.shape[-1]).transpose(2, 0, 1)
    return p.reshape(1, -1, p.shape[-1])


@dataclass
class Moments:
    """Sums over the rows a kernel multiplies, [x, 1] with the bias row last (float64).

    `hqq` ([xq,1]^T [xq,1]) and `fsum` (sum of [xf,1]) cover every calibration image: the rounding
    and the bias correction need nothing else. `hqf`, `hff` and `sub_qq` (cross and float second
    moments, and hqq over the same images) cover the first `cross_images` images only unless the refit
    needs them in full: they serve the logged error figures, whose cost would otherwise be 2/3 of
    the pass (issue 11: the repair pass was most of an int8 export)."""

    hqq: np.ndarray
    fsum: np.ndarray
    hqf: np.ndarray
    hff: np.ndarray
    sub_qq: np.ndarray


def gram(a, b, sa, sb, n):
    """[a,1]^T [b,1] from a^T b, the column sums and the row count, without concatenating ones. One 2-D
    product per group: numpy's stacked matmul of a transposed view does not reach BLAS (3-25x slower).
    The products run in the rows' own float32 and are summed over chunks in float64 (`collect`): 2-4x
    faster than float64 BLAS, ~1e-6 relative error, well inside the GPTQ damping (1e-2 of the mean
    diagonal). `sa` / `sb` are float64 sums (they carry the bias correction's means)."""
    g = np.stack([ai.T @ bi for ai, bi in zip(a, b)]).astype(np.float64)
    top = np.concatenate([g, sa[:, :, None]], 2)
    bottom = np.concatenate([sb, np.full((len(sb), 1), float(n))], 1)[:, None, :]
    return np.concatenate([top, bottom], 1)


def collect(layer, xq, xf, *, cross_images: int | None = 32, budget=1 << 23) -> Moments:
    d = int(np.prod(layer.get_weights()[0].shape[:-1]))
    per_image = int(np.prod(xq.shape[1:-1])) if xq.ndim > 2 else 1
    step = max(1, budget // (per_image * d))
    cross_to = len(xq) if cross_images is None else max(1, min(cross_images, len(xq)))
    acc: dict[str, np.ndarray] = {}

    def add(key, value):
        acc[key] = value if key not in acc else acc[key] + value

    for i in range(0, len(xq), step):
        pq, pf = (patches(layer, a[i:i + step]) for a in (xq, xf))
        pq = np.ascontiguousarray(pq, dtype=np.float32)  # (a depthwise view is transposed: BLAS wants rows)
        n = pq.shape[1]
        sq, sf = pq.sum(1, dtype=np.float64), pf.sum(1, dtype=np.float64)
        qq = gram(pq, pq, sq, sq, n)
        add("hqq", qq)
        add("fsum", np.concatenate([sf, np.full((len(sf), 1), float(n))], 1))
        if i < cross_to:
            pf = np.ascontiguousarray(pf, dtype=np.float32)
            add("hqf", gram(pq, pf, sq, sf, n))
            add("hff", gram(pf, pf, sf, sf, n))
            add("sub_qq", qq)
    return Moments(**acc)
