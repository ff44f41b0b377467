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


def test_the_runtime_gives_a_multilabel_files_labels_not_its_argmax():
    """`tledge run` on a multi-label file printed `always 0.996` for every photo (the argmax), never the labels that
    differ; with --threshold the user's threshold decides over every label."""
    import pytest
    from tiny import IMAGES, TINY, need

    need("model_fp32.tflite")
    from tledge.runtime import load
    from tledge.runtime.pipeline import Runner
    from tledge.runtime.sources import open_source

    model = load(TINY / "model_fp32.tflite")
    model.contract = model.contract.replace(extra={**model.contract.extra, "scores": "independent"})
    scores = np.array([0.9, 0.2, 0.7], np.float32)
    assert [p.index for p in model.top(scores)] == [0, 2] and [p.index for p in model.top(scores, 1)] == [0]
    assert model.top(np.array([0.1, 0.2, 0.3], np.float32)) == []  # no label given
    row = model.scores(model.predict(model.contract.prepare_batch(IMAGES[:1])))[0]
    want = [i for i in np.argsort(-row, kind="stable") if row[i] > 0.5]
    assert [p.index for p in model.classify(IMAGES[0])] == want
    results = list(Runner(model, threshold=0.05).run(open_source(str(IMAGES[0]))))
    assert [p.index for p in results[0].top] == [i for i in np.argsort(-row, kind="stable") if row[i] >= 0.05]
    with pytest.raises(Exception):
        model.classify(IMAGES[0], top_k=0)


def test_the_golden_set_keeps_clear_multilabel_images():
    """An always-on label made every top-1 margin the distance to it: the clear ants/bees images were left out and
    the ones near 0.5 kept; the export's own label-set flips stayed in and failed `parity --golden` on the board."""
    from tledge.runtime.golden import select

    rng = np.random.default_rng(0)
    clear = rng.choice([0.05, 0.95], size=(60, 2))
    near = 0.5 + rng.uniform(-0.04, 0.04, size=(20, 2))
    ref = np.hstack([np.vstack([clear, near]), np.ones((80, 1))]).astype(np.float32)  # + an always-on label
    picked = select(ref, None, 40, independent=True)
    assert len(picked) == 40 and picked.max() < 60  # none of the 20 near-0.5 images


def test_an_explicit_preprocessing_of_a_multilabel_model_is_not_called_near_chance():
    """Its argmax (an always-on label) matched no folder: "Keras accuracy 0.013 ... near chance" for a model that gave
    78 % of the images their folder's label."""
    from tledge.export.config import ExportConfig
    from tledge.export.contracting import near_chance

    y = np.repeat([0, 1], 15)
    ref = np.zeros((30, 3), np.float32)
    ref[np.arange(30), y], ref[:, 2] = 0.8, 0.99
    cfg = ExportConfig(preprocess="tf", val="val")
    assert near_chance(cfg, ref, y) is not None  # what the argmax says
    assert near_chance(cfg, ref, y, independent=True) is None
