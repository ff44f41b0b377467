"""Second moments of the rows a kernel multiplies, for the sequential weight repair (tledge.quant.repair).

`collect(layer, xq, xf)` walks the calibration images in chunks: `patches` turns a layer input into the
(G, M, d) rows its kernel multiplies (the order of `repair.to_groups`), whose products [a,1]^T [b,1] are
summed; stride-1 'same' convolutions skip the patches (`shift_gram`: ~3x fewer operations, the same
sums to float64 rounding; ResNet50's 3x3 convolutions were most of its repair pass), and so do stride-1 'same'
depthwise ones (`depthwise_shift_gram`: 13 channel-wise products for a 3x3 kernel instead of 45).
Issue 11: of the three products the repair used to form over every image (quantised x quantised,
quantised x float, float x float), the rounding and the bias correction need only the first and the
float rows' sums; the other two serve the logged per-layer errors, on a subsample.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tledge._deps import require


@dataclass(frozen=True)
class Geometry:
    """What the moments need of a linear layer: a Keras layer (`geometry(layer)`) or a converted file's op
    (tledge.quant.tflite_rounding) gives one."""

    kind: str  # "Conv2D", "DepthwiseConv2D" or "Dense" (the Keras names: repair.to_groups' layouts)
    kernel_size: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    dilation_rate: tuple[int, int] = (1, 1)
    padding: str = "valid"  # "same" / "valid", TensorFlow's meaning (extra bottom/right pad on odd totals)
    rows: int = 0  # kernel rows: the product of the kernel's shape but its last axis
    groups: int = 1


def geometry(layer) -> Geometry:
    """A Keras Conv2D / DepthwiseConv2D / Dense layer's Geometry (a Geometry is returned as it is)."""
    if isinstance(layer, Geometry):
        return layer
    kind = type(layer).__name__
    rows = int(np.prod(layer.get_weights()[0].shape[:-1]))
    if kind == "Dense":
        return Geometry(kind, rows=rows)
    return Geometry(kind, tuple(layer.kernel_size), tuple(layer.strides), tuple(layer.dilation_rate),
                    layer.padding, rows, getattr(layer, "groups", 1))


def patches(layer, x):
    """Layer input -> (G, M, d) rows the kernel multiplies (the order of repair.to_groups)."""
    g = geometry(layer)
    if g.kind == "Dense":
        return x.reshape(1, -1, x.shape[-1])
    kh, kw = g.kernel_size
    if (kh, kw) == (1, 1) and tuple(g.strides) == (1, 1):
        p = x
    else:
        tf = require("tensorflow")
        p = tf.image.extract_patches(x, [1, kh, kw, 1], [1, *g.strides, 1], [1, *g.dilation_rate, 1],
                                     g.padding.upper()).numpy()
    if g.kind == "DepthwiseConv2D":
        return p.reshape(-1, kh * kw, x.shape[-1]).transpose(2, 0, 1)
    return p.reshape(1, -1, p.shape[-1])


@dataclass
class Moments:
    """Sums over the rows a kernel multiplies, [x, 1] with the bias row last (float64).

    `hqq` ([xq,1]^T [xq,1]) and `fsum` (sum of [xf,1]) cover every calibration image: the rounding
    and the bias correction need nothing else. `hqf`, `hff` and `sub_qq` (cross and float second
    moments, and hqq over the same images) cover the first `cross_images` images only (all with
    `cross_images=None`): they serve the logged error figures, whose cost would otherwise be 2/3 of
    the pass (issue 11: the repair pass was most of an int8 export); None with `cross_images=0` (the
    export's rungs do not read the errors)."""

    hqq: np.ndarray
    fsum: np.ndarray
    hqf: np.ndarray | None
    hff: np.ndarray | None
    sub_qq: np.ndarray | None


def _add(acc, key, g, sa, sb, n):
    """acc[key] += [a,1]^T [b,1] given a^T b (G, d, e), the sums and the row count (in place)."""
    if key not in acc:
        acc[key] = np.zeros((g.shape[0], g.shape[1] + 1, g.shape[2] + 1))
    h = acc[key]
    h[:, :-1, :-1] += g
    h[:, :-1, -1] += sa
    h[:, -1, :-1] += sb
    h[:, -1, -1] += n


def _shifted_patches(g: Geometry) -> bool:
    kh, kw = g.kernel_size
    return (tuple(g.strides) == (1, 1) and kh % 2 == 1 and kw % 2 == 1
            and tuple(g.dilation_rate) == (1, 1) and g.padding == "same" and g.groups == 1
            and (kh, kw) != (1, 1))


def shift_conv(layer) -> bool:
    """A Conv2D whose patches are shifts of its input: stride 1, no dilation, 'same' padding, odd kernel."""
    g = geometry(layer)
    return g.kind == "Conv2D" and _shifted_patches(g)


