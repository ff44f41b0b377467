"""The statistical parity gate: intervals, McNemar, top-k agreement for many classes, small-set warnings."""
import math

import numpy as np
import pytest

from tledge import stats
from tledge.export.parity import ParityReport, Thresholds, compare

INT8 = Thresholds(min_agreement=0.98, max_accuracy_drop=0.01)


def test_wilson_matches_textbook_values():
    # Newcombe (1998) table I: 81/263 -> 0.2553..0.3662; 15/148 -> 0.0624..0.1605; 0/10 -> 0..0.2775
    assert stats.wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert stats.wilson(15, 148) == pytest.approx((0.0624, 0.1605), abs=1e-4)
    assert stats.wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    lo, hi = stats.wilson(153, 153)
    assert hi == 1.0 and lo == pytest.approx(153 / (153 + stats.Z95 ** 2))


def test_mcnemar_exact_p_and_interval():
    ref = np.array([True] * 100)
    out = ref.copy()
    out[:2] = False  # two lost, none gained
    m = stats.mcnemar(ref, out)
    assert (m.lost, m.gained, m.change) == (2, 0, -0.02)
    assert m.p_value == pytest.approx(0.5)
    assert m.low < m.change < m.high and m.high > 0  # not resolvable: the interval holds 0
    out[:10] = False
    m = stats.mcnemar(ref, out)
    assert m.p_value == pytest.approx(2 / 2 ** 10) and m.high < 0
    assert stats.binomial_two_sided(5, 10) == 1.0
    assert stats.binomial_two_sided(1, 6) == pytest.approx(2 * 7 / 64)


def test_topk_agreement_counts_the_reference_class_in_the_files_top_k():
    ref = np.eye(10)[[0, 1, 2]]
    out = np.array([np.arange(10)[::-1], np.arange(10), np.arange(10)], float)  # class 0 best, then 9..
    hit = stats.topk_agreement(ref, out, 3)
    assert hit.tolist() == [True, False, False]  # image 1: class 1 ranks 9th; image 2: class 2 ranks 8th
    assert stats.topk_agreement(ref, out, 9).tolist() == [True, True, True]


def test_topk_agreement_ranks_ties_as_argsort_does():
    """uint8 outputs tie often: the reference's class at score 0 among 8 other zeros is not in the top 2 unless its
    index comes first (as np.argmax and `tledge run --top-k` order them)."""
    out = np.zeros((3, 10))
    out[:, 9] = 200  # every image: class 9 confident, the rest tied at 0
    ref = np.eye(10)[[0, 5, 9]]
    assert stats.topk_agreement(ref, out, 2).tolist() == [True, False, True]
    order = np.argsort(-out, axis=1, kind="stable")[:, :2]
    assert [r in row for r, row in zip([0, 5, 9], order)] == [True, False, True]


def _two_class(n, flips, rng):
    """n images, a reference that is right on 80 %, a file that flips the first `flips` right answers."""
    labels = rng.integers(0, 2, n)
    right = np.arange(n) >= n // 5
    ref_top = np.where(right, labels, 1 - labels)
    ref = np.eye(2)[ref_top] * 0.6 + 0.2
    out_top = ref_top.copy()
    idx = np.flatnonzero(right)[:flips]
    out_top[idx] = 1 - out_top[idx]
    return ref, np.eye(2)[out_top] * 0.6 + 0.2, labels


def test_small_drop_on_153_images_is_reported_not_failed(rng=np.random.default_rng(0)):
    ref, out, labels = _two_class(153, 2, rng)  # agreement 0.987, accuracy -1.3 pt (2 lost, 0 gained)
    r = compare(ref, out, file="m.tflite", format="tflite", precision="int8", thresholds=INT8, labels=labels)
    assert r.passed, r.failures
    assert r.accuracy_change == pytest.approx(-2 / 153) and r.mcnemar_p == pytest.approx(0.5)
    assert r.agreement_ci[0] < 0.98 < r.agreement_ci[1]
    text = " ".join(r.warnings)
    assert "cannot show top-1 agreement >= 0.98" in text and "0.65 accuracy points" in text
    assert "not resolvable on 153 images" in text
    strict = compare(ref, out, file="m", format="tflite", precision="int8", labels=labels,
                     thresholds=Thresholds(min_agreement=0.98, max_accuracy_drop=0.01, significance=None))
    assert not strict.passed and "1.3 points below" in strict.failures[0]


def test_a_real_drop_fails_even_within_the_agreement_budget(rng=np.random.default_rng(1)):
    ref, out, labels = _two_class(1000, 15, rng)  # agreement 0.985 passes; -1.5 pt, p ~ 6e-5
    r = compare(ref, out, file="m", format="onnx", precision="int8", thresholds=INT8, labels=labels)
    assert r.top1_agreement == pytest.approx(0.985)
    assert not r.passed and len(r.failures) == 1 and "McNemar p=6.1e-05" in r.failures[0]
    assert not any("cannot show" in w for w in r.warnings)  # 1000 images resolve a 0.98 agreement rule


