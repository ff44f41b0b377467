"""Adaptive re-rounding of the int8 QDQ ONNX file (lab/quant/onnx_rounding.py: measured, not a rung) on a
SavedModel export of the tiny trained model: the layouts round trip, nearest rounding gives back the
quantiser's own weights on both weight grids (int8, and uint8 on the symmetric int8 grid), 7-bit weights
are left alone, the re-rounded file is closer to the float graph op by op and at the output, and it keeps
its metadata."""
import sys

import numpy as np
import pytest
from conftest import REPO

pytest.importorskip("tensorflow")
pytest.importorskip("onnxruntime")

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from lab.quant import onnx_rounding as orr  # noqa: E402


@pytest.fixture(scope="module")
def sm_files(tiny_model, shapes_dataset, tmp_path_factory):
    """(plain QDQ bytes, pre-processed fp32 bytes, calibration pixels in the graphs' layout, export result)
    of the tiny model as a SavedModel."""
    from tledge.export import onnx as onnx_export
    from tledge.export.pipeline import ExportConfig, export
    from tledge.images import labelled_images

    d = tmp_path_factory.mktemp("onnx_rounding")
    tiny_model["model"].export(str(d / "sm"), verbose=False)
    cfg = ExportConfig(out=d / "e", formats=("onnx",), int8=True, calib=str(shapes_dataset / "train"),
                       preprocess="raw", val=str(shapes_dataset / "val"), repair=False)
    res = export(d / "sm", cfg)
    src = d / "fp32.onnx"
    src.write_bytes(onnx_export.float_input((res.out / "model_fp32.onnx").read_bytes()))
    pre = onnx_export.preprocess(src, d / "pre.onnx").read_bytes()
    files, _, _ = labelled_images(shapes_dataset / "train")
    calib = np.stack([tiny_model["contract"].prepare(f) for f in files]).astype(np.float32)
    calib = onnx_export.Conventions.of(res.contract).calib(calib)
    return (res.out / "model_int8.onnx").read_bytes(), pre, calib, res


def _quantised(pre: bytes, calib, scheme: str, tmp_path) -> bytes:
    from tledge.export import onnx as onnx_export

    src, dst = tmp_path / "pre.onnx", tmp_path / f"{scheme}.onnx"
    src.write_bytes(pre)
    onnx_export.quantize_int8(src, dst, calib, scheme=onnx_export.SCHEMES[scheme])
    return dst.read_bytes()


def _inits(data: bytes) -> dict:
    import onnx
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in onnx.load_from_string(data).graph.initializer}


@pytest.mark.parametrize("kind,shape,channels,out", [("conv", (5, 4, 3, 2), 4, 5), ("depthwise", (8, 1, 3, 3), 4, 2),
                                                     ("dense", (7, 3), 7, 3), ("dense_t", (3, 7), 7, 3)])
def test_layouts_round_trip(kind, shape, channels, out):
    w = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    k = orr.to_keras(kind, w, channels)
    assert k.shape[-1] == out and k.shape[-2] == (channels if kind != "depthwise" else 4)
    np.testing.assert_array_equal(orr.from_keras(kind, k), w)
    if kind == "depthwise":  # ONNX group conv: output channel c*m + j reads input c -> Keras (kh, kw, c, j)
        assert k[1, 2, 3, 1] == w[3 * 2 + 1, 0, 1, 2]
    if kind == "conv":
        assert k[2, 1, 3, 4] == w[4, 3, 2, 1]


def test_same_padding_is_recognised_and_other_padding_made_explicit():
    # MobileNet's stride-2 convolutions: tf2onnx writes TensorFlow's SAME as explicit pads [0, 0, 1, 1]
    assert orr.same_pads((112, 112), (3, 3), (2, 2), (1, 1)) == [0, 0, 1, 1]
    assert orr.same_pads((7, 7), (3, 3), (1, 1), (1, 1)) == [1, 1, 1, 1]
    node = orr.QNode("n", "conv", {"pads": [1, 1, 1, 1], "strides": [2, 2]}, "x", "x", None, "w",
                     np.ones(1), np.zeros(1), None, None)
    geo, pads = orr.geometry(node, np.zeros((3, 3, 4, 5)), (8, 8))  # SAME would be [0, 0, 1, 1]
    assert geo.padding == "valid" and pads == [1, 1, 1, 1]
    x = np.ones((2, 4, 8, 8))
    assert orr.to_nhwc(x, pads).shape == (2, 10, 10, 4) and orr.to_nhwc(x, pads)[:, 0].sum() == 0
    geo, pads = orr.geometry(node, np.zeros((3, 3, 4, 5)), (7, 7))  # 7 px, stride 2: SAME is [1, 1, 1, 1]
    assert geo.padding == "same" and pads is None