def shift_depthwise(layer) -> bool:
    """The same for a DepthwiseConv2D (MobileNet's stride-1 depthwise layers)."""
    g = geometry(layer)
    return g.kind == "DepthwiseConv2D" and _shifted_patches(g)


def _excluded(valid, lo, hi):
    """The part of the interval `valid` outside [lo, hi) (one side at most: both have the image's
    length, shifted by at most the kernel's reach), or None."""
    if lo > valid[0]:
        return valid[0], min(lo, valid[1])
    if hi < valid[1]:
        return max(hi, valid[0]), valid[1]
    return None


def shift_blocks(a, b, kernel_size, channelwise=False):
    """The blocks of the patch gram of a stride-1 'same' convolution from its inputs a, b (N, H, W, C), without
    forming the patches: yields (u, v, block) for kernel offsets u, v ((row, column) pairs) with block =
    sum over positions q of a[q + u]^T b[q + v] (C x C; channelwise: the per-channel products, (C,)).
    Block (u, u + s) sums a[r]^T b[r + s] over the positions r its window sees; every window of one shift s
    covers the same positions (those where both r and r + s lie in the image) but for a strip of at most the
    kernel's reach at one border per axis. So one product over the whole image per shift, minus thin border
    products, serves all the offset pairs with that shift: 25 products for a 3x3 kernel (13 when a is b)
    instead of 81 (45). When a is b only the pairs with shift >= (0, 0) are yielded: the others are their
    transposes. float64."""
    n_, h_, w_, c = a.shape
    kh, kw = kernel_size
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    same = a is b
    a = np.asarray(a, np.float64)
    b = a if same else np.asarray(b, np.float64)
    for sy in range(-(kh - 1), kh):
        for sx in range(-(kw - 1), kw):
            if same and (sy, sx) < (0, 0):
                continue  # the transpose of shift (-sy, -sx)
            vy, vx = (max(0, -sy), min(h_, h_ - sy)), (max(0, -sx), min(w_, w_ - sx))
            if vy[0] >= vy[1] or vx[0] >= vx[1]:
                continue  # no position sees both offsets
            rect = _RectSums(a, b, (sy, sx), same and (sy, sx) == (0, 0), channelwise)
            full = rect(vy, vx)
            for uy in range(max(0, -sy), min(kh, kh - sy)):
                ey = _excluded(vy, uy - ph, uy - ph + h_)
                for ux in range(max(0, -sx), min(kw, kw - sx)):
                    ex = _excluded(vx, ux - pw, ux - pw + w_)
                    block = full
                    if ey is not None:
                        block = block - rect(ey, vx)
                    if ex is not None:
                        block = block - rect(vy, ex)
                    if ey is not None and ex is not None:
                        block = block + rect(ey, ex)
                    yield (uy, ux), (uy + sy, ux + sx), block


def shift_gram(a, b, kernel_size):
    """Patches^T patches of a stride-1 'same' convolution (`shift_blocks`): about 3x fewer operations than
    the patch product and no 9x patch copy. Returns (d, d) in extract_patches order (row, column, channel)."""
    kh, kw = kernel_size
    c = a.shape[-1]
    out = np.zeros((kh, kw, c, kh, kw, c))
    for u, v, block in shift_blocks(a, b, kernel_size):
        out[u[0], u[1], :, v[0], v[1]] = block
        if a is b and u != v:
            out[v[0], v[1], :, u[0], u[1]] = block.T
    d = kh * kw * c
    return out.reshape(d, d)


def depthwise_shift_gram(a, b, kernel_size):
    """Per-channel patch grams (C, k, k) of a stride-1 'same' depthwise convolution (`shift_blocks`,
    channelwise): 13 channel-wise product-sums over the image for a 3x3 kernel instead of 45 over strided
    views of a padded copy."""
    kh, kw = kernel_size
    out = np.zeros((a.shape[-1], kh * kw, kh * kw))
    for u, v, block in shift_blocks(a, b, kernel_size, channelwise=True):
        i, j = u[0] * kw + u[1], v[0] * kw + v[1]
        out[:, i, j] = block
        if a is b:
            out[:, j, i] = block
    return out


def row_patches(x, kw):
    """(N, H, W, C) -> (N, H, W, kw C) float64: each position's kw horizontal neighbours ('same' zero
    padding), channels in (column, channel) order."""
    n_, h_, w_, c = x.shape
    pw = (kw - 1) // 2
    out = np.zeros((n_, h_, w_, kw, c))
    for ux in range(kw):
        lo, hi = max(0, pw - ux), min(w_, w_ + pw - ux)
        out[:, :, lo:hi, ux] = x[:, :, lo + ux - pw:hi + ux - pw]
    return out.reshape(n_, h_, w_, kw * c)


