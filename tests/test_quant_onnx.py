"""Graph-level int8 pieces for ONNX: quantisation schemes, bias correction on the float graph, and
the kernel-path check (tledge.export.onnx, tledge.quant.onnx_bias)."""
import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def tiny_onnx(tiny_export, shapes_dataset):
    from tledge.export.imagesets import load_pixels

    calib, _ = load_pixels(shapes_dataset / "train", tiny_export.contract, 64)
    val, y = load_pixels(shapes_dataset / "val", tiny_export.contract, 200, tiny_export.contract.labels)
    return tiny_export.out / "model_fp32.onnx", calib, val, y


def _run(path, x):
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _conv_weight_ranges(path):
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    out = {}
    for n in m.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 4:
            w = inits[n.input[0]].astype(int)
            out[n.input[0]] = (w.dtype, int(w.min()), int(w.max()), inits[n.input[0]].dtype)
    return out


@pytest.mark.parametrize("name", ["u8s8", "u8s8-rr", "u8u8", "u8u8-grid"])
def test_schemes_put_weights_where_they_say(tiny_onnx, tmp_path, name):
    from tledge.export import onnx as ox

    fp32, calib, val, _ = tiny_onnx
    dst = tmp_path / f"{name}.onnx"
    ox.quantize_int8(fp32, dst, calib, scheme=ox.SCHEMES[name])
    ranges = _conv_weight_ranges(dst)
    assert ranges
    for _, lo, hi, dtype in ranges.values():
        if name == "u8u8-grid":  # the symmetric int8 grid stored as uint8: 128 +- 127, the extreme reached
            assert dtype == np.uint8 and 1 <= lo and hi <= 255 and (lo == 1 or hi == 255)
        elif name == "u8u8":
            assert dtype == np.uint8
        elif name == "u8s8-rr":  # 7-bit weights: no u8 x s8 pair sum can leave int16 (AVX2 vpmaddubsw)
            assert dtype == np.int8 and -64 <= lo and hi <= 64 and 2 * 255 * max(-lo, hi) < 32768
        else:
            assert dtype == np.int8 and max(-lo, hi) == 127
    agree = np.mean(np.argmax(_run(dst, val), 1) == np.argmax(_run(fp32, val), 1))
    assert agree >= 0.8, agree
    assert ox.SCHEMES[name].describe().startswith("QDQ U8")


def test_bias_correction_moves_int8_means_to_the_float_ones(tiny_onnx, tmp_path):
    from tledge.export import onnx as ox
    from tledge.quant import onnx_bias

    fp32, calib, val, _ = tiny_onnx
    pre = ox.preprocess(fp32, tmp_path / "pre.onnx")
    fixed = tmp_path / "fixed.onnx"
    log = onnx_bias.correct(pre, fixed, calib, ox.quantize_int8)
    assert log.layers >= 4 and 0.0 < log.relative_shift < 1.0
    # the corrected float graph is nearly the float model (biases moved by the small int8 shifts)
    assert np.mean(np.argmax(_run(fixed, val), 1) == np.argmax(_run(fp32, val), 1)) >= 0.97
    ox.quantize_int8(pre, tmp_path / "plain.onnx", calib)
    ox.quantize_int8(fixed, tmp_path / "bc.onnx", calib)
    # what the correction is for: the int8 model's mean output moves to the float model's
    ref = _run(fp32, calib).mean(0)
    err = {k: float(np.abs(_run(tmp_path / k, calib).mean(0) - ref).sum()) for k in ("plain.onnx", "bc.onnx")}
    assert err["bc.onnx"] < err["plain.onnx"], err


def test_kernel_check_runs_every_path_and_names_the_cpu(tiny_export, tiny_onnx):
    from tledge.quant import kernels as ox

    _, _, val, _ = tiny_onnx
    outs = ox.run_paths(tiny_export.out / "model_int8.onnx", val[:40])
    assert set(outs) == {"default", "x64quantprecision", "reference"}
    assert all(o.shape == (len(val[:40]), 3) for o in outs.values())
    note, same = ox.kernel_check(tiny_export.out / "model_int8.onnx", val[:40])
    assert "model_int8.onnx on onnxruntime's kernel paths (" in note and ox.cpu_flags().split(":")[0] in note
    assert same == all(np.mean(np.argmax(o, 1) == np.argmax(outs["default"], 1)) >= 0.995 for o in outs.values())


def test_pair_sums_saturate_exactly_where_int16_overflows():
    from tledge.quant import saturation

    x = np.array([[255, 255, 255, 1], [10, 10, 10, 10]], np.int32)  # two positions, K = 4 (two pairs)
    w = np.array([[127, 127, 64, 63], [-128, -128, 1, 1]], np.int32)  # two output channels
    r = saturation.pair_sums("conv", "w", x, w)
    # pair sums: 255*127*2 = 64770 (over), 255*64 + 1*63 (under), -65280 (over), 256; then 2540, 1270, -2560, 20
    assert (r.pairs, r.saturated, r.worst) == (8, 2, 65280)
    assert saturation.pair_sums("conv", "w", x[:, :3], w[:, :3]).pairs == 8  # odd K is zero-padded


