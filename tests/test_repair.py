"""int8 repairs (tledge.quant.repair), per-layer diagnosis (explain) and float stems (selective).

Fast tests use tiny models at 32 px; the acceptance test on the issue's real model is slow/real."""
from __future__ import annotations

import importlib.util

from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, SHARED_ASSETS

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

from tledge.quant import explain, repair, selective  # noqa: E402

from lab.quant import quick  # noqa: E402
from tledge.layers import Preprocess, baked_norm, preprocess_layer  # noqa: E402

SIZE = 32


def _cle():
    """Cross-layer equalisation is a lab experiment (lab/quant/cle.py), outside the installed package."""
    import sys

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from lab.quant import cle

    return cle
STEM = 4  # the acceptance configuration: the first 4 convolutions float (docs/int8-fidelity.md)


def _randomise_bn(model, rng):
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 6.0, n), rng.normal(0.5, 1.0, n),
                               rng.normal(0, 0.5, n), rng.uniform(0.2, 3.0, n)])


def _tiny(seed=0, clip=6.0, built_in=False):
    """Pixels -> Preprocess -> nested backbone (conv/BN/ReLU6, depthwise, 1x1, padding) -> head."""
    keras.utils.set_random_seed(seed)
    L = keras.layers
    inner_in = keras.Input((SIZE, SIZE, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inner_in)
    x = L.ReLU(clip)(L.BatchNormalization()(x))
    x = L.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = L.ReLU(clip)(L.BatchNormalization()(x))
    x = L.ReLU(clip)(L.BatchNormalization()(L.Conv2D(16, 1, use_bias=False)(x)))
    x = L.ZeroPadding2D(((0, 1), (0, 1)))(x)
    x = L.DepthwiseConv2D(3, strides=2, padding="valid", use_bias=False)(x)
    x = L.ReLU(clip)(L.BatchNormalization()(x))
    x = L.ReLU(clip)(L.BatchNormalization()(L.Conv2D(24, 1, use_bias=False)(x)))
    backbone = keras.Model(inner_in, L.GlobalAveragePooling2D()(x), name="backbone")
    _randomise_bn(backbone, np.random.default_rng(seed))
    inp = keras.Input((SIZE, SIZE, 3), name="pixels")
    pre = preprocess_layer("tf") if built_in else Preprocess("tf", name="preprocess")  # new and old models
    h = L.Dropout(0.2)(backbone(pre(inp)))
    return keras.Model(inp, L.Dense(3, activation="softmax", name="head")(h), name="tiny")


@pytest.fixture(scope="module")
def tiny():
    return _tiny()


@pytest.fixture(scope="module")
def calib():
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 255, (48, 1, 1, 3))  # images with structure, integer pixels
    noise = rng.normal(0, 40, (48, SIZE, SIZE, 3))
    return np.clip(np.round(base + noise), 0, 255).astype(np.float32)


def _outputs(model, x):
    return repair.predict(model, x)


def _kinds(model):
    return [type(layer).__name__ for layer in model.layers]


def test_fold_bn_flattens_and_preserves_function(tiny, calib):
    folded, n = repair.fold_bn(tiny)
    assert n == 5
    kinds = _kinds(folded)
    assert "BatchNormalization" not in kinds and "Dropout" not in kinds and "Functional" not in kinds
    assert np.abs(_outputs(folded, calib) - _outputs(tiny, calib)).max() < 1e-4


def test_cle_is_function_preserving_through_relu6_when_bounded(tiny, calib):
    folded, _ = repair.fold_bn(tiny)
    for criterion in ("weights", "range", "auto"):
        eq, pairs = _cle().equalize(folded, calib, criterion=criterion, relu6="bound")
        assert pairs == 5  # conv->dw, dw->1x1, 1x1->(pad)->dw, dw->1x1, 1x1->(GAP)->dense
        assert np.abs(_outputs(eq, calib) - _outputs(folded, calib)).max() < 1e-4
    changed = [not np.allclose(a.get_weights()[0], b.get_weights()[0])
               for a, b in zip(folded.layers, eq.layers) if repair.linear_kind(a)]
    assert any(changed)