@pytest.mark.parametrize("scheme", ["u8s8", "u8u8-grid"])
def test_nearest_without_bias_correction_gives_back_the_quantisers_weights(sm_files, scheme, tmp_path):
    """Round to nearest on the file's own scales and zero points, biases from the float graph: every
    quantised weight comes back exactly and every int32 bias within one step (layouts, scales, zero
    points and pairing are right), for int8 weights and for uint8 weights on the symmetric int8 grid."""
    _, pre, calib, _ = sm_files
    q = _quantised(pre, calib, scheme, tmp_path)
    data, log = orr.correct(q, pre, calib, method="nearest", bias_correction=False, images=4, min_rows=0)
    import onnx

    nodes = orr.linear_nodes(onnx.load_from_string(q), orr.RoundingLog())
    convs = [n for n in nodes if n.kind in ("conv", "depthwise")]
    assert len(convs) >= 2 and log.layers >= len(convs) and log.changed == 0, log.summary()
    before, after = _inits(q), _inits(data)
    assert {before[n.weight].dtype for n in convs} == {np.dtype(np.int8 if scheme == "u8s8" else np.uint8)}
    for n in nodes:
        np.testing.assert_array_equal(after[n.weight], before[n.weight])
        if n.bias:
            assert np.abs(after[n.bias].astype(np.int64) - before[n.bias]).max() <= 1


def test_seven_bit_weights_are_left_as_quantised(sm_files, tmp_path):
    """reduce_range weights live on a +-64 grid the rounding does not produce: every op is skipped, the
    file is unchanged."""
    _, pre, calib, _ = sm_files
    q = _quantised(pre, calib, "u8s8-rr", tmp_path)
    data, log = orr.correct(q, pre, calib, images=4, min_rows=0)
    assert log.layers == 0 and log.skipped.get("not on the full per-channel int8 grid", 0) >= 2, log.summary()
    before, after = _inits(q), _inits(data)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def _outputs(data: bytes, x, names, optimise=False):
    return orr.read_tensors(data, x, names, optimise=optimise)


def test_rerounded_file_is_closer_to_the_float_graph_op_by_op(sm_files):
    """After the re-rounding each convolution's per-channel mean output (on the calibration images) is
    no farther from the float node's than before, and the model output's error is smaller."""
    import onnx

    int8, pre, calib, _ = sm_files
    data, log = orr.correct(int8, pre, calib, min_rows=0)
    assert log.layers >= 3 and log.changed > 0 and log.runs >= log.layers, log.summary()
    model = onnx.load_from_string(int8)
    outs = {n.name: n.output[0] for n in model.graph.node}
    f_outs = {n.name: n.output[0] for n in onnx.load_from_string(pre).graph.node}
    nodes = [n for n in orr.linear_nodes(model, orr.RoundingLog()) if n.name in f_outs]
    x = calib[:orr.IMAGES]
    names = [outs[n.name] for n in nodes]
    before, after = _outputs(int8, x, names), _outputs(data, x, names)
    ref = _outputs(pre, x, [f_outs[n.name] for n in nodes])
    for n in nodes:
        o = outs[n.name]
        axes = (0, 2, 3) if before[o].ndim == 4 else (0,)
        err = {k: float(np.abs(v[o].mean(axes) - ref[f_outs[n.name]].mean(axes)).mean())
               for k, v in (("before", before), ("after", after))}
        spread = float(np.abs(ref[f_outs[n.name]]).mean())
        assert err["after"] <= max(err["before"], 0.02 * spread), (n.name, err)
    out = model.graph.output[0].name
    y0, y1 = (_outputs(d, x, [out], optimise=True)[out] for d in (int8, data))
    yf = _outputs(pre, x, [out])[out]
    assert np.abs(y1 - yf).mean() < np.abs(y0 - yf).mean()


def test_rerounded_file_loads_and_keeps_its_metadata(sm_files, tmp_path):
    import onnxruntime as ort

    from tledge.metadata import read_contract

    int8, pre, calib, res = sm_files
    data, log = orr.correct(int8, pre, calib, images=8)
    assert log.layers >= 1
    dst = tmp_path / "model_int8.onnx"
    dst.write_bytes(data)
    assert read_contract(dst) == read_contract(res.out / "model_int8.onnx")
    sess = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = calib[:4] if inp.type == "tensor(float)" else calib[:4].astype(np.uint8)
    y = sess.run(None, {inp.name: x})[0]
    assert y.shape == (4, len(res.contract.labels)) and np.allclose(y.sum(1), 1, atol=1e-2)
