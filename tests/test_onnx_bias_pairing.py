"""tledge.quant.onnx_bias pairs a float graph's layers with the QDQ file's only where the int8 weights are the
rounding of the float ones (the committed tiny export, tests/assets/tiny). Before, it compared shapes only: a
float graph that was not the quantised one's (BN unfolded, another model) got shifts 10^6 times its biases."""
import numpy as np
import pytest

from conftest import REPO

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import numpy_helper  # noqa: E402

from tledge.errors import TledgeError  # noqa: E402
from tledge.quant import onnx_bias  # noqa: E402

TINY = REPO / "tests" / "assets" / "tiny"


@pytest.fixture(scope="module")
def calib():
    from tledge.contract import Contract

    contract = Contract.load(TINY / "tledge.json")
    return np.stack([contract.prepare(f) for f in sorted((TINY / "images").iterdir())]).astype(np.float32)


def _no_quantize(*_):
    raise AssertionError("the QDQ file is given")


def _scaled(tmp_path, layers: int):
    """The tiny float graph with the weights of its first `layers` linear layers scaled by 1.1."""
    model = onnx.load(str(TINY / "model_fp32.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    for node in [n for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")][:layers]:
        w = numpy_helper.to_array(inits[node.input[1]])
        inits[node.input[1]].CopyFrom(numpy_helper.from_array((w * 1.1).astype(w.dtype), node.input[1]))
    path = tmp_path / f"scaled{layers}.onnx"
    onnx.save(model, str(path))
    return path


def test_the_int8_files_own_float_graph_pairs(calib, tmp_path):
    log = onnx_bias.correct(TINY / "model_fp32.onnx", tmp_path / "bc.onnx", calib, _no_quantize,
                            qdq=TINY / "model_int8.onnx")
    assert log.layers >= 3 and 0.0 < log.relative_shift < 1.0, log.summary()


def test_a_layer_whose_int8_weights_are_not_its_rounding_is_skipped(calib, tmp_path):
    plain = onnx_bias.correct(TINY / "model_fp32.onnx", tmp_path / "a.onnx", calib, _no_quantize,
                              qdq=TINY / "model_int8.onnx")
    log = onnx_bias.correct(_scaled(tmp_path, 1), tmp_path / "b.onnx", calib, _no_quantize,
                            qdq=TINY / "model_int8.onnx")
    assert log.layers == plain.layers - 1 and log.skipped == plain.skipped + 1, log.summary()
    assert "skipped" in log.summary()


def test_no_layer_pairing_is_one_clear_error(calib, tmp_path):
    src = _scaled(tmp_path, 99)  # every layer: 3 Conv and the dense MatMul
    with pytest.raises(TledgeError, match="none of the 4 linear layers has an int8 twin"):
        onnx_bias.correct(src, tmp_path / "c.onnx", calib, _no_quantize, qdq=TINY / "model_int8.onnx")
    assert not (tmp_path / "c.onnx").exists()