def test_cle_through_relu6_ignoring_the_clip_changes_the_function(tiny, calib):
    folded, _ = repair.fold_bn(tiny)
    eq, _ = _cle().equalize(folded, calib, criterion="weights", relu6="ignore")
    assert np.abs(_outputs(eq, calib) - _outputs(folded, calib)).max() > 1e-3


def test_cle_through_plain_relu_is_exact_on_unseen_data(calib):
    folded, _ = repair.fold_bn(_tiny(seed=3, clip=None))
    eq, _ = _cle().equalize(folded, calib, criterion="weights")
    fresh = np.random.default_rng(7).uniform(0, 255, (8, SIZE, SIZE, 3)).astype(np.float32)
    assert np.abs(_outputs(eq, fresh) - _outputs(folded, fresh)).max() < 1e-4


@pytest.mark.parametrize("built_in", [False, True])
def test_exact_input_shift_is_near_function_preserving(built_in, calib):
    folded, _ = repair.fold_bn(_tiny(built_in=built_in))
    shifted, ok = repair.exact_input(folded)
    assert ok
    found = [baked_norm(layer) for layer in shifted.layers if baked_norm(layer) is not None]
    assert len(found) == 1 and found[0][:2] == ("custom", [128.0] * 3)  # a built-in Rescaling now
    assert found[0][2] == pytest.approx([127.5] * 3, rel=1e-6)  # std read back from the float32 scale
    # only the zero-padded border differs, by 1/255 of a normalised unit times the weights
    assert np.abs(_outputs(shifted, calib) - _outputs(folded, calib)).max() < 2e-3


def _sim_error(model, reference, calib):
    return float(np.mean((_outputs(model, calib) - reference) ** 2))


def test_bias_correction_and_adaptive_rounding_reduce_simulated_error(tiny, calib):
    folded, _ = repair.fold_bn(tiny)
    ref = _outputs(folded, calib)
    kw = dict(act_quant=False)
    nearest = repair.quantize_weights(folded, calib, method="nearest", bias_correction=False, **kw)
    corrected = repair.quantize_weights(folded, calib, method="nearest", bias_correction=True, **kw)
    adaptive = repair.quantize_weights(folded, calib, method="adaptive", bias_correction=True, **kw)
    e_near, e_bc, e_ada = (_sim_error(m, ref, calib) for m in (nearest, corrected, adaptive))
    assert e_bc < e_near and e_ada < e_near
    # round-to-nearest in the pass is the plain per-channel rounding the converters do
    plain = repair.simulate_int8_weights(folded)
    assert np.abs(_outputs(plain, calib) - _outputs(nearest, calib)).max() < 1e-5


def test_relative_output_error_is_the_output_mse_of_the_rows():
    """The logged per-layer error from second moments equals the error computed on the rows themselves
    (grouped like a depthwise layer: G groups of d inputs, k outputs; the bias row last)."""
    rng = np.random.default_rng(0)
    g, m, d, k = 3, 40, 6, 2
    xf = rng.normal(size=(g, m, d))
    xq = xf + 0.05 * rng.normal(size=xf.shape)
    rows_f, rows_q = (np.concatenate([x, np.ones((g, m, 1))], 2) for x in (xf, xq))
    wf = rng.normal(size=(g, d + 1, k))
    w = wf + 0.02 * rng.normal(size=wf.shape)
    gram = lambda a, b: a.transpose(0, 2, 1) @ b  # noqa: E731
    direct = np.sum((rows_q @ w - rows_f @ wf) ** 2) / np.sum((rows_f @ wf) ** 2)
    got = repair.relative_output_error(w, wf, gram(rows_q, rows_q), gram(rows_q, rows_f), gram(rows_f, rows_f))
    assert got == pytest.approx(direct, rel=1e-9) and got > 1e-5


@pytest.fixture(scope="module")
def repaired(tiny, calib):
    model, log = repair.apply(tiny, calib)
    return model, log


