"""The output kind of a float TFLite file made elsewhere, read from the op that makes its output (session 37): a
one-logit file was read as a probability (p = the logit, shown as [1 - p, p]: the wrong label whenever the logit
fell in 0..1 on the wrong side of 0.5), and a many-class file's logits were shown as scores or refused unless
--logits was given. Files: tests/assets/heads (python -m tests.assets.make_heads)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny import CLASSES, images_of, need

from tledge.errors import ContractError
from tledge.runtime import load
from tledge.runtime.onnxgraph import tflite_output_op

HEADS = Path(__file__).resolve().parent / "assets" / "heads"
IMG = str(images_of(CLASSES[0])[0])


def _raw(m) -> np.ndarray:
    return np.asarray(m.backend.run(m.quantize(m.prepare(IMG)[None]))[0], np.float64).reshape(-1)


@pytest.mark.parametrize("name, op", [("logit1", "FULLY_CONNECTED"), ("sigmoid1", "LOGISTIC"),
                                      ("logits3", "FULLY_CONNECTED"), ("softmax3", "SOFTMAX")])
def test_the_op_that_makes_the_output_is_read_without_an_interpreter(name, op):
    assert tflite_output_op(HEADS / f"{name}.tflite") == op


def test_a_one_logit_float_file_is_read_as_a_logit():
    need("x.tflite")
    m = load(HEADS / "logit1.tflite", preprocess="raw")
    raw = float(_raw(m)[0])
    assert 0.0 < raw < 1.0 and m.contract.output.value == "logits"
    p = 1 / (1 + np.exp(-raw))
    top = m.classify([IMG], top_k=2)[0]
    assert {t.index: round(t.score, 5) for t in top} == {1: round(p, 5), 0: round(1 - p, 5)}
    s = load(HEADS / "sigmoid1.tflite", preprocess="raw")
    assert s.contract.output.value == "probabilities"
    assert s.classify([IMG], top_k=2)[0][0].score == pytest.approx(max(p, 1 - p), abs=1e-5)


def test_many_logits_are_softmaxed_and_a_softmax_is_not_taken_twice():
    need("x.tflite")
    m = load(HEADS / "logits3.tflite", preprocess="raw")
    raw = _raw(m)
    assert np.all((raw > 0) & (raw < 1)) and m.contract.output.value == "logits"  # were shown as the scores
    e = np.exp(raw - raw.max())
    top = m.classify([IMG], top_k=3)[0]
    assert [round(t.score, 5) for t in top] == [round(v, 5) for v in sorted(e / e.sum(), reverse=True)]
    assert load(HEADS / "softmax3.tflite", preprocess="raw").contract.output.value == "probabilities"
    with pytest.raises(ContractError, match="a second softmax"):
        load(HEADS / "softmax3.tflite", preprocess="raw", logits=True)


def test_a_file_that_is_no_flatbuffer_has_no_output_op(tmp_path):
    for data in (b"", b"TFL3", (HEADS / "logit1.tflite").read_bytes()[:200]):
        (tmp_path / "bad.tflite").write_bytes(data)
        assert tflite_output_op(tmp_path / "bad.tflite") is None


def test_a_quantised_output_made_by_a_linear_op_holds_logits():
    """(Helper 96: ai-edge-torch's and onnx2tf's integer files end in an int8 FULLY_CONNECTED; with the output's
    quantisation over 0..0.5 nothing else says logits, and `run` showed `bees 0.473, ants 0.000`.)"""
    need("x.tflite")
    m = load(HEADS / "logits3_int8.tflite", preprocess="raw")
    assert tflite_output_op(HEADS / "logits3_int8.tflite") == "FULLY_CONNECTED"
    assert m.contract.output.value == "logits"
    top = m.classify([IMG], top_k=3)[0]
    assert abs(sum(t.score for t in top) - 1.0) < 1e-5 and top[-1].score > 0.2  # a softmax over near-equal logits
