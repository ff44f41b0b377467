"""Sensitivity-driven mixed precision (issue 11): which activations to keep at high precision.

Measured on the converted graph, so it works whatever loaded the model: the float ONNX graph is
quantised once on a FIT split of the calibration images, and on the HELD-OUT split (never the
parity/val images) each quantised activation's QuantizeLinear/DequantizeLinear pair is replaced by
a Clip to its range, alone (leave-one-out from the all-int8 graph, run unfused: a simulation of the
file). The score is what reaches the OUTPUT: the change of the reference's (the original model's float
graph) top-1 vs runner-up log-probability margin.
Its distribution gives the expected top-1 agreement, E = 1 - mean_i Phi(-(m_i + mu) / s) (m_i the
float margin of image i, mu / s the mean / std of the margin error), which tracks agreement without
needing flips among a few dozen held-out images. A candidate's gain is how much the margin error
variance drops when it alone stays high precision.

Greedy choice (`choose`): best gain per unit of float cost first (cost: multiply-adds of the
non-depthwise linear ops that stop running int8; thin early layers and depthwise ones are nearly
free, and measured no slower in float on x86, docs/int8-fidelity.md), re-measured after each step,
until E reaches the aim or the cost / count budget is spent.

Candidates (tledge.quant.qdqgraph): the single units that feed a linear op (role groups, every unit of one
structural role as ONE candidate, were measured and are not a gain that generalises: lab/quant/role_groups.py,
on `rank` and `greedy`). Leave-one-out costs one graph run per candidate; a deep model has hundreds of units, so
they are first ranked by a cheap proxy (`local_noise`: each tensor's own rounding noise-to-signal ratio, one run)
and only the `max_trials` noisiest are measured.

A unit is an activation tensor plus the pass-through tensors after it (Pad, Reshape: same grid).
Keeping it precise means, in the files:
- ONNX (`onnx_overrides`): the tensors get int16 QDQ (TensorQuantOverrides); onnxruntime has no
  int16 Conv kernel, so its producer and consumers run in float on int8 weights. Where an int8-weight
  Conv writes or reads one, quantize_int8 writes it float, a Clip to the int16 range (what `bypass`
  simulates; OpenCV 5.1 refused or miscomputed the int16 pair: tledge.quant.int16convs). Excluding a node
  instead (`nodes_to_exclude`) does not work mid-graph: onnxruntime re-quantises an excluded Conv's
  float weights per tensor at load (WeightBiasQuantization).
- TFLite (`tflite_keep_float`): its producer and consumers are denylisted (float ops), matched by
  the Keras layer name both graphs carry in their tensor names.
Int8-only targets (Edge TPU) must not use this (tledge.quant.registry: all_int8=False).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from tledge._deps import require
from tledge.errors import RepairTimeout
from tledge.quant import unfused
from tledge.quant.qdqgraph import LINEAR, PASS_THROUGH, Candidate, bypass, candidates, layer_of, macs_per_node

# singles measured by leave-one-out at most: MobileNet v1 has 27-28 (all measured, as before); on
# EfficientNetB0's 82, 16 and 40 chose alike (held-out E 0.970 / 0.971) in 39 / 69 graphs (docs)
MAX_TRIALS = 32

__all__ = ["LINEAR", "PASS_THROUGH", "Candidate", "Evaluator", "Score", "Selection", "bypass", "candidates", "choose",
           "greedy", "layer_of", "local_noise", "onnx_overrides", "rank", "run", "select", "split", "tflite_keep_float"]


@dataclass
class Score:
    agreement: float  # held-out top-1 agreement with the float graph
    expected: float  # expected top-1 agreement from the margin-error distribution
    margin_rmse: float  # RMS change of the float top-1 vs runner-up log-probability margin
    of: str = "top-1"  # what agrees: "top-1", or "label sets" (independent scores: each label's log-odds margin)

    def text(self) -> str:
        kind = "" if self.of == "top-1" else f"{self.of} "
        return (f"{kind}agreement {self.agreement:.3f}, expected {self.expected:.4f}, "
                f"margin rmse {self.margin_rmse:.4f}")


@dataclass
class Selection:
    layers: list[str] = field(default_factory=list)  # chosen, in order of choice (a group's members)
    choices: list[str] = field(default_factory=list)  # chosen candidates (a group counts once)
    tensors: list[str] = field(default_factory=list)
    all_layers: list[str] = field(default_factory=list)  # every candidate, graph order
    ranked: list[Candidate] = field(default_factory=list)
    before: Score | None = None
    after: Score | None = None
    images: int = 0  # held-out images measured on
    float_macs: float = 0.0  # fraction of the linear multiply-adds that run float
    seconds: float = 0.0
    trials: int = 0  # graphs run (leave-one-out, greedy steps, the proxy pass)

    def precision(self, high: str) -> dict[str, str]:
        """Every candidate layer's final activation precision ("int8" or `high`)."""
        return {name: (high if name in self.layers else "int8") for name in self.all_layers}

    def summary(self) -> str:
        return (f"sensitivity on {self.images} held-out calibration images: {len(self.layers)} of "
                f"{len(self.all_layers)} activations kept precise ({', '.join(self.choices or self.layers) or 'none'}; "
                f"{100 * self.float_macs:.1f} % of multiply-adds float); simulated {self.before.text()} -> "
                f"{self.after.text()}; {self.trials} graphs run, {self.seconds:.1f}s")


