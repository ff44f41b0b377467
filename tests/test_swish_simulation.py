"""The weight repair's simulation of TFLite's int8 sigmoid and swish (tledge.quant.fakequant.logistic_int8, used by
tledge.quant.repair's act_quant pass): checked against real int8 TFLite files."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

from tledge.quant import repair, selective  # noqa: E402

from lab.quant import quick  # noqa: E402


def _run_file(model, calib, images=4):
    """The int8 file of `model` run on the first calibration images: (graph, real(name) -> dequantised values of one
    tensor over those images, quantisation (scale, zero point) of a tensor by name)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    data = quick.tflite_int8(model, calib, io="int8")
    it = Interpreter(model_content=data, experimental_preserve_all_tensors=True,  # builtin kernels: XNNPACK
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)  # keeps none
    it.allocate_tensors()
    details = {d["name"]: d for d in it.get_tensor_details()}
    d_in = it.get_input_details()[0]
    scale, zp = d_in["quantization"]
    seen: dict[str, list] = {}
    for image in calib[:images]:
        it.set_tensor(d_in["index"], np.clip(np.round(image[None] / scale + zp), -128, 127).astype(np.int8))
        it.invoke()
        for name, d in details.items():
            s, z = d["quantization"]
            if s and d["index"] != d_in["index"] and len(d["shape"]) == 4:
                seen.setdefault(name, []).append((it.get_tensor(d["index"]).astype(np.float32) - z) * s)
    return selective.tflite_graph(data), (lambda name: np.concatenate(seen[name])), \
        (lambda name: details[name]["quantization"])


def _bias_depends_on_the_grid(model, calib, layer, monkeypatch):
    def bias():
        rep, _ = repair.apply(model, calib, errors=False)
        return next(x for x in rep.layers if x.name.startswith(layer)).get_weights()[1]
    with_grid = bias()
    monkeypatch.setattr(repair, "LOGISTIC_GRID", False)
    return not np.allclose(with_grid, bias())  # the repair's pass uses it (bias correction sees its means)


def test_the_swish_simulation_is_what_an_int8_tflite_file_computes(monkeypatch):
    """TFLite splits swish into LOGISTIC (int8 output on a fixed 1/256 grid) and MUL: the repair's act_quant
    simulation (`repair.logistic_int8`, then the output's own grid) matches the file where rounding the float swish
    once does not (EfficientNetB0: that rounding was most of the real file's loss, docs "Non-linear activations")."""
    rng = np.random.default_rng(0)
    inp = keras.Input((8, 8, 3))
    sw = keras.layers.Activation("swish", name="sw")
    x = sw(keras.layers.Conv2D(6, 1, name="c1")(keras.layers.Rescaling(1 / 32, offset=-4)(inp)))
    model = keras.Model(inp, keras.layers.Conv2D(2, 1, name="c2")(x))
    assert repair.logistic_activation(sw) == "swish" and not repair.logistic_activation(keras.layers.ReLU())
    calib = rng.uniform(0, 255, (32, 8, 8, 3)).astype(np.float32)
    graph, real, quant = _run_file(model, calib)
    logistic = next(g for g in graph if g[0] == "LOGISTIC")
    mul = next(g for g in graph if g[0] == "MUL" and logistic[1] in g[2])
    pre, out = real(logistic[2][0]), real(mul[1])
    s, z = quant(mul[1])
    lo, hi = (-128 - z) * s, (127 - z) * s
    np.testing.assert_array_equal(np.asarray(repair.logistic_int8("swish", pre)),
                                  repair.logistic_int8("swish", pre, chunk_bytes=4096))
    simulated = np.asarray(repair.fake_quant_tensor(repair.logistic_int8("swish", pre), lo, hi))
    once = np.asarray(repair.fake_quant_tensor(pre / (1 + np.exp(-pre)), lo, hi))
    assert np.mean(np.abs(simulated - out) < s / 2) > 0.99  # (rounding the float swish once: 0.96)
    assert np.abs(simulated - out).mean() < 0.2 * np.abs(once - out).mean()  # (measured: 1/28)
    assert _bias_depends_on_the_grid(model, calib, "c2", monkeypatch)


def test_a_sigmoid_inside_a_convolution_is_simulated_as_the_file_computes_it(monkeypatch):
    """A squeeze-excite gate as Keras EfficientNets write it, `Conv2D(..., activation="sigmoid")`: the file rounds the
    convolution's output to its own int8 grid, then LOGISTIC writes the gate on the fixed 1/256 grid, which nothing
    rounds again. The simulation (`repair.logistic_int8("sigmoid", ...)`) gives the file's gate where rounding the
    float sigmoid to its calibrated range does not."""
    rng = np.random.default_rng(1)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 1, activation="swish", name="c1")(keras.layers.Rescaling(1 / 32, offset=-4)(inp))
    se = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    se = keras.layers.Conv2D(4, 1, activation="swish", name="se_reduce")(se)
    gate = keras.layers.Conv2D(8, 1, activation="sigmoid", name="se_expand")
    x = keras.layers.Multiply()([x, gate(se)])
    model = keras.Model(inp, keras.layers.Conv2D(2, 1, name="c2")(x))
    assert repair.logistic_activation(gate) == "sigmoid"
    calib = rng.uniform(0, 255, (32, 8, 8, 3)).astype(np.float32)
    graph, real, quant = _run_file(model, calib, images=32)
    producer = {out: op for op, out, _ in graph}
    swishes = {g[1] for g in graph for op, _, ins in graph if g[0] == "LOGISTIC" and op == "MUL" and g[1] in ins
               and g[2][0] in ins}  # LOGISTIC then MUL by its own input
    gate_op = next(g for g in graph if g[0] == "LOGISTIC" and g[1] not in swishes)
    assert producer[gate_op[2][0]] == "CONV_2D" and len(swishes) == 2
    pre, out = real(gate_op[2][0]), real(gate_op[1])  # the convolution's int8 output, the file's gate
    assert quant(gate_op[1]) == (1 / 256, -128)
    simulated = np.asarray(repair.logistic_int8("sigmoid", pre))
    float_gate = 1 / (1 + np.exp(-pre))
    calibrated = np.asarray(repair.fake_quant_tensor(float_gate, float_gate.min(), float_gate.max()))
    assert np.abs(simulated - out).max() < 1e-6  # every gate value is the file's
    assert np.mean(np.abs(calibrated - out) < 1 / 512) < 0.9  # (measured: 0.80 of them)
    assert _bias_depends_on_the_grid(model, calib, "c2", monkeypatch)
