"""Parity of independent (multi-label) scores (helper 135): the argmax agreed 1.000 while int8 put 15 labels of 11
images on the other side of 0.5 (what a multi-label client thresholds), the argmax "accuracy" against class folders
was 0.000, and two labels both at 1.0 would have been a "tie for top-1"."""
from __future__ import annotations

import numpy as np

from tledge.artifacts import Thresholds
from tledge.contract import Contract
from tledge.parity import compare, independent_scores

REF = np.array([[0.9, 0.2, 0.99], [0.1, 0.8, 0.99], [0.7, 0.45, 0.98], [0.2, 0.9, 1.0]], np.float32)


def test_label_sets_not_the_argmax_decide_agreement():
    out = REF.copy()
    out[2, 1] = 0.55  # the third image gains a label; its argmax (the always-on third) is unchanged
    t = Thresholds.for_precision("int8")
    argmax = compare(REF, out, file="m.tflite", format="tflite", precision="int8", thresholds=t)
    assert argmax.top1_agreement == 1.0  # what parity measured before
    res = compare(REF, out, file="m.tflite", format="tflite", precision="int8", thresholds=t, independent=True)
    assert res.top1_agreement == 0.75 and res.agreement_of == "label sets" and not res.passed
    assert "label sets agreement 0.750" in res.failures[0] and "side of 0.5" in res.failures[0]


def test_folder_accuracy_is_the_folders_label_given_and_saturated_labels_are_no_tie():
    t = Thresholds.for_precision("int8")
    labels = np.array([0, 1, 0, 1])
    ones = np.array([[1.0, 0.1, 1.0], [0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], np.float32)
    res = compare(ones, ones, file="m.onnx", format="onnx", precision="int8", thresholds=t, labels=labels,
                  independent=True)
    assert res.passed, res.failures  # (argmax: "4 images with a tie for top-1", accuracy 0.500)
    assert res.accuracy == res.reference_accuracy == 1.0
    many = np.tile(REF, (1, 8))  # 24 labels: still label sets, not top-5 of a many-class softmax
    assert compare(many, many, file="m", format="onnx", precision="int8", thresholds=t,
                   independent=True).top_k is None


def test_which_contracts_have_independent_scores():
    c = Contract(8, 8, labels=("a", "b"))
    assert not independent_scores(c) and not independent_scores(None)
    assert independent_scores(c.replace(extra={"scores": "independent"}))
