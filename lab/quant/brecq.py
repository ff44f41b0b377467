"""Block reconstruction, BRECQ-style with AdaRound soft rounding (issue 11, a lab experiment: not in the
export loop; measured in docs/int8-fidelity.md "Block reconstruction (BRECQ-style, lab/quant/brecq.py)").

An `extra_after` step for `tledge.quant.repair.apply`: it receives the repaired model (folded, flat,
every kernel on the per-channel symmetric int8 grid, scale = max|w|/127, the max element at +-127) and
re-chooses the roundings block by block, against the BLOCK's output instead of each layer's:

- blocks: the graph after the float stem is cut wherever a single tensor is live (every path joined),
  once the block holds `per_block` conv/depthwise/dense layers: a MobileNet v1 depthwise + pointwise
  pair with their ReLU6s (and padding), a whole residual block, the head. Graphs whose cut after the
  stem is not a single tensor are left alone from there on (a note says where).
- per block: the float model's block output (float weights on the float path) is the target; the
  input is what the already-quantised blocks before produce, fake-quantised to 8 bits as repair's
  `act_quant` does, and so are the tensors a converter requantises inside the block (straight-through).
  Each kernel is `s * (floor(w/s) + h(V))` with AdaRound's rectified sigmoid h, V initialised at the
  float weight, the scale s and the max element (+-127) fixed; Adam on V minimises the block output
  MSE (summed over channels, averaged over positions) plus AdaRound's annealed rounding regulariser
  (beta 20 -> 2 after a 20 % warm-up), on mini-batches of calibration images. Then V >= 0 rounds up.
- then bias correction for the block's layers in order, on every calibration image (the bias that
  makes each layer's mean pre-activation match the float layer's, as repair does), and the block's
  output error on the calibration images is compared with the input model's (its GPTQ rounding and
  bias): the better of the two is kept, so no block gets worse on calibration data (`holdout=k`: fit on
  the images but every k-th, judge on those).
Measured (docs/int8-fidelity.md): small gains on MobileNet v1 0.25, one image lost on MobileNetV2 with or
without held-out judging; not kept. `lab/quant/brecq_hym.py` reproduces the table.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from tledge._deps import require
from tledge.quant import kerasgraph

ZETA, GAMMA = 1.1, -0.1
DEBUG = False


@dataclass
class BlockResult:
    ops: tuple[str, ...]  # linear layers of the block
    err_input: float  # block output MSE of the input model (its rounding and bias), calibration images
    err_brecq: float  # the same after reconstruction and bias correction
    kept: bool


def _tf():
    return require("tensorflow", purpose="block reconstruction")


def _channel_axes(kind, ndim):
    return (0, 1) if kind == "DepthwiseConv2D" else tuple(range(ndim - 1))


def _linear(tf, op, x, kernel, bias):
    """Pre-activation of a conv / depthwise / dense layer with the given kernel and bias."""
    kind = type(op).__name__
    if kind == "Dense":
        return tf.matmul(x, kernel) + bias
    strides, dil, pad = [1, *op.strides, 1], list(op.dilation_rate), op.padding.upper()
    if kind == "DepthwiseConv2D":
        return tf.nn.depthwise_conv2d(x, kernel, strides, pad, dilations=dil) + bias
    return tf.nn.conv2d(x, kernel, strides, pad, dilations=dil) + bias


def _fake_act(tf, x, lo, hi):
    """8-bit per-tensor fake quantisation with a straight-through gradient (repair.fake_quant's grid)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0:
        return x
    scale = (hi - lo) / 255.0
    zp = float(np.round(-lo / scale))
    y = x / scale
    q = tf.clip_by_value(y + tf.stop_gradient(tf.round(y) - y) + zp, 0.0, 255.0)
    return (q - zp) * scale


class Block:
    """A run of nodes between two single-tensor cuts of a flat functional model."""

    def __init__(self, nodes, source, is_output, quantised):
        self.nodes = nodes  # [(op, node)]
        self.source = source  # id of the block's input KerasTensor
        self.linear = [op for op, _ in nodes if _kind(op)]
        self.last = nodes[-1][0]
        self.logits = is_output and self.last in self.linear  # target the pre-activation (e.g. before softmax)
        self.quantised = {op.name for op, _ in nodes[:-1] if quantised(op)}

    def run(self, tf, x, weights, ranges=None):
        """The block on `x` (tf tensors); `weights[name] = (kernel, bias)` for its linear layers; `ranges`:
        fake-quantise the tensors a converter requantises inside the block."""
        acts = {self.source: x}
        out = x
        for op, node in self.nodes:
            args, kwargs = node.arguments.fill_in(acts)
            kwargs.pop("training", None)
            if op.name in weights:
                out = _linear(tf, op, args[0], *weights[op.name])
                out = out if (op is self.last and self.logits) else op.activation(out)
            else:
                out = op(*args, **kwargs)
            if ranges is not None and op.name in self.quantised:
                out = _fake_act(tf, out, *ranges[op.name])
            for t in node.outputs:
                acts[id(t)] = out
        return out


def _kind(op):
    from tledge.quant.repair import linear_kind

    return linear_kind(op)


def blocks(model, keep_float=(), per_block: int = 2):
    """Cut a flat model's nodes (after the float stem `keep_float`) into Blocks; returns (blocks, note)."""
    from tledge.quant import repair

    keep = set(keep_float)
    order = list(repair.nodes(model))
    consumers = kerasgraph.use_counts(order)
    outputs = {id(t) for t in model.outputs}
    live = {id(t): consumers.get(id(t), 0) for t in model.inputs}
    out, current, source, note = [], [], None, None
    for op, node in order:
        if not current and op.name not in keep:
            if len(live) == 1:
                source = next(iter(live))
            else:
                note = note or f"brecq: no single-tensor cut before {op.name}; left as repaired"
        if op.name not in keep and (current or len(live) == 1):
            current.append((op, node))
        for t in node.input_tensors:
            live[id(t)] -= 1
            if live[id(t)] == 0:
                live.pop(id(t))
        for t in node.outputs:
            if consumers.get(id(t), 0):
                live[id(t)] = consumers[id(t)]
        enough = sum(bool(_kind(o)) for o, _ in current) >= per_block and repair.requantised(op)
        done = not live or (len(live) == 1 and enough)
        if current and done and not any(_kind(o) for o, _ in current):
            current = []  # nothing to round (e.g. a pooling tail): left to the plain walk
        elif current and done:
            is_out = bool({id(t) for t in node.outputs} & outputs)
            out.append(Block(current, source, is_out, lambda o: repair.quantised_output(o, keep)))
            current = []
    if len(model.outputs) != 1:
        return [], "brecq: models with several outputs are not supported; left as repaired"
    return out, note


def _batched(fn, *arrays, batch=32):
    n = len(arrays[0])
    return np.concatenate([np.asarray(fn(*(a[i:i + batch] for a in arrays))) for i in range(0, n, batch)])


def _pass(tf, blk, x, weights, ranges=None, means=None):
    """Run `blk` over all of `x` node by node (numpy arrays, batched). Returns (output, stats, pre-activation
    means per linear layer, biases). `ranges`: fake-quantise the requantised tensors inside the block;
    `means`: bias correction, each linear layer's bias set so its mean pre-activation equals `means[name]`."""
    acts, stats, got, biases = {blk.source: x}, {}, {}, {}
    out = x
    for op, node in blk.nodes:
        args, kwargs = node.arguments.fill_in(acts)
        kwargs.pop("training", None)
        if op.name in weights:
            kernel, bias = weights[op.name]
            z = _batched(lambda a: _linear(tf, op, tf.constant(a), kernel, np.zeros_like(bias)), args[0])
            axes = tuple(range(z.ndim - 1))
            bias = (means[op.name] - z.mean(axis=axes)).astype(np.float32) if means is not None else bias
            z += bias
            got[op.name], biases[op.name] = z.mean(axis=axes), bias
            out = z if (op is blk.last and blk.logits) else _batched(lambda a: op.activation(tf.constant(a)), z)
        else:
            from tledge.quant.repair import apply_layer

            out = apply_layer(op, args, kwargs)
        if op.name in blk.quantised:
            stats[op.name] = (float(out.min()), float(out.max()))
            if ranges is not None:
                out = _batched(lambda a: _fake_act(tf, tf.constant(a), *ranges[op.name]), out)
        for t in node.outputs:
            acts[id(t)] = out
    return out.astype(np.float32), stats, got, biases


class _Rounding:
    """AdaRound parameters of one kernel: s * (floor(w/s) + h(V)), the channel maxima fixed at +-127."""

    def __init__(self, tf, kind, kf, kq, init="float"):
        axes = _channel_axes(kind, kf.ndim)
        s = np.abs(kq).max(axis=axes, keepdims=True) / 127.0
        if not np.allclose(s, np.abs(kf).max(axis=axes, keepdims=True) / 127.0, rtol=1e-4, atol=1e-12):
            raise ValueError("the repaired kernel's scale is not the float kernel's max|w|/127")
        safe = np.where(s > 0, s, 1.0)
        xs = kf / safe
        self.base = np.floor(xs).astype(np.float32)
        rest = np.clip(xs - self.base, 1e-4, 1 - 1e-4)
        if init == "input":  # start near the input model's rounding where it is floor or ceil of the float weight
            q = np.round(kq / safe) - self.base
            rest = np.where(q == 1, 0.75, np.where(q == 0, 0.25, rest))
        self.fixed = (np.abs(kf) >= np.abs(kf).max(axis=axes, keepdims=True)) | (s == 0)
        self.qfix = np.round(kq / safe).astype(np.float32)
        self.scale = safe.astype(np.float32)
        self.v = tf.Variable((-np.log((ZETA - GAMMA) / (rest - GAMMA) - 1)).astype(np.float32))

    def h(self, tf):
        return tf.clip_by_value(tf.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)

    def soft(self, tf):
        return self.scale * tf.where(self.fixed, self.qfix, self.base + self.h(tf))

    def hard(self):
        q = np.where(self.fixed, self.qfix, np.clip(self.base + (self.v.numpy() >= 0), -127, 127))
        return (q * self.scale).astype(np.float32)


def _optimise(tf, blk, x, y, wf, wq, ranges, norm, *, iters, batch, lr, lam, seed, init):
    """AdaRound on the block: returns the hard kernels {name: kernel}."""
    rounds = {op.name: _Rounding(tf, type(op).__name__, wf[op.name][0], wq[op.name][0], init) for op in blk.linear}
    biases = {name: tf.Variable(wq[name][1]) for name in rounds}  # trained too; bias correction redoes them
    variables = [r.v for r in rounds.values()] + list(biases.values())
    rates = [lr] * len(rounds) + [0.1 * lr] * len(biases)
    slots = [(tf.Variable(tf.zeros_like(v)), tf.Variable(tf.zeros_like(v))) for v in variables]
    t, beta, reg_w = tf.Variable(0.0), tf.Variable(20.0), tf.Variable(0.0)

    @tf.function(reduce_retracing=True)
    def step(xb, yb):
        with tf.GradientTape() as tape:
            out = blk.run(tf, xb, {n: (r.soft(tf), biases[n]) for n, r in rounds.items()}, ranges)
            rec = tf.reduce_mean(tf.square(out - yb)) / norm
            reg = tf.add_n([tf.reduce_mean(1.0 - tf.abs(2.0 * r.h(tf) - 1.0) ** beta) for r in rounds.values()])
            loss = rec + reg_w * reg
        t.assign_add(1.0)
        for v, g, (m1, m2), rate in zip(variables, tape.gradient(loss, variables), slots, rates):
            m1.assign(0.9 * m1 + 0.1 * g)
            m2.assign(0.999 * m2 + 0.001 * tf.square(g))
            v.assign_sub(rate * (m1 / (1 - 0.9 ** t)) / (tf.sqrt(m2 / (1 - 0.999 ** t)) + 1e-8))
        return rec

    rng = np.random.default_rng(seed)
    warm = int(0.2 * iters)
    for i in range(iters):
        if i >= warm:  # AdaRound's annealing: the regulariser on, beta 20 -> 2
            reg_w.assign(lam)
            beta.assign(2.0 + 18.0 * (1.0 - (i - warm) / max(1, iters - warm)))
        idx = rng.choice(len(x), size=min(batch, len(x)), replace=False)
        rec = step(tf.constant(x[idx]), tf.constant(y[idx]))
        if DEBUG and i % max(1, iters // 5) == 0 or DEBUG and i == iters - 1:
            soft = np.concatenate([r.h(tf).numpy().ravel() for r in rounds.values()])
            print(f"  it {i} rec {float(rec):.3f} undecided {np.mean((soft > 0.01) & (soft < 0.99)):.2f}")
    return {name: r.hard() for name, r in rounds.items()}


def _block(tf, blk, x_f, x_q, wf, wq, holdout=0, **opts):
    """Reconstruct one block. Returns (float output, quantised output, chosen weights, BlockResult).
    `holdout` k > 1: fit on the images but every k-th and judge (keep or not) on those only."""
    y_f, ranges, means, _ = _pass(tf, blk, x_f, wf)
    y_old = _pass(tf, blk, x_q, wq, ranges)[0]
    judge = np.arange(len(x_q)) % holdout == holdout - 1 if holdout > 1 else np.ones(len(x_q), bool)
    fit = ~judge if holdout > 1 else judge
    norm = max(float(np.mean((y_old[fit] - y_f[fit]) ** 2)), 1e-30)  # the loss is relative to the input's error
    kernels = _optimise(tf, blk, x_q[fit], y_f[fit], wf, wq, ranges, norm, **opts)
    new = {name: (k, wq[name][1]) for name, k in kernels.items()}
    y_new, _, _, biases = _pass(tf, blk, x_q, new, ranges, means)
    new = {name: (k, biases[name]) for name, k in kernels.items()}
    err_old, err_new = (float(np.mean((y[judge] - y_f[judge]) ** 2)) for y in (y_old, y_new))
    kept = err_new < err_old
    result = BlockResult(tuple(op.name for op in blk.linear), err_old, err_new, kept)
    return y_f, (y_new if kept else y_old), (new if kept else wq), result


def _weights(layer):
    w = layer.get_weights()
    return (w[0], w[1] if len(w) > 1 else np.zeros(w[0].shape[-1] if type(layer).__name__ != "DepthwiseConv2D"
                                                    else w[0].shape[2] * w[0].shape[3], np.float32))


def _plain(tf, op, node, acts_f, acts_q, wf):
    """A node outside the blocks: float path (float weights `wf` for a kernel) and quantised path."""
    from tledge.quant.repair import apply_layer

    args_f, kw_f = node.arguments.fill_in(acts_f)
    args_q, kw_q = node.arguments.fill_in(acts_q)
    if op.name in wf and _kind(op):
        y_f = _batched(lambda a: op.activation(_linear(tf, op, tf.constant(a), *wf[op.name])), args_f[0])
    else:
        y_f = apply_layer(op, args_f, kw_f)
    return y_f, apply_layer(op, args_q, kw_q)


def reconstruct(model, reference, calib, *, keep_float=(), per_block: int = 2, iters: int = 300, batch: int = 16,
                lr: float = 0.05, lam: float = 1.0, init: str = "input", holdout: int = 0, seed: int = 0, log=None):
    """Block reconstruction of a repaired model (folded, flat, kernels on the int8 grid) against
    `reference` (the original float model). Returns (new model, [BlockResult])."""
    tf = _tf()
    from tledge.quant import repair

    m = repair.rebuild_model(model, repair.clone_layer)
    ref, _ = repair.fold_bn(reference)
    wf = {layer.name: _weights(layer) for layer in ref.layers if repair.linear_kind(layer)}
    found, note = blocks(m, keep_float, per_block)
    missing = [op.name for blk in found for op in blk.linear if op.name not in wf]
    if missing:
        found, note = [], f"brecq: layers {missing[:3]} are not in the reference model; left as repaired"
    if note and log is not None:
        log.notes.append(note)
    starts = {blk.nodes[0][0].name: blk for blk in found}
    layers = {layer.name: layer for layer in m.layers}
    keep = set(keep_float)
    order = list(repair.nodes(m))
    uses = kerasgraph.use_counts(order)
    acts_f = {id(t): np.asarray(calib, np.float32) for t in m.inputs}
    acts_q, results, i = dict(acts_f), [], 0
    opts = dict(iters=iters, batch=batch, lr=lr, lam=lam, seed=seed, init=init, holdout=holdout)
    while i < len(order):
        op, node = order[i]
        blk = starts.get(op.name)
        if blk is not None:
            t0 = time.perf_counter()
            wq = {o.name: _weights(o) for o in blk.linear}
            y_f, y_q, chosen, res = _block(tf, blk, acts_f[blk.source], acts_q[blk.source], wf, wq, **opts)
            for name, (k, b) in chosen.items():
                layers[name].set_weights([k, b])
            results.append(res)
            if log is not None:
                log.notes.append(f"brecq block {'+'.join(res.ops)}: output MSE {res.err_input:.4g} -> "
                                 f"{res.err_brecq:.4g} ({'kept' if res.kept else 'not kept'}, "
                                 f"{time.perf_counter() - t0:.1f} s)")
            done, last = blk.nodes, blk.last
        else:
            y_f, y_q = _plain(tf, op, node, acts_f, acts_q, wf if op.name not in keep else {})
            done, last = [(op, node)], op
        if repair.quantised_output(last, keep) and last.name not in m.output_names:
            y_q = repair.fake_quant(y_q, y_f.min(), y_f.max())
        for t in done[-1][1].outputs:
            acts_f[id(t)], acts_q[id(t)] = y_f, y_q
        for _, n in done:
            for t in n.input_tensors:
                uses[id(t)] -= 1
                if uses[id(t)] == 0:
                    acts_f.pop(id(t), None)
                    acts_q.pop(id(t), None)
        i += len(done)
    return m, results


def step(reference, stem: int = 0, **options):
    """An `extra_after` step for tledge.quant.repair.apply: block reconstruction against `reference`
    (the original model), the first `stem` convolutions left float as repair left them."""
    from tledge.quant.repair import stem_layers

    def run(model, calib, log):
        return reconstruct(model, reference, calib, keep_float=stem_layers(model, stem), log=log, **options)[0]
    return run
