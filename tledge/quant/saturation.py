"""Would this QDQ ONNX file saturate on an x86 CPU without VNNI?

onnxruntime's u8 x s8 convolution kernels for AVX2 / AVX-512 without VNNI multiply with `vpmaddubsw`:
two neighbouring products (u8 activation x s8 weight, neighbours along the reduction axis) are summed
into a SATURATING int16. With 8-bit weights and uint8 activations the pair sum reaches 2 x 255 x 127
= 64770, so the result depends on the CPU (issue 11: 0.948 vs 0.987 agreement for one file). VNNI
(`vpdpbusd`), ARM dot-product kernels and the u8u8 path sum in int32 and never saturate.

This module replays those pair sums in numpy on real calibration images - with the file's own uint8
activations and int8 weights - so a VNNI machine can check the non-VNNI path. Assumptions (MLAS):
the reduction axis of a convolution is im2col'ed as (kh, kw, cin) with cin fastest, pairs are
neighbouring elements of it; depthwise convolutions (group > 1) use 16-bit kernels and are skipped. A MatMul or
Gemm (a Dense layer) runs on the same u8 x s8 kernels, its reduction axis the weight's K: replayed too (a file
whose convolutions were float and whose Dense head saturated shipped as U8S8, unchecked).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tledge._deps import require
from tledge.quant import unfused

INT16_MAX = 32767
DENSE_HEADROOM = 3 * INT16_MAX // 4  # MatMul / Gemm pair sums counted as saturating above this (see check)


@dataclass(frozen=True)
class LayerSaturation:
    node: str
    weight: str  # the float weight initializer's name (a TensorQuantOverrides key)
    pairs: int
    saturated: int
    worst: int  # largest |pair sum|

    @property
    def rate(self) -> float:
        return self.saturated / max(1, self.pairs)


def _initializers(model) -> dict:
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def conv_inputs(model) -> list[tuple[object, str, np.ndarray, str]]:
    """(node, its uint8 input tensor, its int8 weight array, float weight name) for each QDQ convolution (group 1),
    MatMul or Gemm with u8 activations and s8 weights."""
    inits = _initializers(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    out = []
    for n in model.graph.node:
        if n.op_type not in ("Conv", "MatMul", "Gemm") or _attr(n, "group", 1) != 1 or \
                (n.op_type == "Gemm" and _attr(n, "transA", 0)):
            continue
        dx, dw = producer.get(n.input[0]), producer.get(n.input[1])
        if not (dx and dw and dx.op_type == dw.op_type == "DequantizeLinear"):
            continue
        w = inits.get(dw.input[0])
        if w is None or w.dtype != np.int8 or (n.op_type != "Conv" and w.ndim != 2):
            continue
        q = producer.get(dx.input[0])
        if dx.input[0] in inits or (q is not None and q.op_type != "QuantizeLinear"):
            continue
        zp = inits.get(dx.input[2]) if len(dx.input) > 2 else None
        if zp is not None and zp.dtype != np.uint8:
            continue
        name = dw.input[0][:-len("_quantized")] if dw.input[0].endswith("_quantized") else dw.input[0]
        out.append((n, dx.input[0], w, name))
    return out


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return a.i if a.type == 2 else list(a.ints)
    return default


def check(qdq_bytes: bytes, pixels: np.ndarray, *, images: int = 8, positions: int = 4096,
          seed: int = 0) -> list[LayerSaturation]:
    """Replay the u8 x s8 pair sums of every eligible convolution on `images` calibration images, and of every
    MatMul / Gemm on all of them."""
    onnx = require("onnx", extra="export")
    model = onnx.load_from_string(qdq_bytes)
    convs = conv_inputs(model)
    if not convs:
        return []
    sess = unfused.session(model, [t for _, t, _, _ in convs])
    names = sorted({t for n, t, _, _ in convs if n.op_type == "Conv"})
    dense = sorted({t for n, t, _, _ in convs if n.op_type != "Conv"})
    feed = sess.get_inputs()[0].name
    acts = dict(zip(names, sess.run(names, {feed: np.asarray(pixels[:images], np.float32)}))) if names else {}
    for i in range(0, len(pixels) if dense else 0, 16):  # a Dense layer has one row per image: every image
        for t, a in zip(dense, sess.run(dense, {feed: np.asarray(pixels[i:i + 16], np.float32)})):
            acts[t] = a if t not in acts else np.concatenate([acts[t], a])
    zps = _initializers(model)
    rng = np.random.default_rng(seed)
    res = []
    for node, t, w, wname in convs:
        dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == t)
        zp = int(zps[dq.input[2]].reshape(-1)[0]) if len(dq.input) > 2 else 0
        if node.op_type == "Conv":
            patches = _im2col(acts[t], w.shape[2:], node, zp, rng, positions)  # (P, K) uint8, K = (kh, kw, cin)
            wk = np.transpose(w, (0, 2, 3, 1)).reshape(w.shape[0], -1).astype(np.int32)  # (O, K)
        else:  # rows of the activation against the weight's columns (K, N), or its rows with Gemm's transB
            a = acts[t].reshape(-1, acts[t].shape[-1])
            patches = a[rng.permutation(len(a))[:positions]]
            wk = (w if node.op_type == "Gemm" and _attr(node, "transB", 0) else w.T).astype(np.int32)
            # a few hundred rows, not thousands of positions: 3/4 of int16 counts (the zoo's Dense head peaked at
            # 25023 on its calibration images and at 37328 on 3 of 153 others)
            res.append(pair_sums(node.name, wname, patches.astype(np.int32), wk, limit=DENSE_HEADROOM))
            continue
        res.append(pair_sums(node.name, wname, patches.astype(np.int32), wk))
    return res


def _im2col(x: np.ndarray, kernel, node, zp: int, rng, positions: int) -> np.ndarray:
    kh, kw = (int(k) for k in kernel)
    sh, sw = _attr(node, "strides", [1, 1])
    dh, dw = _attr(node, "dilations", [1, 1])
    pads = _attr(node, "pads", [0, 0, 0, 0])
    x = np.transpose(x, (0, 2, 3, 1))  # NHWC
    x = np.pad(x, ((0, 0), (pads[0], pads[2]), (pads[1], pads[3]), (0, 0)), constant_values=zp)
    n, h, wd, c = x.shape
    oh, ow = (h - dh * (kh - 1) - 1) // sh + 1, (wd - dw * (kw - 1) - 1) // sw + 1
    idx = rng.integers(0, n * oh * ow, min(positions, n * oh * ow))
    b, rem = np.divmod(idx, oh * ow)
    r, q = np.divmod(rem, ow)
    rows = [x[b, r * sh + i * dh, q * sw + j * dw, :] for i in range(kh) for j in range(kw)]
    return np.concatenate(rows, axis=1)


def pair_sums(node: str, weight: str, patches: np.ndarray, wk: np.ndarray, limit: int = INT16_MAX) -> LayerSaturation:
    k = patches.shape[1]
    if k % 2:  # the kernels pad the reduction axis with zeros
        patches = np.pad(patches, ((0, 0), (0, 1)))
        wk = np.pad(wk, ((0, 0), (0, 1)))
    xp = patches.reshape(len(patches), -1, 2)  # (P, K/2, 2)
    wp = wk.reshape(len(wk), -1, 2)  # (O, K/2, 2)
    saturated, worst, total = 0, 0, 0
    for o in range(0, len(wp), 16):  # bounded memory: P x 16 x K/2 at a time
        s = np.einsum("pkj,okj->pok", xp, wp[o:o + 16])
        a = np.abs(s)
        saturated += int(np.sum(a > limit))
        worst = max(worst, int(a.max()))
        total += s.size
    return LayerSaturation(node, weight, total, saturated, worst)
