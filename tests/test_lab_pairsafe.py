"""Pair-safe s8 weights (lab.quant.pairsafe): a QDQ U8S8 file whose u8 x s8 pair sums cannot saturate the AVX2
kernels, moving as few weights as it must (lab.quant.pairsafe: not in the export)."""
import sys

import numpy as np
import pytest

from conftest import REPO

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _qdq_conv(w: np.ndarray, bias: np.ndarray | None = None) -> bytes:
    """x (n, cin, 3, 3) float -> Q/DQ uint8 (scale 1, zp 0) -> Conv 1x1 with int8 weights w (cout, cin, 1, 1)."""
    from onnx import TensorProto, helper, numpy_helper

    cout, cin = w.shape[:2]
    inits = [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
             helper.make_tensor("zu", TensorProto.UINT8, [], [0]),
             numpy_helper.from_array(np.ones(cout, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(cout, np.int8), "wz"),
             numpy_helper.from_array(w.astype(np.int8), "w_quantized")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "one", "zu"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "one", "zu"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w_quantized", "ws", "wz"], ["wd"], axis=0)]
    conv_in = ["xd", "wd"]
    if bias is not None:
        inits += [numpy_helper.from_array(bias.astype(np.int32), "b_quantized"),
                  numpy_helper.from_array(np.ones(cout, np.float32), "bs"),
                  numpy_helper.from_array(np.zeros(cout, np.int32), "bz")]
        nodes.append(helper.make_node("DequantizeLinear", ["b_quantized", "bs", "bz"], ["bd"], axis=0))
        conv_in.append("bd")
    nodes.append(helper.make_node("Conv", conv_in, ["y"], name="pw"))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", cin, 3, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", cout, 3, 3])], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()


def _init(data: bytes, name: str = "w_quantized") -> np.ndarray:
    from onnx import numpy_helper

    m = onnx.load_from_string(data)
    return next(numpy_helper.to_array(i) for i in m.graph.initializer if i.name == name)