def split(n: int, every: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, held-out) of n calibration images: every `every`-th image is held out."""
    idx = np.arange(n)
    held = idx % every == every - 1
    return idx[~held], idx[held]


# ---- scoring -----------------------------------------------------------------------------------------
class Evaluator:
    """Runs QDQ variants unfused (onnxruntime, optimisation off) on the held-out images and scores
    them against the float graph's outputs there."""

    def __init__(self, reference: np.ndarray, pixels: np.ndarray, batch: int = 32, stop=None,
                 independent: bool = False):
        self.pixels, self.batch, self.runs, self.independent = pixels, batch, 0, independent
        self.stop = stop  # () -> a reason to stop now (the export's --repair-time), or None: checked per trial
        if independent:  # multi-label: each label's decision is its log-odds' sign; its margin, their size
            self.ref = _as_logodds(reference)
            self.margin = np.abs(self.ref)
            return
        self.ref = _as_logprob(reference)
        order = np.argsort(-self.ref, axis=1)
        self.top, self.second = order[:, 0], order[:, 1]
        rows = np.arange(len(self.ref))
        self.margin = self.ref[rows, self.top] - self.ref[rows, self.second]

    def outputs(self, model) -> np.ndarray:
        return run(model.SerializeToString() if hasattr(model, "SerializeToString") else model, self.pixels,
                   self.batch)

    def score(self, model) -> Score:
        why = self.stop() if self.stop is not None else None
        if why:
            raise RepairTimeout(f"the sensitivity search stopped after {self.runs} trial graphs: {why}")
        self.runs += 1
        if self.independent:
            return self._score_sets(_as_logodds(self.outputs(model)))
        q = _as_logprob(self.outputs(model))
        rows = np.arange(len(q))
        err = (q[rows, self.top] - q[rows, self.second]) - self.margin
        mu, s = float(err.mean()), float(err.std()) + 1e-9
        flip = [0.5 * math.erfc((m + mu) / s / math.sqrt(2)) for m in self.margin]
        return Score(float(np.mean(q.argmax(1) == self.top)), 1.0 - float(np.mean(flip)),
                     float(np.sqrt(np.mean(err ** 2))))

    def _score_sets(self, q: np.ndarray) -> Score:
        """Independent scores: agreement of the label sets (every label's side of the decision), expected from each
        label's margin change (an image agrees when none of its labels flips)."""
        err = (q - self.ref) * np.where(self.ref > 0, 1.0, -1.0)  # how much nearer the decision each label moved
        mu, s = float(err.mean()), float(err.std()) + 1e-9
        flip = 0.5 * _erfc((self.margin + mu) / s / math.sqrt(2))
        same = np.all((q > 0) == (self.ref > 0), axis=1)
        return Score(float(np.mean(same)), float(np.mean(np.prod(1.0 - flip, axis=1))),
                     float(np.sqrt(np.mean(err ** 2))), of="label sets")


