"""Lab experiment, not run by the product (measured: validation does not follow, see
docs/int8-fidelity.md). Cheap quantisation-aware fine-tuning of a folded flat Keras model (the `qat` repair step).

Every conv/depthwise/dense kernel is used through per-channel symmetric int8 fake quantisation
(scale = max|w|/127, straight-through gradients) and every tensor a converter requantises is
rounded to its per-tensor 8-bit grid (range fixed from the float model on calibration data). The
kernels and biases are trained for a few epochs to reproduce the ORIGINAL model's logits on the
calibration images (distillation: no labels), then snapped to the int8 grid, so the converters
keep them exactly. Layers in `keep_float` (a float stem) stay float and are not trained.
"""
from __future__ import annotations

import numpy as np

from tledge._deps import require


def _logits(model, x, batch=32):
    """The final layer's pre-activation (centred log-probabilities for a softmax output)."""
    from tledge.quant.kerasgraph import predict

    p = predict(model, x, batch).astype(np.float64)
    if np.all(p >= 0) and np.allclose(p.sum(axis=1), 1, atol=1e-3):
        z = np.log(np.clip(p, 1e-7, 1.0))
        return (z - z.mean(axis=1, keepdims=True)).astype(np.float32)
    return p.astype(np.float32)


def _ste_round(tf, x):
    return x + tf.stop_gradient(tf.round(x) - x)


def _fake_weights(tf, kind, w):
    axes = [0, 1] if kind == "DepthwiseConv2D" else list(range(len(w.shape) - 1))
    scale = tf.stop_gradient(tf.reduce_max(tf.abs(w), axis=axes, keepdims=True) / 127.0)
    safe = tf.where(scale > 0, scale, tf.ones_like(scale))
    return tf.clip_by_value(_ste_round(tf, w / safe), -127.0, 127.0) * safe


def _fake_act(tf, x, lo, hi):
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0:
        return x
    scale = (hi - lo) / 255.0
    zp = round(-lo / scale)
    q = tf.clip_by_value(_ste_round(tf, x / scale) + zp, 0.0, 255.0)
    return (q - zp) * scale


def _linear(tf, op, x, kernel, bias, logits=False):
    kind = type(op).__name__
    if kind == "Dense":
        y = tf.matmul(x, kernel) + bias
    else:
        strides, dil = [1, *op.strides, 1], list(op.dilation_rate)
        pad = op.padding.upper()
        y = (tf.nn.depthwise_conv2d(x, kernel, strides, pad, dilations=dil) if kind == "DepthwiseConv2D"
             else tf.nn.conv2d(x, kernel, strides, pad, dilations=dil)) + bias
    return y if logits else op.activation(y)


class _Forward:
    """The fake-quantised forward pass of a folded flat model with trainable kernels/biases."""

    def __init__(self, model, ranges, keep_float):
        from tledge.quant import repair

        self.tf = require("tensorflow", purpose="quantisation-aware fine-tuning")
        self.model, self.ranges, self.keep = model, ranges, set(keep_float)
        self.nodes = list(repair.nodes(model))
        self.last = self.nodes[-1][0]
        self.quantised = {op.name for op, _ in self.nodes if repair.quantised_output(op, self.keep)}
        self.vars = {}
        for op, _ in self.nodes:
            if repair.linear_kind(op) and op.name not in self.keep:
                w = op.get_weights()
                self.vars[op.name] = (self.tf.Variable(w[0]), self.tf.Variable(w[1]))

    def __call__(self, x):
        tf = self.tf
        acts = {id(t): x for t in self.model.inputs}
        for op, node in self.nodes:
            args, kwargs = node.arguments.fill_in(acts)
            kwargs.pop("training", None)
            if op.name in self.vars:
                k, b = self.vars[op.name]
                out = _linear(tf, op, args[0], _fake_weights(tf, type(op).__name__, k), b, logits=op is self.last)
            else:
                out = op(*args, **kwargs)
            if op.name in self.quantised and op is not self.last:
                out = _fake_act(tf, out, *self.ranges[op.name])
            for t in node.outputs:
                acts[id(t)] = out
        return out


def finetune(model, reference, calib, *, epochs: int = 15, lr: float = 3e-5, batch: int = 16,
             flips: bool = True, keep_float=(), seed: int = 0, log=None):
    """Fine-tune `model` (folded, flat; e.g. the output of the rounding pass) through int8 fake
    quantisation to reproduce `reference`'s logits on `calib` (and, with `flips`, on their mirror
    images: twice the data against over-fitting 250 images). Returns a new model whose kernels
    are on the int8 grid (round-to-nearest of the trained kernels, which is what the forward used).
    lr 3e-5 x 15 epochs is stable on MobileNet; 2e-4 diverged."""
    tf = require("tensorflow", purpose="quantisation-aware fine-tuning")
    from tledge.quant import repair
    from tledge.quant.explain import forward_pass

    m = repair.rebuild_model(model, repair.clone_layer)
    x = np.asarray(calib, np.float32)
    _, ranges = forward_pass(m, x)
    if flips and x.ndim == 4:
        x = np.concatenate([x, x[:, :, ::-1]])
    target = _logits(reference, x)
    fwd = _Forward(m, ranges, keep_float)
    variables = [v for pair in fwd.vars.values() for v in pair]
    slots = [(tf.Variable(tf.zeros_like(v)), tf.Variable(tf.zeros_like(v))) for v in variables]
    t = tf.Variable(0.0)

    @tf.function(reduce_retracing=True)
    def step(xb, zb):  # plain Adam on tf.Variables (no Keras optimizer state to reconcile)
        with tf.GradientTape() as tape:
            z = fwd(xb)
            z = z - tf.reduce_mean(z, axis=1, keepdims=True)
            loss = tf.reduce_mean(tf.square(z - zb))
        t.assign_add(1.0)
        for v, g, (m1, m2) in zip(variables, tape.gradient(loss, variables), slots):
            m1.assign(0.9 * m1 + 0.1 * g)
            m2.assign(0.999 * m2 + 0.001 * tf.square(g))
            v.assign_sub(lr * (m1 / (1 - 0.9 ** t)) / (tf.sqrt(m2 / (1 - 0.999 ** t)) + 1e-8))
        return loss

    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        order, losses = rng.permutation(len(x)), []
        for i in range(0, len(x) - batch + 1, batch):
            idx = order[i:i + batch]
            losses.append(float(step(tf.constant(x[idx]), tf.constant(target[idx]))))
        if log is not None:
            log.notes.append(f"qat epoch {epoch + 1}: logit mse {np.mean(losses):.5f}")
    for op in m.layers:
        if op.name in fwd.vars:
            k, b = (v.numpy() for v in fwd.vars[op.name])
            op.set_weights([repair.quantize_kernel(op, k), b])
    return m


def step(reference, stem: int = 0, **options):
    """An `extra_after` step for tledge.quant.repair.apply: fine-tune against `reference` (the original model)."""
    from tledge.quant.repair import stem_layers

    def run(model, calib, log):
        return finetune(model, reference, calib, keep_float=stem_layers(model, stem), log=log, **options)
    return run