def _many_class(n, classes, rng):
    logits = rng.normal(size=(n, classes)).astype(np.float32)
    top2 = np.argsort(logits, 1)[:, -2:]
    return logits, top2


def test_many_classes_gate_on_top_k_not_near_ties(rng=np.random.default_rng(2)):
    ref, top2 = _many_class(1000, 1000, rng)
    out = ref.copy()
    rows = np.arange(20)  # 2 %: swap top-1 and top-2 (a near-tie flip); the reference class stays in top 5
    out[rows, top2[rows, 1]], out[rows, top2[rows, 0]] = ref[rows, top2[rows, 0]], ref[rows, top2[rows, 1]]
    r = compare(ref, out, file="m", format="tflite", precision="fp16", thresholds=Thresholds(min_agreement=0.99))
    assert r.top1_agreement == pytest.approx(0.98) and r.topk_agreement == 1.0 and r.top_k == 5
    assert r.passed, r.failures
    few = compare(ref[:, :10], out[:, :10], file="m", format="tflite", precision="fp16",
                  thresholds=Thresholds(min_agreement=0.99))
    assert few.top_k is None  # 10 classes: top-1 rules
    out[rows, top2[rows, 1]] = -100  # the reference's top-1 now ranks last in 2 % of the images
    r = compare(ref, out, file="m", format="tflite", precision="fp16", thresholds=Thresholds(min_agreement=0.99))
    assert not r.passed and r.failures[0].startswith("top-5 agreement 0.980")


def test_fidelity_sets_the_gate_in_force_at_many_classes_too(rng=np.random.default_rng(4)):
    """`--fidelity 0.999` on a 1000-class model changed nothing: it set the top-1 budget, which is not checked from
    20 classes on (top-5 is)."""
    from tledge.export.pipeline import ExportConfig, thresholds_for

    ref, _ = _many_class(1000, 1000, rng)
    out = ref.copy()
    out[:5, np.argmax(ref[:5], 1)] = -100  # 5 of 1000 images lose the reference class from the top 5: 0.995
    default = thresholds_for(ExportConfig())["int8"] if "int8" in thresholds_for(ExportConfig()) \
        else Thresholds.for_precision("int8")
    asked = thresholds_for(ExportConfig(fidelity=0.999))["int8"]
    assert compare(ref, out, file="m", format="onnx", precision="int8", thresholds=default).passed
    r = compare(ref, out, file="m", format="onnx", precision="int8", thresholds=asked)
    assert not r.passed and r.failures[0].startswith("top-5 agreement 0.995") and "< 0.999" in r.failures[0]


def test_markdown_shows_intervals_and_resolution(rng=np.random.default_rng(3)):
    ref, out, labels = _two_class(153, 2, rng)
    r = compare(ref, out, file="model_int8.tflite", format="tflite", precision="int8", thresholds=INT8, labels=labels)
    md = ParityReport(images=153, results=[r]).to_markdown()
    lo, hi = r.agreement_ci
    assert f"0.987 [{lo:.3f}, {hi:.3f}]" in md and "-1.3 pt [" in md and "p=0.5" in md
    assert "## Statistical resolution" in md
    assert math.isclose(stats.images_needed(0.98), 189, abs_tol=1)


def test_flips_are_split_into_near_ties_and_the_rest():
    """Of 3 flips, 2 sit where the reference's top-2 margin is under 0.1: the report says so, with the agreement on
    the images that are not near-ties; logits (not probabilities) get no such split."""
    p = np.array([0.9, 0.8, 0.2, 0.97, 0.52, 0.48, 0.53, 0.1, 0.95, 0.7], np.float32)
    ref = np.stack([1 - p, p], 1)
    out = ref.copy()
    for i in (4, 5, 9):  # two near-ties (margins 0.04) and one confident image (margin 0.4) flipped
        out[i] = out[i][::-1]
    r = compare(ref, out, file="m.tflite", format="tflite", precision="int8", thresholds=Thresholds(min_agreement=0.9))
    assert r.near_tie_flips == 2 and r.confident == (6, 7), r  # image 6 (margin 0.06) is a near-tie that held
    assert r.failures[0].endswith("< 0.9 (2 of 3 flips are near-ties)"), r.failures
    md = ParityReport(images=10, results=[r]).to_markdown()
    assert "## Where the flips are" in md and "2 of 3 flips are near-ties (3 of 10 images are); agreement on the " \
        "other 7 images 0.857" in md, md
    logits = compare(ref * 5 - 2, out * 5 - 2, file="m.onnx", format="onnx", precision="int8",
                     thresholds=Thresholds(min_agreement=0.9))
    assert logits.near_tie_flips is None and logits.confident is None
    same = compare(ref, ref, file="f.tflite", format="tflite", precision="fp32", thresholds=Thresholds())
    assert same.near_tie_flips == 0 and "## Where the flips are" not in ParityReport(images=10, results=[same]).to_markdown()