def _as_logprob(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    if np.all(y >= 0) and np.allclose(y.sum(1), 1.0, atol=1e-3):  # probabilities
        return np.log(np.clip(y, 1e-12, None))
    y = y - y.max(1, keepdims=True)  # logits
    return y - np.log(np.exp(y).sum(1, keepdims=True))


def _as_logodds(y: np.ndarray) -> np.ndarray:
    """Independent scores as log-odds (the decision at 0.5 is the sign): sigmoid scores in [0, 1], else logits."""
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    if np.all((y >= 0) & (y <= 1)):
        p = np.clip(y, 1e-12, 1 - 1e-12)
        return np.log(p) - np.log1p(-p)
    return y


_erfc = np.vectorize(math.erfc)


def run(model_bytes: bytes, pixels: np.ndarray, batch: int = 32) -> np.ndarray:
    """Outputs of an ONNX model on float32 pixels, graph optimisation off (the QDQ simulation)."""
    sess = unfused.session(model_bytes)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: np.asarray(pixels[i:i + batch], np.float32)})[0]
                           for i in range(0, len(pixels), batch)])


def local_noise(qdq, ev: Evaluator, cands: Sequence[Candidate], images: int = 16) -> None:
    """The cheap proxy: each candidate's own rounding noise-to-signal ratio (its first tensor, clipped
    to its grid's range, rounded to the grid, over its mean square) on the first `images` held-out images, one
    run of the all-int8 graph with those tensors as extra outputs. Sets `Candidate.noise`."""
    import copy

    from onnx import numpy_helper

    model = copy.deepcopy(qdq)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    grid = {}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in {c.tensors[0] for c in cands}:
            zp = inits[n.input[2]] if len(n.input) > 2 and n.input[2] else np.zeros((), np.uint8)
            grid[n.input[0]] = (inits[n.input[1]].astype(np.float64), zp.astype(np.float64), np.iinfo(zp.dtype))
    names = [c.tensors[0] for c in cands if c.tensors[0] in grid]
    ev.runs += 1
    sess = unfused.session(model, names)
    outs = dict(zip([o.name for o in sess.get_outputs()],
                    sess.run(None, {sess.get_inputs()[0].name: np.asarray(ev.pixels[:images], np.float32)})))
    for c in cands:
        if c.tensors[0] not in grid:
            continue
        scale, zp, info = grid[c.tensors[0]]
        # clipped to the grid's range first: that is the function (the quantiser drops a Relu / Clip
        # whose range the grid's matches, as `bypass` keeps), only the rounding is noise
        x = np.clip(np.asarray(outs[c.tensors[0]], np.float64), (info.min - zp) * scale, (info.max - zp) * scale)
        q = (np.clip(np.round(x / scale) + zp, info.min, info.max) - zp) * scale
        c.noise = float(np.mean((q - x) ** 2) / (np.mean(x ** 2) + 1e-30))


def rank(qdq, ev: Evaluator, *, max_trials: int = MAX_TRIALS) -> tuple[list[Candidate], Score]:
    """Every candidate with its leave-one-out gain, most sensitive first; and the all-int8 score. With more
    than `max_trials` candidates, only the `max_trials` with the most local rounding noise are measured (the
    rest: gain 0, measured False)."""
    base = ev.score(qdq)
    singles = candidates(qdq)
    if len(singles) > max_trials:
        local_noise(qdq, ev, singles)
        for c in sorted(singles, key=lambda c: -c.noise)[max_trials:]:
            c.measured = False
    for c in singles:
        if c.measured:
            c.gain = base.margin_rmse ** 2 - ev.score(bypass(qdq, c.tensors)).margin_rmse ** 2
    return sorted(singles, key=lambda c: -c.gain), base


def choose(qdq, ev: Evaluator, *, aim: float = 0.995, max_float_macs: float = 0.2, max_layers: int = 8,
           free_macs: float = 0.01, max_trials: int = MAX_TRIALS) -> Selection:
    """`rank`, then `greedy` (its options); the selection's time and graphs run count both."""
    start, runs = time.perf_counter(), ev.runs
    ranked, base = rank(qdq, ev, max_trials=max_trials)
    sel = greedy(qdq, ev, ranked, base, aim=aim, max_float_macs=max_float_macs, max_layers=max_layers,
                 free_macs=free_macs)
    sel.seconds, sel.trials = time.perf_counter() - start, ev.runs - runs
    return sel


