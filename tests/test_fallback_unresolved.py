"""The FALLBACK line when the val set could not tell the best int8 file from its budget. On the 49 photos of a
`tledge train` run's default split (the outside audit of 2026-12-08), every TFLite rung ended at 48/49 = 0.980
[0.893, 0.996] < 0.98, one near-tie flip, and the line said only "could not meet the int8 budget": the gate stays, the
line now says the set cannot resolve it and how many photos can."""
from __future__ import annotations

from tledge import stats
from tledge.artifacts import Thresholds
from tledge.export.fallback import unresolved
from tledge.parity import ParityResult


def _result(agree: int, n: int, *, topk: int | None = None) -> ParityResult:
    r = ParityResult("model_int8.tflite", "tflite", "int8", n, 0.1, 0.01, 0.01, agree / n, None, None, False)
    r.agreement_ci = stats.wilson(agree, n)
    if topk is not None:
        r.topk_agreement, r.topk_ci = topk / n, stats.wilson(topk, n)
    return r


INT8 = Thresholds.lookup({}, "model_int8.tflite", "int8")


def test_one_flip_short_on_a_set_too_small_to_resolve_the_budget_is_said():
    text = unresolved(_result(48, 49), INT8)
    assert text.startswith("; 49 val images cannot tell this file from the 0.98 budget (one image is 2.04 points")
    assert f"{stats.images_needed(INT8.min_agreement)} or more photos" in text and "[0.893, 0.996]" in text


def test_a_clear_miss_a_set_that_can_resolve_it_or_another_failure_says_nothing_more():
    assert unresolved(_result(140, 153), INT8) == ""  # 0.915 [0.860, 0.950]: the set does tell it from 0.98
    assert unresolved(_result(190, 200), INT8) == ""  # 200 photos can confirm 0.98: a miss there is a miss
    assert unresolved(_result(153, 153), INT8) == ""  # agreement met: it failed on something else (accuracy)


def test_many_classes_are_judged_by_their_top_k_budget():
    r = _result(900, 1000, topk=985)  # top-5 0.985 [0.975, 0.991] against 0.99 on 1000 photos (1000 >= 381)
    assert unresolved(r, INT8) == ""
    small = _result(180, 200, topk=197)  # 200 photos cannot confirm 0.99 (381 can)
    assert "0.99 budget" in unresolved(small, INT8)
