"""The weight repair's simulation of TFLite's int8 swish (tledge.quant.fakequant.swish_int8, used by
tledge.quant.repair's act_quant pass): checked against a real int8 TFLite file."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

from tledge.quant import repair, selective  # noqa: E402


def test_the_swish_simulation_is_what_an_int8_tflite_file_computes(monkeypatch):
    """TFLite splits swish into LOGISTIC (int8 output on a fixed 1/256 grid) and MUL: the repair's act_quant
    simulation (`repair.swish_int8`, then the output's own grid) matches the file where rounding the float swish
    once does not (EfficientNetB0: that rounding was most of the real file's loss, docs "Non-linear activations")."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    rng = np.random.default_rng(0)
    inp = keras.Input((8, 8, 3))
    sw = keras.layers.Activation("swish", name="sw")
    x = sw(keras.layers.Conv2D(6, 1, name="c1")(keras.layers.Rescaling(1 / 32, offset=-4)(inp)))
    model = keras.Model(inp, keras.layers.Conv2D(2, 1, name="c2")(x))
    assert repair.swish(sw) and not repair.swish(keras.layers.Activation("relu"))
    calib = rng.uniform(0, 255, (32, 8, 8, 3)).astype(np.float32)
    data = selective.tflite_int8(model, calib, io="int8")
    it = Interpreter(model_content=data, experimental_preserve_all_tensors=True,  # builtin kernels: XNNPACK
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)  # keeps none
    it.allocate_tensors()
    graph = selective.tflite_graph(data)
    logistic = next(g for g in graph if g[0] == "LOGISTIC")
    mul = next(g for g in graph if g[0] == "MUL" and logistic[1] in g[2])
    details = {d["name"]: d for d in it.get_tensor_details()}
    d_in = it.get_input_details()[0]
    scale, zp = d_in["quantization"]

    def real(name):
        d = details[name]
        s, z = d["quantization"]
        return (it.get_tensor(d["index"]).astype(np.float32) - z) * s

    pre, out = [], []
    for image in calib[:4]:
        it.set_tensor(d_in["index"], np.clip(np.round(image[None] / scale + zp), -128, 127).astype(np.int8))
        it.invoke()
        pre.append(real(logistic[2][0]))
        out.append(real(mul[1]))
    pre, out = np.concatenate(pre), np.concatenate(out)
    s, z = details[mul[1]]["quantization"]
    lo, hi = (-128 - z) * s, (127 - z) * s
    np.testing.assert_array_equal(np.asarray(repair.swish_int8(pre)), repair.swish_int8(pre, chunk_bytes=4096))
    simulated = np.asarray(repair.fake_quant_tensor(repair.swish_int8(pre), lo, hi))
    once = np.asarray(repair.fake_quant_tensor(pre / (1 + np.exp(-pre)), lo, hi))
    assert np.mean(np.abs(simulated - out) < s / 2) > 0.99  # (rounding the float swish once: 0.96)
    assert np.abs(simulated - out).mean() < 0.2 * np.abs(once - out).mean()  # (measured: 1/28)

    def c2_bias():
        rep, _ = repair.apply(model, calib, errors=False)
        return next(layer for layer in rep.layers if layer.name.startswith("c2")).get_weights()[1]
    with_grid = c2_bias()
    monkeypatch.setattr(repair, "SWISH_GRID", False)
    assert not np.allclose(with_grid, c2_bias())  # the repair's pass uses it (bias correction sees its means)