def _qdq_dense(weight: int, k: int = 4):
    """x (float, N x k) -> QuantizeLinear (uint8, scale 1) -> DequantizeLinear -> MatMul with int8 weights `weight`."""
    from onnx import TensorProto, helper

    inits = [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
             helper.make_tensor("zu", TensorProto.UINT8, [], [0]), helper.make_tensor("zs", TensorProto.INT8, [], [0]),
             helper.make_tensor("w_quantized", TensorProto.INT8, [k, 2], [weight] * (2 * k))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "one", "zu"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "one", "zu"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w_quantized", "one", "zs"], ["wd"]),
             helper.make_node("MatMul", ["xd", "wd"], ["y"], name="dense")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m.SerializeToString()


def test_a_dense_layers_pair_sums_are_replayed_on_every_calibration_image():
    """Only convolutions were replayed: a Dense head on the same u8 x s8 kernels, saturating on AVX2 (pair sums to
    37328 on 3 of 153 photos), shipped as U8S8. Its rows are few, so 3/4 of int16 counts."""
    from tledge.quant import saturation

    pixels = np.zeros((40, 4), np.float32)
    pixels[33] = 255.0  # one image of 40 (past the 8 the convolutions are replayed on) holds the peak
    over, near, under = (saturation.check(_qdq_dense(w), pixels) for w in (127, 55, 40))
    assert [(r.node, r.saturated > 0, r.worst) for r in over] == [("dense", True, 2 * 255 * 127)]
    assert near[0].worst == 2 * 255 * 55 and near[0].saturated  # 28050: under int16, over the headroom
    assert under[0].worst == 2 * 255 * 40 and not under[0].saturated


def test_saturation_replay_on_a_real_file_and_the_auto_scheme(tiny_onnx, tmp_path):
    from tledge.export import onnx as ox
    from tledge.quant import saturation

    fp32, calib, _, _ = tiny_onnx
    rr = tmp_path / "rr.onnx"
    ox.quantize_int8(fp32, rr, calib, scheme=ox.SCHEMES["u8s8-rr"])
    layers = saturation.check(rr.read_bytes(), calib)
    assert layers and all(lay.pairs > 0 and lay.saturated == 0 and lay.worst <= 2 * 255 * 64 for lay in layers)
    full = tmp_path / "full.onnx"
    ox.quantize_int8(fp32, full, calib, scheme=ox.SCHEMES["u8s8"])
    worst = max(lay.worst for lay in saturation.check(full.read_bytes(), calib))
    assert worst > max(lay.worst for lay in layers)  # 8-bit weights reach further
    auto = tmp_path / "auto.onnx"
    used = ox.quantize_int8(fp32, auto, calib)
    saturates = any(lay.saturated for lay in saturation.check(full.read_bytes(), calib))
    assert used == ox.SCHEMES[ox.ROBUST_SCHEME if saturates else "u8s8"]
    assert ox.scheme_of(auto) == used


def test_tap_means_of_a_matmul_on_tokens_are_per_input_channel():
    """A MatMul on (batch, tokens, channels) (an attention block's projection, a Dense on tokens) had its input
    flattened to tokens x channels: bias correction (rung onnx-bias) failed with a shape error on every ViT-like
    graph, and the ladder went on without it."""
    from onnx import TensorProto, helper

    from tledge.quant import onnx_bias

    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 8)).astype(np.float32)
    inits = [helper.make_tensor("w", TensorProto.FLOAT, [8, 8], w.ravel().tolist()),
             helper.make_tensor("b", TensorProto.FLOAT, [8], [0.0] * 8)]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"], name="proj"),
             helper.make_node("Add", ["xw", "b"], ["y"], name="bias")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 8])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    assert [n for n, _, _ in onnx_bias.linear_nodes(m)] == ["proj"]
    x = rng.normal(size=(5, 4, 8)).astype(np.float32)
    taps = onnx_bias.tap_means(m.SerializeToString(), [nodes[0]], x, batch=2)["proj"]
    assert taps.shape == (8,) and np.allclose(taps, x.reshape(-1, 8).mean(0), atol=1e-6)


def test_unfused_session_adds_inner_tensors_once_and_runs_them_unoptimised():
    """tledge.quant.unfused.session, the session of the bias correction, the activation ranges and sensitivity:
    graph optimisation off, inner tensors asked for become outputs once (already outputs or asked twice: once)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from tledge.quant import unfused

    rng = np.random.default_rng(1)
    w = rng.normal(size=(8, 3)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Relu", ["xw"], ["y"])],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
                          initializer=[helper.make_tensor("w", TensorProto.FLOAT, [8, 3], w.ravel().tolist())])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    x = rng.normal(size=(4, 8)).astype(np.float32)
    plain = unfused.session(m.SerializeToString())
    assert [o.name for o in plain.get_outputs()] == ["y"]
    assert plain.get_session_options().graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = unfused.session(m.SerializeToString(), ["xw", "y", "xw"])
    assert [o.name for o in sess.get_outputs()] == ["y", "xw"]
    y, xw = sess.run(None, {"x": x})
    assert np.allclose(xw, x @ w, atol=1e-5) and np.allclose(y, np.maximum(x @ w, 0), atol=1e-5)
    unfused.session(m, ["xw"])  # a ModelProto is changed in place (the callers' own copies)
    assert [o.name for o in m.graph.output] == ["y", "xw"]