NARROW = 128  # inputs with fewer channels: row patches first (C x C products are too thin for BLAS)


def conv_gram(a, b, kernel_size):
    """shift_gram; for narrow inputs on row patches with vertical shifts only (45 instead of 25 C^2
    products per row, but kw C wide ones)."""
    kh, kw = kernel_size
    if a.shape[-1] >= NARROW or kw == 1:
        return shift_gram(a, b, kernel_size)
    ra = row_patches(a, kw)
    return shift_gram(ra, ra if b is a else row_patches(b, kw), (kh, 1))


class _RectSums:
    """sum of a[q]^T b[q + shift] over a rectangle of q, each rectangle formed once."""

    def __init__(self, a, b, shift, symmetric, channelwise=False):
        self.a, self.b, self.shift, self.symmetric, self.sums = a, b, shift, symmetric, {}
        self.channelwise = channelwise

    def __call__(self, ry, rx):
        if (ry, rx) not in self.sums:
            (sy, sx), c = self.shift, self.a.shape[-1]
            ta = self.a[:, ry[0]:ry[1], rx[0]:rx[1]]
            tb = ta if self.symmetric else self.b[:, ry[0] + sy:ry[1] + sy, rx[0] + sx:rx[1] + sx]
            if self.channelwise:  # on the strided views: no copy
                self.sums[ry, rx] = np.einsum("nhwc,nhwc->c", ta, tb)
            else:
                ta = ta.reshape(-1, c)
                tb = ta if self.symmetric else tb.reshape(-1, c)
                self.sums[ry, rx] = ta.T @ tb  # (a^T a goes to BLAS syrk)
        return self.sums[ry, rx]


def window_sums(x, kernel_size):
    """Column sums of the patches of a stride-1 'same' convolution: (d,) float64."""
    n_, h_, w_, c = x.shape
    kh, kw = kernel_size
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    image = x.sum(0, dtype=np.float64)  # over the images first: the windows' strided sums are then N x smaller
    out = np.empty((kh, kw, c))
    for uy in range(kh):
        for ux in range(kw):
            sl = image[max(uy - ph, 0):min(uy - ph + h_, h_), max(ux - pw, 0):min(ux - pw + w_, w_)]
            out[uy, ux] = sl.sum((0, 1))
    return out.reshape(-1)


def tf_pad(size: int, k: int, stride: int, dilation: int, padding: str) -> tuple[int, int, int]:
    """(output size, pad before, pad after) of one axis, TensorFlow's rule ('same': the extra pad after; also
    TFLite's SAME, tledge.quant.tflite_bias)."""
    reach = (k - 1) * dilation + 1
    if padding == "same":
        out = -(-size // stride)
        total = max((out - 1) * stride + reach - size, 0)
        return out, total // 2, total - total // 2
    return (size - reach) // stride + 1, 0, 0


def window_views(x, g: Geometry) -> list:
    """The kernel offsets' strided views of the padded input (N, H', W', C) float64, in the order of
    `patches`' rows (kernel row, kernel column): view u at output position q is the input tap u of q."""
    (kh, kw), (sh, sw), (dh, dw) = g.kernel_size, g.strides, g.dilation_rate
    oh, th, bh = tf_pad(x.shape[1], kh, sh, dh, g.padding)
    ow, tw, bw = tf_pad(x.shape[2], kw, sw, dw, g.padding)
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (th, bh), (tw, bw), (0, 0)))
    return [xp[:, uy * dh:uy * dh + (oh - 1) * sh + 1:sh, ux * dw:ux * dw + (ow - 1) * sw + 1:sw]
            for uy in range(kh) for ux in range(kw)]


def depthwise_gram(va: list, vb: list, same: bool) -> np.ndarray:
    """Per-channel patch grams of a depthwise convolution from `window_views` (C, k, k): one channel-wise
    product-sum per pair of kernel offsets, instead of a 9x patch copy transposed to channel-major (10x
    faster on MobileNet's first depthwise layers; the same sums to float64 rounding)."""
    k = len(va)
    out = np.empty((va[0].shape[-1], k, k))
    for u in range(k):
        for v in range(u if same else 0, k):
            out[:, u, v] = np.einsum("nhwc,nhwc->c", va[u], vb[v])
            if same:
                out[:, v, u] = out[:, u, v]
    return out


