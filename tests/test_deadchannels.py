"""Dead weight channels (BN folding leaves ~1e-12 weights beside an ordinary bias) must not lose their
bias in the int8 ONNX file: onnxruntime's per-channel bias scale cannot hold it and clips it."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _graph(path):
    from onnx import TensorProto, helper, numpy_helper

    w = np.zeros((3, 2, 1, 1), np.float32)
    w[0, :, 0, 0] = (0.8, -0.3)
    w[1, :, 0, 0] = (2e-12, -1e-12)  # a channel BN folding switched off
    w[2, :, 0, 0] = (-0.5, 0.9)
    b = np.array([0.1, 0.5, -0.05], np.float32)  # the dead channel's output is its (positive) bias
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"), helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3, 4, 4])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def _run(path, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("scheme, rel, kept", [("u8u8-grid", 1e-6, True), ("u8u8", 1e-6, True),
                                               ("u8s8", 1e-6, True), ("u8u8-grid", 0.0, False)])
def test_a_dead_channel_keeps_its_bias_in_the_int8_file(tmp_path, monkeypatch, scheme, rel, kept):
    """onnxruntime widens a too-small int8 (zero point 0) weight scale itself, but not a uint8 one: the
    U8U8 schemes, which the export uses when U8S8 would saturate on AVX2 (ROBUST_SCHEME)."""
    from tledge.export import onnx as onnx_export
    from tledge.quant import deadchannels

    monkeypatch.setattr(onnx_export, "INPUT_NAME", "x")
    monkeypatch.setattr(deadchannels, "REL", rel)
    _graph(tmp_path / "f.onnx")
    x = np.random.default_rng(0).uniform(-1, 1, (16, 2, 4, 4)).astype(np.float32)
    onnx_export.quantize_int8(tmp_path / "f.onnx", tmp_path / "q.onnx", x, scheme=onnx_export.SCHEMES[scheme])
    ref, got = _run(tmp_path / "f.onnx", x), _run(tmp_path / "q.onnx", x)
    step = ref.max() / 255
    assert np.abs(got[:, (0, 2)] - ref[:, (0, 2)]).max() <= 2 * step  # the live channels, either way
    dead_err = np.abs(got[:, 1] - ref[:, 1]).max()
    if kept:  # zeroed first: onnxruntime gives it weight scale 1, and the bias is exact
        assert dead_err <= step
    else:  # the old behaviour, kept here to show what the zeroing fixes: the bias is clipped to ~0
        assert dead_err > 0.4


def test_zero_dead_touches_only_dead_channels():
    from onnx import numpy_helper

    from tledge.quant.deadchannels import zero_dead

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        _graph(Path(tmp) / "f.onnx")
        model = onnx.load(str(Path(tmp) / "f.onnx"))
    before = numpy_helper.to_array(model.graph.initializer[0]).copy()
    assert zero_dead(model) == {"conv": 1}
    after = numpy_helper.to_array(model.graph.initializer[0])
    assert np.all(after[1] == 0) and np.array_equal(after[[0, 2]], before[[0, 2]])
    assert zero_dead(model) == {}  # idempotent: a zero channel is not "dead" twice