def test_ties_the_reference_nearly_has_are_not_degenerate(rng=np.random.default_rng(5)):
    """A uint8 softmax over many classes (steps of 1/256) ties where Keras's own top-2 are closer than a step: 121
    such ties of 1300 photos rejected an int8 file that passed the top-5 and accuracy gates. Ties hiding a clear
    reference winner (a saturated output) still fail."""
    n, c = 200, 50
    logits = rng.normal(size=(n, c))
    logits[:, 0] += 3.0
    ref = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ref[:60, 1] = ref[:60, 0] - 0.001  # 30 %: a near-tie in the reference itself
    ref /= ref.sum(1, keepdims=True)
    out = np.round(ref * 256) / 256  # dequantised uint8 output
    assert np.sum(np.sort(out, 1)[:, -1] == np.sort(out, 1)[:, -2]) > n // 10
    r = compare(ref, out, file="m", format="tflite", precision="int8", thresholds=INT8)
    assert not any("tie for top-1" in f for f in r.failures), r.failures
    saturated = out.copy()
    saturated[:60, 2] = saturated[:60, 0] = 1.0  # the reference gives class 2 nothing
    r = compare(ref, saturated, file="m", format="tflite", precision="int8", thresholds=INT8)
    assert any("60 images with a tie for top-1" in f for f in r.failures), r.failures


def test_topk_agreement_boundary_is_k_classes_ahead():
    """In the top k: fewer than k classes score above the reference's class (k ahead -> out, k - 1 ahead -> in)."""
    ref = np.eye(6)[[0, 0]]
    out = np.full((2, 6), -1.0)
    out[:, 0] = 0.0
    out[0, 1:4] = 1.0  # 3 classes above class 0
    out[1, 1:3] = 1.0  # 2 classes above class 0
    assert stats.topk_agreement(ref, out, 3).tolist() == [False, True]


def _paired(n, lost, gained):
    ref = np.ones(n, bool)
    out = ref.copy()
    out[:lost] = False
    ref[lost:lost + gained] = False
    return ref, out


@pytest.mark.parametrize("lost,gained,n", [(2, 0, 100), (10, 3, 500)])
def test_mcnemar_interval_is_agresti_min(lost, gained, n):
    """Agresti & Min (2005): half an observation added to each of the four paired cells (n + 2 in all), then the
    Wald interval of p21 - p12 with variance (p12 + p21 - d^2) / (n + 2)."""
    p12, p21 = (lost + 0.5) / (n + 2), (gained + 0.5) / (n + 2)
    d = p21 - p12
    half = stats.Z95 * math.sqrt((p12 + p21 - d * d) / (n + 2))
    m = stats.mcnemar(*_paired(n, lost, gained))
    assert (m.lost, m.gained) == (lost, gained)
    assert (m.low, m.high) == pytest.approx((d - half, d + half), abs=1e-12)


def test_a_drop_fails_when_the_interval_excludes_zero_even_if_mcnemar_does_not(rng=np.random.default_rng(6)):
    """Either test suffices: 5 lost, 0 gained of 200 has p = 2 / 2^5 = 0.0625 (>= 0.05), but the Agresti-Min
    interval of the change lies below 0, so a drop of 2.5 points against a 1-point budget fails."""
    ref, out, labels = _two_class(200, 5, rng)
    t = Thresholds(min_agreement=0.9, max_accuracy_drop=0.01, significance=0.05)
    r = compare(ref, out, file="m.tflite", format="tflite", precision="int8", thresholds=t, labels=labels)
    p12, p21 = 5.5 / 202, 0.5 / 202
    high = (p21 - p12) + stats.Z95 * math.sqrt((p12 + p21 - (p21 - p12) ** 2) / 202)
    assert r.mcnemar_p == pytest.approx(2 / 2 ** 5) and r.mcnemar_p >= t.significance
    assert r.accuracy_change_ci[1] == pytest.approx(high) and high < 0
    assert not r.passed and any("5 lost, 0 gained" in f for f in r.failures), (r.failures, r.warnings)


def test_many_classes_boundary_switches_to_top_k_at_exactly_many_classes(rng=np.random.default_rng(7)):
    t = Thresholds()
    for classes, top_k in [(t.many_classes, t.top_k), (t.many_classes - 1, None)]:
        ref = rng.normal(size=(50, classes))
        r = compare(ref, ref, file="m", format="tflite", precision="fp32", thresholds=t)
        assert r.top_k == top_k, classes