def greedy(qdq, ev: Evaluator, ranked: Sequence[Candidate], base: Score, *, aim: float = 0.995,
           max_float_macs: float = 0.2, max_layers: int = 8, free_macs: float = 0.01) -> Selection:
    """Best gain per cost first among `ranked` (measured from the all-int8 score `base`; cost: the float
    multiply-adds, plus `free_macs` of the total so that free layers still rank by gain), each step re-measured,
    until the expected agreement reaches `aim`. `max_layers` counts choices: a candidate with `members` is one
    choice (its layers all go into `layers`)."""
    ranked = list(ranked)
    total = sum(v for v in macs_per_node(qdq).values()) or 1.0
    every = [layer for c in ranked for layer in c.layers]
    sel = Selection(all_layers=[c.layer for c in candidates(qdq)], ranked=ranked, before=base, after=base,
                    images=len(ev.pixels))
    sel.all_layers += [name for name in dict.fromkeys(every) if name not in sel.all_layers]
    order = sorted((c for c in ranked if c.gain > 0), key=lambda c: -c.gain / (c.macs / total + free_macs))
    spent = 0.0
    for c in order:
        if sel.after.expected >= aim or len(sel.choices) >= max_layers:
            break
        tensors = [t for t in c.tensors if t not in sel.tensors]
        if not tensors or spent + c.macs / total > max_float_macs:
            continue
        trial = ev.score(bypass(qdq, sel.tensors + tensors))
        if trial.margin_rmse >= sel.after.margin_rmse:  # no better together with the others: skip
            continue
        sel.choices.append(c.layer)
        sel.layers += [name for name in c.layers if name not in sel.layers]
        sel.tensors += tensors
        sel.after, spent = trial, spent + c.macs / total
    sel.float_macs = spent
    return sel


def select(float_onnx, quantize: Callable, calib: np.ndarray, *, workdir, reference=None, stop=None,
           independent: bool = False, **options) -> Selection:
    """Quantise the float graph (`quantize(src, dst, images)`, the export's own quantiser) on the fit
    split of `calib`, score on the held-out split against `reference` (the ORIGINAL model's float
    graph when `float_onnx` is a repaired one: its weight residual counts too; default `float_onnx`),
    choose (`choose` options). `stop`: as the weight repair's (RepairTimeout before a trial graph). `independent`:
    multi-label scores, judged by their label sets (each label's side of 0.5), not the argmax."""
    onnx = require("onnx", extra="export")
    start = time.perf_counter()
    fit, held = split(len(calib))
    dst = workdir / "sensitivity_qdq.onnx"
    quantize(float_onnx, dst, calib[fit])
    qdq = onnx.load(str(dst))
    reference = run(open(reference or float_onnx, "rb").read(), calib[held])
    sel = choose(qdq, Evaluator(reference, calib[held], stop=stop, independent=independent), **options)
    sel.seconds = time.perf_counter() - start
    return sel


# ---- applying a selection to the files -----------------------------------------------------------------
def onnx_overrides(sel: Selection) -> dict:
    """onnxruntime quantize_static TensorQuantOverrides: the chosen activations as int16 (weights stay
    int8: int16 weights with int16 activations overflow the int32 bias, measured 0.967 vs 0.987)."""
    q = require("onnxruntime.quantization", extra="export")
    return {t: [{"quant_type": q.QuantType.QInt16}] for t in sel.tensors}


def tflite_keep_float(ops: Sequence[tuple[str, str, Sequence[str]]], layers: Sequence[str]) -> list[str]:
    """TFLite denylist (output tensor names) for the chosen layers: `ops` are (op, output name,
    input names) in execution order (selective.tflite_graph). A layer's producing op and every op
    reading its output (through pass-through ops) run float, so the tensor is never rounded."""
    wanted = set(layers)
    consumers: dict[str, list] = {}
    for op in ops:
        for t in op[2]:
            consumers.setdefault(t, []).append(op)
    keep: list[str] = []
    for op, out, _ in ops:
        if not {layer_of(name) for name in out.split(";")} & wanted:
            continue
        frontier = [out]
        keep.append(out)
        while frontier:
            for c_op, c_out, _ in consumers.get(frontier.pop(), []):
                if c_out not in keep:
                    keep.append(c_out)
                    if c_op in ("PAD", "RESHAPE", "SQUEEZE", "QUANTIZE", "DEQUANTIZE", "MAX_POOL_2D"):
                        frontier.append(c_out)
    return keep