def _on_grid(kernel_groups):
    scale = repair.grid_scale(kernel_groups)
    q = kernel_groups / np.where(scale > 0, scale, 1)
    return np.abs(q - np.round(q)).max() < 1e-3 and np.all(np.abs(q).max(axis=1)[scale[:, 0] > 0] > 126.999)


def test_apply_puts_every_kernel_on_the_int8_grid(repaired):
    model, log = repaired
    assert log.folded_bn == 5 and log.fold_max_abs < 1e-4 and len(log.layers) == 6
    for layer in model.layers:
        if repair.linear_kind(layer):
            g = repair.to_groups(type(layer).__name__, layer.get_weights()[0].astype(np.float64))
            assert _on_grid(g), layer.name
    assert "BN folded" in log.summary()


def test_call_layer_in_batches_equals_one_call_and_apply_layer(calib):
    """The repair pass calls each layer once on every image where they fit (a tensor back, no copies) and in
    batches where they do not (concatenated): the same values either way, and as apply_layer's arrays."""
    from tledge.quant.kerasgraph import call_layer

    conv = keras.layers.Conv2D(4, 3, padding="same")
    conv.build((None, SIZE, SIZE, 3))
    add = keras.layers.Add()
    whole = call_layer(conv, (calib,), max_bytes=1 << 30)
    assert keras.ops.is_tensor(whole)  # one call: the layer's own tensor
    for keep in (1 << 30, 1 << 10):  # batches concatenated as a tensor, or written into numpy (large outputs)
        parts = call_layer(conv, (calib,), max_bytes=5 * SIZE * SIZE * 3 * 4, keep_bytes=keep)  # 5 images per call
        assert isinstance(parts, np.ndarray) == (keep < 1 << 20)
        np.testing.assert_allclose(np.asarray(parts), np.asarray(whole), rtol=1e-6, atol=1e-5)
    assert isinstance(call_layer(conv, (calib,), max_bytes=1 << 30, keep_bytes=1 << 10), np.ndarray)
    np.testing.assert_allclose(repair.apply_layer(conv, (calib,)), np.asarray(whole), rtol=1e-6, atol=1e-5)
    summed = call_layer(add, ([whole, calib[..., :1]],), max_bytes=7 * SIZE * SIZE * 4 * 4)  # nested, broadcast
    np.testing.assert_allclose(np.asarray(summed), np.asarray(whole) + calib[..., :1], rtol=1e-6, atol=1e-4)
    assert np.asarray(summed).shape == (len(calib), SIZE, SIZE, 4)


def test_a_repair_told_to_stop_stops_before_its_next_kernel(tiny, calib):
    """--repair-time reaches into the pass: `stop` is asked before every kernel, and a reason ends the pass there."""
    from tledge.errors import RepairTimeout

    asked = []

    def stop():
        asked.append(1)
        return "repair time budget spent (301 s of 300 s)" if len(asked) == 3 else None
    with pytest.raises(RepairTimeout, match=r"^the weight repair stopped after 2 of 6 kernels: repair time budget "
                                            r"spent \(301 s of 300 s\)$"):
        repair.apply(tiny, calib, stop=stop, errors=False)
    asked.clear()
    repair.apply(tiny, calib, stop=lambda: asked.append(1), errors=False)  # never a reason: the whole pass
    assert len(asked) == 6
    from tledge.export.rungs import Shared  # the export's rungs hand the ladder's callback to the pass

    shared = Shared(tiny, None, calib, Path("unused"), stop=lambda: "repair time budget spent (9 s of 5 s)")
    with pytest.raises(RepairTimeout, match=r"stopped after 0 of 6 kernels: repair time budget spent \(9 s of 5 s\)"):
        shared.repaired_model(0)
    assert shared.repaired == {}  # nothing half-repaired is kept for the other format's ladder


def _keras_kernels_tflite_layout(model):
    out = {}
    for layer in model.layers:
        kind = repair.linear_kind(layer)
        if kind:
            w = layer.get_weights()[0]
            out[layer.name] = (w.T if kind == "Dense" else w.transpose(3, 0, 1, 2) if kind == "Conv2D"
                               else w.reshape(*w.shape[:2], -1)[None])
    return out


