"""Output-aware (Fisher-weighted) GPTQ rounding: a lab experiment against repair's layer-output rounding.

repair.quantize_weights rounds each kernel with GPTQ on H = sum [x,1][x,1]^T over every calibration position: it
minimises the layer's output MSE, every output channel and position alike. What the user sees is the decision: the
margin m(x) = z_top - z_second between the float model's two leading logits (log p_top - log p_second). To first
order a weight error dW_o of output channel o moves it by sum_pos J_o(pos) dW_o . [x(pos), 1] with J = dm/dy, so the
squared margin error (channels and positions taken apart, the diagonal Fisher of BRECQ) is dW_o^T H_o dW_o with

    H_o = sum_{x, pos} w(x) J_o(x, pos)^2 [x(pos),1][x(pos),1]^T

`step(model, beta, tie)` gives an `extra` step for repair.apply that, for the kernels of pointwise and depthwise
convolutions, solves GPTQ per output channel on (1 - beta) H / tr + beta H_o / tr (beta 0: repair's rounding;
the bias correction is repair's). J comes from the folded float model (a tape over the graph, the float inputs);
w(x) = exp(-|m(x)| / tie) weighs the images near a tie (tie None: 1). Dense kernels keep repair's rounding.

    PYTHONPATH=. python lab/quant/fisher.py PATH [PATH ...] --beta 0 0.5 1 [--tie 2]
"""
from __future__ import annotations

import contextlib

import numpy as np

from tledge.quant import gptq, kerasgraph, moments, repair


def margin_gradients(model, calib, names, batch=16, tie=None):
    """{layer name: w(x) * (dm/dy)^2 (N, H, W, C) float32} for the layers `names` of a flat folded model, y their
    outputs (pre-activation), m the float model's top-1 minus top-2 logit margin."""
    import tensorflow as tf

    out = {n: [] for n in names}
    for i in range(0, len(calib), batch):
        x = tf.constant(calib[i:i + batch])
        watched = {}
        with tf.GradientTape() as tape:
            acts = {id(t): x for t in model.inputs}
            for op, node in kerasgraph.nodes(model):
                args, kw = node.arguments.fill_in(acts)
                kw = dict(kw)
                kw.pop("training", None)
                if isinstance(op, kerasgraph.keras_lib().layers.Layer):
                    kw["training"] = False
                y = op(*args, **kw)
                if op.name in out:
                    tape.watch(y)
                    watched[op.name] = y
                for t, v in zip(node.outputs, tf.nest.flatten(y)):
                    acts[id(t)] = v
            p = acts[id(model.outputs[0])]
            top2 = tf.math.top_k(tf.stop_gradient(p), 2).indices
            lp = tf.math.log(tf.maximum(p, 1e-30))
            m = tf.gather(lp, top2[:, 0], batch_dims=1) - tf.gather(lp, top2[:, 1], batch_dims=1)
            total = tf.reduce_sum(m)
        grads = tape.gradient(total, [watched[n] for n in names])
        wx = np.ones(len(x)) if tie is None else np.exp(-np.abs(m.numpy()) / tie)
        for n, g in zip(names, grads):
            out[n].append((np.asarray(g) ** 2 * wx[:, None, None, None]).astype(np.float32))
    return {n: np.concatenate(v) for n, v in out.items()}


def fisher_grams(layer, xq, j2, chunk=16):
    """(G, d, d) per-output-channel weighted second moments [x,1]^T diag(j2_o) [x,1] in repair's group order:
    G = output channels for a pointwise conv (1x1, stride 1), = channels for a depthwise one."""
    kind = type(layer).__name__
    acc = None
    for i in range(0, len(xq), chunk):
        x = np.asarray(xq[i:i + chunk], np.float64)
        w = np.asarray(j2[i:i + chunk], np.float64)
        if kind == "Conv2D":
            p = x.reshape(-1, x.shape[-1])
            p1 = np.concatenate([p, np.ones((len(p), 1))], 1)
            w = w.reshape(-1, w.shape[-1])
            h = np.stack([(p1 * w[:, o:o + 1]).T @ p1 for o in range(w.shape[1])])
        else:  # DepthwiseConv2D, multiplier 1: patches (C, M, k*k), weights (C, M)
            p = moments.patches(layer, x.astype(np.float32)).astype(np.float64)
            p1 = np.concatenate([p, np.ones(p.shape[:2] + (1,))], 2)
            w = w.reshape(-1, w.shape[-1]).T
            h = np.matmul((p1 * w[:, :, None]).transpose(0, 2, 1), p1)
        acc = h if acc is None else acc + h
    return acc