def _depthwise_grams(g: Geometry, xq, xf, cross: bool) -> dict:
    if shift_depthwise(g):
        xq, xf = np.asarray(xq, np.float64), np.asarray(xf, np.float64)  # once for every product
        k = g.kernel_size
        n = int(np.prod(xq.shape[:3]))
        sq, sf = (window_sums(x, k).reshape(-1, x.shape[-1]).T for x in (xq, xf))
        grams = {"hqq": (xq, xq), "hqf": (xq, xf), "hff": (xf, xf)}
        grams = {key: depthwise_shift_gram(a, b, k) for key, (a, b) in grams.items() if cross or key == "hqq"}
    else:
        vq, vf = window_views(xq, g), window_views(xf, g)
        n = int(np.prod(vq[0].shape[:3]))
        sq = np.stack([v.sum((0, 1, 2)) for v in vq], 1)  # (C, k)
        sf = np.stack([v.sum((0, 1, 2)) for v in vf], 1)
        grams = {"hqq": depthwise_gram(vq, vq, True)}
        if cross:
            grams.update(hqf=depthwise_gram(vq, vf, False), hff=depthwise_gram(vf, vf, True))
    sums = {"hqq": (sq, sq), "hqf": (sq, sf), "hff": (sf, sf)}
    return {"fsum": sf, **{key: (gram, *sums[key], n) for key, gram in grams.items()}}


def _chunk_grams(layer, xq, xf, cross: bool) -> dict:
    """The chunk's products: {key: (a^T b (G, d, e), sums of a, sums of b, rows)} and its float sums."""
    if geometry(layer).kind == "DepthwiseConv2D":
        return _depthwise_grams(geometry(layer), xq, xf, cross)
    if shift_conv(layer):
        k = tuple(layer.kernel_size)
        n = int(np.prod(xq.shape[:3]))
        sq, sf = window_sums(xq, k)[None], window_sums(xf, k)[None]
        out = {"hqq": (conv_gram(xq, xq, k)[None], sq, sq, n), "fsum": sf}
        if cross:
            out["hqf"] = (conv_gram(xq, xf, k)[None], sq, sf, n)
            out["hff"] = (conv_gram(xf, xf, k)[None], sf, sf, n)
        return out
    pq, pf = patches(layer, xq), patches(layer, xf)
    pq = np.ascontiguousarray(pq, dtype=np.float64)  # (a depthwise view is transposed: BLAS wants rows)
    n = pq.shape[1]
    sq, sf = pq.sum(1), pf.sum(1, dtype=np.float64)
    out = {"hqq": (np.stack([p.T @ p for p in pq]), sq, sq, n), "fsum": sf}
    if cross:  # one 2-D product per group: numpy's stacked matmul of a transposed view does not reach BLAS
        pf = np.ascontiguousarray(pf, dtype=np.float64)
        out["hqf"] = (np.stack([p.T @ r for p, r in zip(pq, pf)]), sq, sf, n)
        out["hff"] = (np.stack([p.T @ p for p in pf]), sf, sf, n)
    return out


def collect(layer, xq, xf, *, cross_images: int | None = 32, budget=1 << 23) -> Moments:
    """Moments of one layer (a Keras layer or a Geometry) over the calibration set, in chunks of about `budget`
    float64 elements (patches, or inputs for the shift grams). `cross_images`: how many first images the cross
    moments cover (None: all; 0: none, the fields are None and the logged errors are not computed)."""
    layer = geometry(layer)
    d = layer.rows
    per_image = int(np.prod(xq.shape[1:-1])) if xq.ndim > 2 else 1
    step = max(1, budget // (per_image * d))
    # the images the cross moments cover: whole chunks of `step`, as before the shift gram
    cross_n = len(xq) if cross_images is None else min(len(xq), -(-cross_images // step) * step)
    if shift_conv(layer):  # no patch copy: chunks of inputs (row patches: kw x wider)
        width = int(xq.shape[-1])
        step = max(1, budget // (per_image * width * (layer.kernel_size[1] if width < NARROW else 1)))
    elif shift_depthwise(layer):  # chunks of float64 inputs
        step = max(1, budget // (per_image * int(xq.shape[-1])))
    bounds = [(i, min(i + step, cross_n)) for i in range(0, cross_n, step)]
    bounds += [(i, min(i + step, len(xq))) for i in range(cross_n, len(xq), step)]
    acc: dict[str, np.ndarray] = {}
    for lo, hi in bounds:
        grams = _chunk_grams(layer, xq[lo:hi], xf[lo:hi], cross=lo < cross_n)
        n = grams["hqq"][3]
        _add(acc, "hqq", *grams["hqq"])
        sf = np.concatenate([grams["fsum"], np.full((len(grams["fsum"]), 1), float(n))], 1)
        acc["fsum"] = sf if "fsum" not in acc else acc["fsum"] + sf
        if lo < cross_n:
            _add(acc, "hqf", *grams["hqf"])
            _add(acc, "hff", *grams["hff"])
            _add(acc, "sub_qq", *grams["hqq"])
    return Moments(acc["hqq"], acc["fsum"], acc.get("hqf"), acc.get("hff"), acc.get("sub_qq"))