def _run(data: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the QDQ arithmetic, no int kernels
    s = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def _pixels(n=4, cin=8, top=255.0):
    return np.full((n, cin, 3, 3), top, np.float32)


def _saturating_weights():
    rng = np.random.default_rng(0)
    w = rng.integers(-40, 41, (6, 8, 1, 1))
    w[0, 0:2] = 127  # one same-sign pair at 2 x 255 x 127 = 64770
    w[3, 4:6] = -100  # another at 51000
    w[5, 2:4, 0, 0] = [127, -127]  # opposite signs: never over 255 x 127
    return w


def test_pairs_that_saturate_before_do_not_after_and_only_their_channels_change():
    from lab.quant import pairsafe
    from tledge.quant import saturation

    w = _saturating_weights()
    data = _qdq_conv(w, bias=np.arange(6) * 100)
    pixels = np.random.default_rng(1).uniform(0, 255, (4, 8, 3, 3)).astype(np.float32)
    pixels[0] = 255.0
    before = saturation.check(data, pixels)
    assert before[0].saturated > 0 and before[0].worst == 2 * 255 * 127
    safe, moved = pairsafe.make_safe(data)  # no images: bounded for any input, no bias correction
    after = saturation.check(safe, pixels)
    assert after[0].saturated == 0 and after[0].worst <= saturation.INT16_MAX
    assert pairsafe.is_safe(onnx.load_from_string(safe)) and not pairsafe.is_safe(onnx.load_from_string(data))
    new, scale = _init(safe).astype(int), _init(safe, "ws")
    assert {int(o) for o in np.argwhere(new != w)[:, 0]} <= {0, 3} and moved[0].coarser == 2
    grow = np.ones(6)
    grow[[0, 3]] = [255 * 254 / 32767, 255 * 200 / 32767]  # just coarse enough: the pair's sum / int16
    np.testing.assert_allclose(scale, grow, rtol=1e-6)
    assert np.all(np.abs(new * grow[:, None, None, None] - w) <= grow[:, None, None, None])  # within a new step
    np.testing.assert_allclose(_init(safe, "bs"), grow, rtol=1e-6)  # bias on the new grid, same real value
    assert np.all(np.abs(_init(safe, "b_quantized") * grow - np.arange(6) * 100) <= grow / 2 + 1e-9)
    np.testing.assert_allclose(_run(safe, pixels), _run(data, pixels), atol=2 * 127 * 2)  # same layer, coarser


def test_shrinking_only_the_pairs_moves_four_weights_just_under_the_bound():
    from lab.quant import pairsafe
    from tledge.quant import saturation

    w = _saturating_weights()
    safe, moved = pairsafe.make_safe(_qdq_conv(w), method="shrink")
    new = _init(safe)
    assert {(int(o), int(c)) for o, c, _, _ in np.argwhere(new != w.astype(np.int8))} == {(0, 0), (0, 1), (3, 4),
                                                                                          (3, 5)}
    assert moved[0].moved == 4 and moved[0].weights == w.size and moved[0].coarser == 0
    assert np.all(np.sign(new) * np.sign(w) >= 0) and np.all(np.abs(new) <= np.abs(w))  # towards zero only
    for o, c in ((0, 0), (3, 4)):  # one step back would saturate again
        total = 255 * (abs(int(new[o, c, 0, 0])) + abs(int(new[o, c + 1, 0, 0])))
        assert total <= saturation.INT16_MAX < total + 2 * 255


def test_observed_activation_bounds_move_nothing_that_cannot_saturate():
    """With activations that never pass 100 (calibration images), 2 x 100 x 127 fits int16: nothing moves; bounded
    by 255 (any input) the same pair's channel changes."""
    from lab.quant import pairsafe

    w = np.zeros((2, 4, 1, 1), np.int64)
    w[0, 0:2] = 127
    data = _qdq_conv(w, bias=np.zeros(2))
    same, moved = pairsafe.make_safe(data, _pixels(cin=4, top=100.0), observed=True, margin=1.25)
    assert moved == [] and same == data
    _, moved = pairsafe.make_safe(data)
    assert moved[0].coarser == 1 and moved[0].moved == 2


def test_bias_correction_puts_the_changes_mean_effect_back():
    from lab.quant import pairsafe

    w = np.zeros((2, 4, 1, 1), np.int64)
    w[1, 2:4] = 120
    w[1, 0] = 7  # rounded on the coarser grid too
    data = _qdq_conv(w, bias=np.zeros(2))
    pixels = _pixels(cin=4, top=200.0)  # every activation 200: the outputs' mean is their value
    safe, _ = pairsafe.make_safe(data, pixels)
    assert _init(safe, "ws")[1] > 1.8 and not np.array_equal(_init(safe), w)
    np.testing.assert_allclose(_run(safe, pixels), _run(data, pixels), atol=_init(safe, "ws")[1] / 2 + 1e-3)
    unfixed, _ = pairsafe.make_safe(data)
    assert np.abs(_run(unfixed, pixels) - _run(data, pixels)).max() > 50  # what the bias correction put back


def test_shrink_pairs_balanced_and_larger_first():
    from lab.quant.pairsafe import shrink_pairs

    w = np.array([[127, 127, 127, 1, -3]])
    a = np.full(5, 255)
    assert shrink_pairs(w, a, 32767).tolist() == [[64, 64, 127, 1, -3]]
    assert shrink_pairs(w, a, 32767, balanced=False).tolist() == [[1, 127, 127, 1, -3]]
    assert shrink_pairs(np.array([[127, -127]]), a[:2], 24575).tolist() == [[96, -96]]  # a Dense layer's headroom


def test_bias_correction_takes_its_images_from_all_the_calibration_classes():
    """The export reads calibration folders class by class: the first 64 images were one class (all ants), and the
    correction was that class's, not the calibration set's."""
    from lab.quant import pairsafe

    w = np.zeros((2, 4, 1, 1), np.int64)
    w[1, 2:4] = 120
    w[1, 0] = 7
    data = _qdq_conv(w, bias=np.zeros(2))
    pixels = np.concatenate([_pixels(n=64, cin=4, top=0.0), _pixels(n=64, cin=4, top=200.0)])  # two "classes"
    safe, _ = pairsafe.make_safe(data, pixels, images=64)
    mean_shift = (_run(safe, pixels) - _run(data, pixels)).mean(axis=(0, 2, 3))
    assert abs(mean_shift[1]) <= _init(safe, "ws")[1] / 2 + 1e-3, mean_shift  # the whole set's mean output kept


def _qdq_gemm(w: np.ndarray, bias: np.ndarray) -> bytes:
    """x (n, cin) float -> Q/DQ uint8 (scale 1, zp 0) -> Gemm (transB) with int8 weights w (cout, cin) and a FLOAT
    bias: what quantize_int8 writes for a Dense head (tledge.quant.constadds.float_gemm_biases)."""
    from onnx import TensorProto, helper, numpy_helper

    cout, cin = w.shape
    inits = [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
             helper.make_tensor("zu", TensorProto.UINT8, [], [0]),
             numpy_helper.from_array(np.full(cout, 0.5, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(cout, np.int8), "wz"),
             numpy_helper.from_array(w.astype(np.int8), "w_quantized"),
             numpy_helper.from_array(bias.astype(np.float32), "b")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "one", "zu"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "one", "zu"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w_quantized", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Gemm", ["xd", "wd", "b"], ["y"], name="head", transB=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", cin])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", cout])], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()


def test_bias_correction_moves_a_float_gemm_bias():
    """quantize_int8 writes a Dense head's bias as a float constant (for OpenCV): the correction went only into int32
    biases, so a Gemm's mean output moved by the coarsened weights' whole effect."""
    from lab.quant import pairsafe

    w = np.zeros((2, 4), np.int64)
    w[1, 2:4] = 120  # one same-sign pair at 2 x 200 x 120 = 48000: over the Gemm's headroom
    w[1, 0] = 7
    data = _qdq_gemm(w, np.zeros(2))
    pixels = np.full((32, 4), 200.0, np.float32)
    safe, moved = pairsafe.make_safe(data, pixels)
    assert moved and moved[0].node == "head"
    unfixed, _ = pairsafe.make_safe(data)
    assert np.array_equal(_init(unfixed, "w_quantized"), _init(safe, "w_quantized"))  # the same weights either way
    shift = np.abs((_run(safe, pixels) - _run(data, pixels)).mean(axis=0))
    before = np.abs((_run(unfixed, pixels) - _run(data, pixels)).mean(axis=0))
    assert before[1] > 10 and shift[1] <= _init(safe, "ws")[1] / 2 + 1e-3, (shift, before)
