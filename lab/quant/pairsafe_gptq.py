"""Pair-safe U8S8 weights chosen inside the repair's GPTQ, not re-rounded after it (lab; not in the export).

Measured (docs/int8-fidelity.md, "Pair-safe grids inside the repair's GPTQ"): as fast as the re-rounded file (0.62-0.86x
fp32 where u8u8-grid ran 0.94-1.19x), one answer on both x86 kernel paths, +6 of 765 val photos against u8u8-grid
over five MobileNet 0.25 heads but -10 of 6500 of the photos outside their task (re-rounding: -2 / -15), the held-out
seed -2 of 153: not adopted.

`lab.quant.pairsafe.make_safe` re-rounds a finished QDQ file: each output channel with a neighbouring same-sign pair
over the int16 bound of onnxruntime's AVX2 u8 x s8 kernels goes on a coarser grid AFTER the repair's GPTQ chose its
int8 values, so GPTQ's error feedback never sees the coarser rounding (docs/int8-fidelity.md, "Pair-safe U8S8
weights"). Here the repair's own pass (tledge.quant.repair.apply, unchanged) rounds every group-1 Conv2D and Dense
kernel on its final pair-safe grid:

- `grid_for`: which output channels qualify (a same-sign pair of the kernel's int8 nearest rounding, reduction
  order (kh, kw, cin) with cin fastest, the Keras kernel's own row order, over the bound with activations at 255:
  |w1| + |w2| > 128 for a Conv, 96 for a Dense, whose replay keeps 3/4 of int16, saturation.DENSE_HEADROOM) and how
  much coarser each gets (lab.quant.pairsafe.channel_growth: at most about 2x, ~7 bits for that channel);
- `solve`: tledge.quant.gptq.solve's loop on that grid, each row's rounding also clipped so its pair stays within the
  bound, the clipping compensated on the rows not yet rounded like any rounding error; channels left on the int8
  grid keep GPTQ's pin of their largest weight at +-127 (so nothing qualifying, and no pair reaching the bound,
  gives gptq.solve's result exactly). Layers the repair rounds to nearest (`repair.undersampled`) get the nearest
  rounding on the grid and lab.quant.pairsafe.shrink_pairs;
- `apply`: repair.apply with those two swapped in for the pass (moments.collect names the layer being solved;
  there is no hook in tledge/, and none is added for the lab), returning the grids chosen;
- `overrides` / `quantize`: the U8S8 file with every such weight's per-channel scale pinned (TensorQuantOverrides,
  int8 zero point 0), so onnxruntime's quantiser writes exactly the integers GPTQ chose (`carried` checks it).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lab.quant.pairsafe import channel_growth, shrink_pairs
from tledge.quant import gptq
from tledge.quant.kerasgraph import linear_kind
from tledge.quant.saturation import DENSE_HEADROOM, INT16_MAX

AMAX = 255  # every uint8 activation can reach it: the bound holds on any input
LIMITS = {"Conv2D": INT16_MAX, "Dense": DENSE_HEADROOM}


@dataclass(frozen=True)
class Grid:
    """One layer's per-output-channel weight grid."""

    kind: str  # Conv2D | Dense
    scale: np.ndarray  # (k,) the step (the file states it as float32)
    grow: np.ndarray  # (k,) the step over the int8 grid's max|w| / 127 (1: that grid)
    limit: int  # the pair bound: AMAX x (|w1| + |w2|) <= limit

    @property
    def coarser(self) -> int:
        return int(np.sum(self.grow > 1))


def grid_for(rows: np.ndarray, kind: str) -> Grid:
    """The grid of a (d, k) kernel (Keras row order, k output channels): the int8 grid's step, times
    channel_growth of its nearest int8 rounding where a pair (or, in a Dense, one weight) would pass the bound."""
    rows = np.asarray(rows, np.float64)
    step = np.abs(rows).max(axis=0) / float(gptq.QMAX)
    safe = np.where(step > 0, step, 1.0)
    ints = np.clip(np.rint(rows / safe), -gptq.QMAX, gptq.QMAX).T
    grow = channel_growth(ints, np.full(rows.shape[0], AMAX), LIMITS[kind])
    return Grid(kind, np.where(step > 0, step * grow, 1.0), grow, LIMITS[kind])


def _capped(q: np.ndarray, partner: np.ndarray | None, limit: int) -> np.ndarray:
    """Integers q (k,) clipped so that AMAX x (|partner| + |q|) <= limit where both have one sign."""
    if partner is None:
        return q
    room = (limit - AMAX * np.abs(partner)) // AMAX
    same = np.sign(q) * np.sign(partner) > 0
    return np.where(same & (np.abs(q) > room), np.sign(q) * room, q)


