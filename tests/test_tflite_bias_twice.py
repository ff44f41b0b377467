"""tledge.quant.tflite_bias on a file it already corrected: the committed tiny export (tests/assets/tiny).
Before, the correction's pairing checked weights only, so a corrected file (same weights, moved biases) got
the same shift added again on every call."""
import numpy as np
import pytest

from conftest import REPO

pytest.importorskip("ai_edge_litert")

from tledge.quant import tflite_bias as tb  # noqa: E402

TINY = REPO / "tests" / "assets" / "tiny"


@pytest.fixture(scope="module")
def files():
    from tledge.contract import Contract

    contract = Contract.load(TINY / "tledge.json")
    calib = np.stack([contract.prepare(f) for f in sorted((TINY / "images").iterdir())]).astype(np.float32)
    return (TINY / "model_int8.tflite").read_bytes(), (TINY / "model_fp32.tflite").read_bytes(), calib


def _biases(data: bytes) -> list[np.ndarray]:
    model = tb.load(data)
    return [tb.tensor_array(model, op.bias) for op in tb.linear_ops(model)]


def test_a_corrected_file_is_not_corrected_again(files):
    int8, fp32, calib = files
    once, log1 = tb.correct(int8, fp32, calib)
    assert log1.layers == 4 and log1.changed > 0 and not log1.skipped, log1.summary()
    twice, log2 = tb.correct(once, fp32, calib)
    assert log2.layers == 0 and log2.changed == 0, log2.summary()
    assert sum(log2.skipped.values()) == 4 and "bias already corrected" in log2.summary()
    for a, b in zip(_biases(once), _biases(twice)):
        np.testing.assert_array_equal(a, b)


def test_a_bias_one_step_off_still_counts_as_the_rounding(files):
    """The converter's own rounding (float32 quotient) may differ by one step: still a plain file."""
    int8, fp32, calib = files
    model = tb.load(int8)
    op = tb.linear_ops(model)[0]
    t = model.subgraphs[0].tensors[op.bias]
    b = tb.tensor_array(model, op.bias) + np.int32(1)
    model.buffers[t.buffer].data = np.frombuffer(b.astype("<i4").tobytes(), np.uint8).copy()
    _, log = tb.correct(tb.pack(model), fp32, calib)
    assert log.layers == 4 and not log.skipped, log.summary()


def test_an_op_paired_but_without_a_bias_is_not_counted(files):
    """Before, `by_name` counted at pairing, so an op paired by name and then skipped for having no bias
    tensor still counted, and the summary said "-1 by position"."""
    int8, fp32, calib = files
    model = tb.load(int8)
    first = tb.linear_ops(model)[0]
    op = next(o for o in model.subgraphs[0].operators if int(o.outputs[0]) == first.output)
    op.inputs = np.asarray([*op.inputs[:2], -1], np.int32)
    _, log = tb.correct(tb.pack(model), fp32, calib)
    assert log.layers == 3 and log.by_name <= log.layers, log.summary()
    assert "without a bias tensor" in log.summary() and "-1 by position" not in log.summary()