def eligible(layer) -> bool:
    """A pointwise (1x1, stride 1) or depthwise convolution with no fused activation (the gradient is taken
    at its output, which must be the pre-activation: MobileNet's convolutions after BN folding)."""
    kind = type(layer).__name__
    if getattr(getattr(layer, "activation", None), "__name__", "linear") != "linear":
        return False
    if kind == "Conv2D":
        return tuple(layer.kernel_size) == (1, 1) and tuple(layer.strides) == (1, 1)
    return kind == "DepthwiseConv2D" and layer.get_config().get("depth_multiplier", 1) == 1


def _norm(h):
    tr = np.einsum("gii->g", h)[:, None, None] / h.shape[1]
    return h / np.maximum(tr, 1e-300)


@contextlib.contextmanager
def patched(grads: dict, beta: float, log: list):
    """repair.quantize_weights with the Fisher-mixed per-channel GPTQ on the layers in `grads`."""
    orig_collect, orig_solve = moments.collect, repair._solve_layer
    seen = {}

    def collect(layer, xq, xf, **kw):
        seen[layer.name] = xq
        return orig_collect(layer, xq, xf, **kw)

    def solve(layer, mom, method, bias_correction, damp):
        xq = seen.pop(layer.name, None)
        if layer.name not in grads or xq is None or method != "adaptive":
            return orig_solve(layer, mom, method, bias_correction, damp)
        kind = type(layer).__name__
        kernel, bias = layer.get_weights()
        g = repair.to_groups(kind, kernel.astype(np.float64))
        wf = np.concatenate([g, bias.reshape(g.shape[0], 1, -1).astype(np.float64)], 1)
        hf = fisher_grams(layer, xq, grads[layer.name])
        scale = repair.grid_scale(wf[:, :-1])
        if kind == "Conv2D":  # (1, d, O) -> (O, d, 1): one group per output channel
            h = (1 - beta) * _norm(mom.hqq)[0][None] + beta * _norm(hf)
            w = gptq.solve(wf.transpose(2, 1, 0), h, scale.transpose(2, 1, 0), damp).transpose(2, 1, 0)
        else:
            h = (1 - beta) * _norm(mom.hqq) + beta * _norm(hf)
            w = gptq.solve(wf, h, scale, damp)
        if bias_correction:
            hqq = mom.hqq
            n = hqq[:, -1, -1][:, None]
            w[:, -1] = (np.einsum("gd,gdk->gk", mom.fsum, wf) - np.einsum("gd,gdk->gk", hqq[:, -1, :-1], w[:, :-1])) / n
        log.append(layer.name)
        new = [repair.from_groups(kind, w[:, :-1], kernel.shape).astype(np.float32),
               w[:, -1].reshape(-1).astype(np.float32)]
        return new, (float("nan"), float("nan"))

    moments.collect, repair._solve_layer = collect, solve
    try:
        yield
    finally:
        moments.collect, repair._solve_layer = orig_collect, orig_solve


def step(beta: float, tie: float | None = None, stem: int = 4, grads_out: dict | None = None):
    """An `extra` step for repair.apply: it runs the GPTQ pass itself with Fisher-mixed grams and returns the
    quantised model (pass steps without 'adaptive' to repair.apply so it does not round again)."""
    def run(m, calib, log):
        keep = set(repair.stem_layers(m, stem))
        names = [op.name for op, _ in kerasgraph.nodes(m) if op.name not in keep and eligible(op)]
        grads = margin_gradients(m, calib, names, tie=tie)
        if grads_out is not None:
            grads_out.update(grads)
        done: list = []
        with patched(grads, beta, done):
            q = repair.quantize_weights(m, calib, method="adaptive", bias_correction=True, keep_float=sorted(keep),
                                        errors=False)
        log.notes.append(f"fisher: beta {beta}, tie {tie}, {len(done)} kernels Fisher-weighted")
        return q
    return run