def solve(w: np.ndarray, h: np.ndarray, grid: Grid, damp: float, block: int = gptq.BLOCK) -> np.ndarray:
    """gptq.solve for one group (w (1, d, k) with the bias row last, h (1, d, d)) on `grid`, every pair
    (rows 2i, 2i+1) kept within its bound as it is rounded. Returns the new w (float64)."""
    _, D, _ = w.shape
    u = gptq.inverse_cholesky(gptq.damped(h, damp))
    top = np.abs(w[:, :-1]).argmax(axis=1)
    sign = np.sign(np.take_along_axis(w[:, :-1], top[:, None], 1))[:, 0]
    qmax = min(gptq.QMAX, grid.limit // AMAX)
    pin = (grid.grow <= 1.0)[None, :]
    w = np.array(w, dtype=np.float64, copy=True)
    s = grid.scale[None, :]
    ints = np.zeros((1, D - 1, w.shape[2]))
    for b in range(0, D - 1, block):
        e = min(b + block, D - 1)
        errs = np.empty((1, e - b, w.shape[2]))
        for i in range(b, e):
            col = w[:, i]
            q = np.clip(np.rint(col / s), -qmax, qmax)
            q = np.where((top == i) & pin, qmax * sign, q)
            q = _capped(q, ints[:, i - 1] if i % 2 else None, grid.limit)
            ints[:, i] = q
            err = (col - q * s) / u[:, i, i][:, None]
            w[:, i + 1:e] -= u[:, i, i + 1:e, None] * err[:, None, :]
            w[:, i] = q * s
            errs[:, i - b] = err
        if e < D:
            w[0, e:] -= u[0, b:e, e:].T @ errs[0]
    return w


def nearest(rows: np.ndarray, grid: Grid) -> np.ndarray:
    """(1, d, k) kernel rows rounded to nearest on `grid`, pairs over the bound shrunk (pairsafe.shrink_pairs)."""
    qmax = min(gptq.QMAX, grid.limit // AMAX)
    q = np.clip(np.rint(rows[0] / grid.scale), -qmax, qmax).T.astype(np.int64)
    q = shrink_pairs(q, np.full(q.shape[1], AMAX), grid.limit)
    return (q.T * grid.scale)[None]


@contextlib.contextmanager
def _pair_safe_pass(grids: dict):
    """Within: tledge.quant.repair's pass rounds each group-1 Conv2D / Dense kernel with `solve` / `nearest` on
    `grid_for` its float kernel (recorded in `grids` by layer name); depthwise kernels as before."""
    from tledge.quant import moments, repair

    saved = moments.collect, gptq.solve, repair.round_nearest
    current: dict = {}

    def collect(layer, *args, **kwargs):
        current["op"] = layer
        return saved[0](layer, *args, **kwargs)

    def grid_of(rows):
        op = current.get("op")
        kind = linear_kind(op) if op is not None else None
        if kind not in LIMITS or rows.shape[0] != 1:
            return None
        if op.name not in grids:
            grids[op.name] = grid_for(rows[0], kind)
        return grids[op.name]

    def solve_here(w, h, scale, damp, block=gptq.BLOCK):
        grid = grid_of(w[:, :-1])
        return saved[1](w, h, scale, damp, block) if grid is None else solve(w, h, grid, damp, block)

    def nearest_here(mats, scale):
        grid = grid_of(mats)
        return saved[2](mats, scale) if grid is None else nearest(mats, grid)

    moments.collect, gptq.solve, repair.round_nearest = collect, solve_here, nearest_here
    try:
        yield
    finally:
        moments.collect, gptq.solve, repair.round_nearest = saved


def apply(model, calib, *, stem: int = 6, **kwargs):
    """repair.apply (same arguments) with pair-safe grids for group-1 Conv2D and Dense kernels.
    Returns (repaired model, RepairLog, {layer name: Grid})."""
    from tledge.quant import repair

    grids: dict = {}
    with _pair_safe_pass(grids):
        fixed, log = repair.apply(model, calib, stem=stem, **kwargs)
    return fixed, log, grids


def layer_ints(model, grids: dict) -> dict:
    """{layer name: (d, k) int64} the integers of each gridded kernel of the repaired model (kernel / scale)."""
    out = {}
    for name, grid in grids.items():
        k = model.get_layer(name).get_weights()[0]
        rows = k.reshape(-1, k.shape[-1]).astype(np.float64) / grid.scale
        out[name] = np.rint(rows).astype(np.int64)
        if np.abs(rows - out[name]).max() > 1e-3:
            raise ValueError(f"{name}: the kernel is not on its grid")
    return out


def _weights(onnx_model):
    """(node, weight initializer name, (d, k) float rows in Keras order, channel axis) of each Conv (group 1),
    Gemm and MatMul with a float initializer weight."""
    from onnx import numpy_helper

    inits = {i.name: i for i in onnx_model.graph.initializer}
    for n in onnx_model.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2 or n.input[1] not in inits:
            continue
        attrs = {a.name: a for a in n.attribute}
        if n.op_type == "Conv" and "group" in attrs and attrs["group"].i != 1:
            continue
        w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float64)
        if n.op_type == "Conv":
            yield n, n.input[1], np.transpose(w, (2, 3, 1, 0)).reshape(-1, w.shape[0]), 0
        elif w.ndim == 2:
            trans = n.op_type == "Gemm" and "transB" in attrs and attrs["transB"].i
            yield n, n.input[1], (w.T if trans else w), 0 if trans else 1


def match(onnx_model, model, grids: dict) -> dict:
    """{weight initializer name: layer name}: the gridded layers whose kernel the ONNX weight holds."""
    ints = layer_ints(model, grids)
    out = {}
    for _, name, rows, _ in _weights(onnx_model):
        for layer, q in ints.items():
            if q.shape == rows.shape and np.allclose(rows, q * grids[layer].scale, rtol=0,
                                                     atol=1e-6 * max(1e-12, float(np.abs(rows).max()))):
                out[name] = layer
                break
    return out


def overrides(onnx_model, model, grids: dict) -> dict:
    """TensorQuantOverrides pinning each gridded weight of the (pre-processed) float ONNX graph to its grid: per
    channel, int8 zero point 0."""
    axes = {name: axis for _, name, _, axis in _weights(onnx_model)}
    return {name: [{"axis": axes[name], "scale": np.float32(s), "zero_point": np.int8(0)}
                   for s in grids[layer].scale]
            for name, layer in match(onnx_model, model, grids).items()}


def quantize(fp32: Path, dst: Path, calib: np.ndarray, model, grids: dict, exclude=()) -> dict:
    """The U8S8 QDQ file of the repaired float graph `fp32` (tledge.export.onnx.quantize_int8, scheme u8s8) with the
    gridded weights pinned. Returns {weight initializer: layer name} pinned."""
    import tempfile

    import onnx

    from tledge.export import onnx as onnx_export

    with tempfile.TemporaryDirectory(prefix="tledge-psgptq-") as tmp:
        pre = onnx.load(str(onnx_export.preprocess(Path(fp32), Path(tmp) / "pre.onnx")))
    pinned = overrides(pre, model, grids)
    onnx_export.quantize_int8(Path(fp32), Path(dst), calib, nodes_to_exclude=exclude,
                              scheme=onnx_export.SCHEMES["u8s8"], overrides=pinned)
    found = match(pre, model, grids)
    dead = {name: int(np.sum(g.scale < 1e-9 * g.scale.max())) for name, g in grids.items()}
    wrong = {layer: n for layer, (n, _) in carried(Path(dst).read_bytes(), model, grids, found).items()
             if n > dead[layer]}
    if wrong:  # (a channel of weights ~1e-12 gets onnxruntime's floored scale: zeros, harmless)
        raise ValueError(f"the file does not carry the repair's integers: {wrong}")
    return found


def carried(qdq_bytes: bytes, model, grids: dict, pinned: dict) -> dict:
    """{layer name: (output channels whose int8 weights in the QDQ file are not the repair's integers, channels whose
    scale is not the grid's to 1e-6)} for each pinned weight ({float weight name: layer}, `quantize`'s). (onnxruntime
    floors a scale: a dead channel's weights of 1e-12 are written as zeros on a larger step, both counts 1.)"""
    import onnx
    from onnx import numpy_helper

    from tledge.quant.saturation import conv_inputs

    m = onnx.load_from_string(qdq_bytes)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    ints = layer_ints(model, grids)
    out = {}
    for node, _, w, wname in conv_inputs(m):
        layer = pinned.get(wname)
        if layer is None:
            continue
        trans = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
        rows = np.transpose(w, (2, 3, 1, 0)).reshape(-1, w.shape[0]) if node.op_type == "Conv" else \
            (w.T if trans else w)
        scale = inits[producer[node.input[1]].input[1]].astype(np.float64)
        out[layer] = (int(np.any(rows.astype(np.int64) != ints[layer], axis=0).sum()),
                      int(np.sum(np.abs(scale / grids[layer].scale - 1) > 1e-6)))
    return out