def test_pre_rounded_weights_survive_tflite_conversion_exactly(repaired, calib):
    from ai_edge_litert.interpreter import Interpreter

    model, _ = repaired
    it = Interpreter(model_content=quick.tflite_int8(model, calib))
    it.allocate_tensors()
    kernels, found = _keras_kernels_tflite_layout(model), set()
    for d in it.get_tensor_details():
        qp = d["quantization_parameters"]
        if d["dtype"] != np.int8 or len(qp["scales"]) < 1 or len(d["shape"]) < 2:
            continue
        try:
            q = it.get_tensor(d["index"])
        except ValueError:
            continue
        shape = [1] * q.ndim
        shape[qp["quantized_dimension"]] = -1
        deq = q.astype(np.float64) * qp["scales"].reshape(shape)
        for name, k in kernels.items():
            if k.shape == deq.shape and np.abs(deq - k).max() <= 1e-6 * np.abs(k).max():
                found.add(name)
    assert found == set(kernels)


def test_pre_rounded_weights_survive_onnx_qdq_exactly(repaired, calib):
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    model, _ = repaired
    q = onnx.load_from_string(quick.onnx_int8(quick.onnx_float(model), calib))
    init = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    kernels = {}
    for name, k in _keras_kernels_tflite_layout(model).items():  # OHWI / (1,H,W,C) / (out,in)
        kernels[name] = k.transpose(0, 3, 1, 2) if k.ndim == 4 and k.shape[0] != 1 else (
            k.transpose(3, 0, 1, 2) if k.ndim == 4 else k.T)
    found = set()
    for node in q.graph.node:
        w = init.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if w is None or w.dtype != np.int8:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * w.ndim
        shape[axis] = -1
        deq = w.astype(np.float64) * init[node.input[1]].reshape(shape)
        for name, k in kernels.items():
            if k.shape == deq.shape and np.abs(deq - k).max() <= 1e-6 * np.abs(k).max():
                found.add(name)
    assert found == set(kernels)


def test_repaired_int8_is_closer_to_the_float_model(tiny, repaired, calib):
    from ai_edge_litert.interpreter import Interpreter  # noqa: F401  (the runner uses it)

    ref = _outputs(tiny, calib)
    plain = quick.Runner(quick.tflite_int8(tiny, calib), "tflite").predict(calib)
    fixed = quick.Runner(quick.tflite_int8(repaired[0], calib), "tflite").predict(calib)
    assert np.mean(np.abs(fixed - ref)) <= np.mean(np.abs(plain - ref)) * 1.05


def test_explain_tflite_rows_and_markdown(tiny, calib):
    rows = explain.tflite_layer_errors(tiny, calib, debug_images=4)
    assert rows and all(r.backend == "tflite" and r.scale for r in rows)
    assert rows[0].rmse_scale == max(r.rmse_scale for r in rows)
    table = explain.markdown(rows, top=3)
    assert table.startswith("| tensor | op | rmse/scale") and len(table.splitlines()) == 5
    assert explain.worst(rows, 2) == [rows[0].name, rows[1].name]


def test_activation_sensitivity_ranks_quantised_tensors(tiny, calib):
    rows = explain.activation_sensitivity(tiny, calib, limit=8)
    names = [r.name for r in rows]
    assert "preprocess" in names and not any(n.startswith("conv2d") for n in names)  # fused into ReLU
    assert rows[0].rmse == max(r.rmse for r in rows) > 0
    assert explain.markdown(rows).startswith("| layer | kind | output RMS change")


def test_float_stems_keep_the_first_convolutions_float(repaired, calib):
    from ai_edge_litert.interpreter import Interpreter

    model, _ = repaired
    cal = selective.calibrate_tflite(model, calib)
    stem = selective.tflite_stem(cal, 2)
    it = Interpreter(model_content=selective.quantize_tflite(cal, keep_float=stem))
    dtypes = {d["name"]: d["dtype"] for d in it.get_tensor_details()}
    assert dtypes[stem[-1]] == np.float32
    later = [n for op, n in selective.tflite_ops(cal) if op == "CONV_2D"][-1]
    assert dtypes[later] == np.int8
    fo = quick.onnx_float(model)
    assert sum("Conv" in n for n in selective.onnx_stem(fo, 2)) >= 1
    assert repair.stem_layers(model, 2)[-1].startswith("re_lu")


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("int8_fidelity", REPO / "benchmarks" / "int8_fidelity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
@pytest.mark.real
def test_acceptance_hymenoptera_mobilenet(tmp_path_factory):
    """Issue 7: repaired int8 TFLite and ONNX (float stem of 4 convs, the rest int8) agree with
    Keras on >= 98% of hymenoptera/val, keep accuracy within 1 point and are no slower than 1.3x the
    plain int8 files. (Fully int8, stem 0, the repairs give 0.967-0.993 depending on run details.)"""
    if not (SHARED_ASSETS / "keras_imagenet_weights").is_dir():
        pytest.skip(f"shared assets not available at {SHARED_ASSETS}")
    bench = _benchmark_module()
    cache = tmp_path_factory.mktemp("int8")
    xt, yt = bench.load_split(SHARED_ASSETS, "train", 224, cache)
    xv, yv = bench.load_split(SHARED_ASSETS, "val", 224, cache)
    model = bench.build_mobilenet(SHARED_ASSETS, xt, yt, cache)
    rows = bench.run_family("mnv1", model, xt.astype("float32"), xv, yv, [STEM], repair.DEFAULT_STEPS, cache,
                            lambda msg: None)
    keras_acc = rows["keras"]["accuracy"]
    for fmt in ("tflite", "onnx"):
        r, plain = rows[f"repaired int8 stem{STEM} {fmt}"], rows[f"plain int8 {fmt}"]
        assert r["agreement"] >= 0.98, (fmt, r)
        assert abs(r["accuracy"] - keras_acc) <= 0.0101, (fmt, r)
        assert r["latency_ms"] <= 1.3 * plain["latency_ms"], (fmt, r, plain)


def test_apply_without_errors_gives_the_same_model(tiny, calib, repaired):
    """errors=False (the export's rungs) skips the logged per-layer errors and nothing else."""
    model, log = repaired
    fast, fast_log = repair.apply(tiny, calib, errors=False)
    assert all(np.isnan(r.err_nearest) and np.isnan(r.err_repaired) for r in fast_log.layers)
    assert all(r.err_repaired < r.err_nearest for r in log.layers if r.kind != "Dense")
    for a, b in zip(model.layers, fast.layers):
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(wa, wb)


def test_gptq_rounds_to_nearest_where_calibration_rows_are_under_half_the_kernel_rows():
    """Strongly rank-deficient moments (a squeeze-excite or head layer: one row per image) get nearest rounding; full-rank
    ones get GPTQ's compensation, which moves some roundings off nearest."""
    from tledge.quant import moments

    rng = np.random.default_rng(0)
    d, k = 64, 3
    wf = np.concatenate([rng.normal(size=(1, d, k)), rng.normal(size=(1, 1, k))], 1)
    scale = repair.grid_scale(wf[:, :-1])

    def moments_of(n):
        x = np.concatenate([rng.normal(size=(n, d)) + rng.normal(size=(1, d)), np.ones((n, 1))], 1)
        return moments.Moments(hqq=(x.T @ x)[None], fsum=x.sum(0)[None], hqf=None, hff=None, sub_qq=None)

    few, many = moments_of(d // 4), moments_of(8 * d)
    assert repair.undersampled(few.hqq) and not repair.undersampled(many.hqq)
    near = repair.round_nearest(wf[:, :-1], scale)
    np.testing.assert_allclose(repair.rounded(wf, few, scale)[:, :-1], near)
    assert not np.allclose(repair.rounded(wf, many, scale)[:, :-1], near)
