"""Which rung the int8 loop keeps (tledge.export.fidelity._one_file's rule), with scripted parity results:
a passing graph-level rung is held while the first weight-repair rung runs, and of the passing files the one
with the lower mean error ships. (Why: docs/int8-fidelity.md, "Which passing rung ships".)"""

import pytest

from tledge.export import fallback, fidelity, parity
from tledge.parity import ParityResult

STEM_RUNG = f"repaired-stem{fidelity.STEM}"  # the float-stem repair rung (fidelity.STEM convolutions)


def _result(passed: bool, mean_abs: float, agreement: float, n: int = 153, kind: str = "onnx") -> ParityResult:
    from tledge.stats import wilson

    return ParityResult(file=f"model_int8.{kind}", format=kind, precision="int8", images=n, max_abs_error=0.1,
                        mean_abs_error=mean_abs, median_image_max_abs=mean_abs, top1_agreement=agreement,
                        accuracy=None, reference_accuracy=None, passed=passed,
                        agreement_ci=wilson(round(agreement * n), n))


class _Cache:
    def original(self, path):
        return b""

    def has_tflite(self, stem, ranges="minmax"):  # no TFLite file built: translated rungs keep their place
        return False


def _run(tmp_path, script: dict, model, kind: str = "onnx", int8_only: bool = False, plain=None, cache=None):
    """Run the ladder for one plain ONNX file (`plain`: its scripted parity, default a failing one); `script`
    maps rung name -> (passed, mean abs, agreement)."""
    tried, installed = [], []

    def attempt(rung, plain, ctx, cache, notes):
        tried.append(rung.name)
        if rung.name not in script:
            raise fidelity.TledgeError("not scripted")
        return _result(*script[rung.name], kind=kind), rung.name.encode(), {}
    ctx = fidelity.FidelityContext(lm=None, contract=None, add_norm=None, calib=None, reference=None, val_x=None,
                                   val_y=None, out=tmp_path, thresholds={}, int8_only=int8_only)
    outcome = fidelity.FidelityOutcome(results={})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fidelity, "_attempt", attempt)
        mp.setattr(fidelity, "_install", lambda dst, data: installed.append(data.decode()))
        mp.setattr(fidelity, "_linear_layers", lambda m: 100)
        mp.setattr(fallback, "ship", lambda plain, best, ctx, outcome: ["fallback", best])
        rows = fidelity._one_file(plain or _result(False, 0.05, 0.94, kind=kind), ctx, model, cache or _Cache(),
                                  outcome)
    return rows, tried, installed, outcome.notes


def test_a_passing_bias_rung_is_held_while_the_repair_runs_and_the_lower_error_ships(tmp_path):
    # int8-only: no float stem, so the graph rung comes first and its pass waits for the all-int8 repair
    rows, tried, installed, notes = _run(tmp_path, {"onnx-bias": (True, 0.018, 0.987),
                                                    "repaired": (True, 0.009, 0.980)}, model=object(), int8_only=True)
    assert tried == ["onnx-bias", "repaired"]  # calibration-percentile and the rest are not tried
    assert installed == ["onnx-bias", "repaired"] and rows[0].mean_abs_error == 0.009
    assert "kept `repaired`" in notes[-1] and "`onnx-bias` passed too" in notes[-1]
    # CPU targets: a failing stem repair runs first; the bias pass behind it waits for the next repair rung
    rows, tried, installed, notes = _run(tmp_path, {STEM_RUNG: (False, 0.03, 0.967),
                                                    "onnx-bias": (True, 0.018, 0.987),
                                                    "repaired": (True, 0.009, 0.980)}, model=object())
    assert tried == [STEM_RUNG, "onnx-bias", "repaired"]  # calibration-percentile skipped while held
    assert installed == [STEM_RUNG, "onnx-bias", "repaired"] and rows[0].mean_abs_error == 0.009
    assert "kept `repaired`" in notes[-1] and "`onnx-bias` passed too" in notes[-1]


def test_on_a_val_set_that_cannot_confirm_a_pass_the_stem_repair_runs_before_the_graph_rungs(tmp_path):
    """153 photos cannot confirm 0.98 (189 can): a graph rung's pass would only wait for repaired-stem6, which ships
    whenever it passes too, so it runs first and the graph rungs only after it fails."""
    rows, tried, installed, notes = _run(tmp_path, {"onnx-bias": (True, 0.018, 0.987),
                                                    STEM_RUNG: (True, 0.009, 0.980)}, model=object())
    assert tried == [STEM_RUNG] and installed == [STEM_RUNG] and f"kept `{STEM_RUNG}`" in notes[-1]
    _, tflite, _, _ = _run(tmp_path, {}, model=object(), kind="tflite")
    assert tflite[:3] == [STEM_RUNG, "tflite-bias", "calibration-percentile"] or \
        tflite[:2] == [STEM_RUNG, "tflite-bias"]
    for n, first in ((188, STEM_RUNG), (189, "onnx-bias")):  # the order turns where n/n could confirm 0.98
        _, tried, _, _ = _run(tmp_path, {}, model=object(), plain=_result(False, 0.05, 0.94, n))
        assert tried[0] == first, n
    _, tried, _, _ = _run(tmp_path, {}, model=None)  # no Keras 3 model: no repair rung to put first
    assert tried[0] == "onnx-bias"


def test_a_pass_the_val_set_confirms_ends_the_ladder_at_once(tmp_path):
    """2000 photos at 0.995 put the lower 95 % bound (0.991) over the 0.98 budget: no repair needed to decide."""
    rows, tried, _, _ = _run(tmp_path, {"onnx-bias": (True, 0.018, 0.995, 2000),
                                        STEM_RUNG: (True, 0.009, 0.996, 2000)}, model=object(),
                             plain=_result(False, 0.05, 0.94, 2000))
    assert tried == ["onnx-bias"] and rows[0].mean_abs_error == 0.018


def test_the_held_rung_ships_when_the_repair_fails_or_is_less_precise(tmp_path):
    rows, tried, installed, _ = _run(tmp_path, {"onnx-bias": (True, 0.018, 0.987),
                                                "repaired": (False, 0.010, 0.967)}, model=object(), int8_only=True)
    assert tried == ["onnx-bias", "repaired"] and installed == ["onnx-bias"] and rows[0].passed
    rows, _, installed, _ = _run(tmp_path, {"onnx-bias": (True, 0.018, 0.987),
                                            "repaired": (True, 0.020, 0.993)}, model=object(), int8_only=True)
    assert installed == ["onnx-bias"] and rows[0].mean_abs_error == 0.018
    # CPU targets: the stem repair failed first, the bias pass is held, the next repair rung is less precise
    rows, tried, installed, _ = _run(tmp_path, {STEM_RUNG: (False, 0.010, 0.967),
                                                "onnx-bias": (True, 0.018, 0.987),
                                                "repaired": (True, 0.020, 0.993)}, model=object())
    assert tried == [STEM_RUNG, "onnx-bias", "repaired"] and rows[0].mean_abs_error == 0.018


def test_an_unconfirmed_plain_pass_is_weighed_against_the_first_repair_rung_only(tmp_path):
    """153 photos at 0.993 (lower bound 0.964) cannot confirm a 0.98 budget: the first repair rung runs, the lower
    mean error ships; graph-level rungs and later repairs do not run."""
    plain = _result(True, 0.012, 0.993)
    rows, tried, installed, notes = _run(tmp_path, {STEM_RUNG: (True, 0.008, 0.987)}, model=object(),
                                         plain=plain)
    assert tried == [STEM_RUNG] and installed == [STEM_RUNG] and rows[0].mean_abs_error == 0.008
    assert "plain int8 passed, but the val set cannot confirm it" in notes[-1] and "`plain` passed too" in notes[-1]
    for script in ({STEM_RUNG: (True, 0.015, 0.993)}, {STEM_RUNG: (False, 0.010, 0.967)}, {}):
        rows, tried, installed, notes = _run(tmp_path, script, model=object(), plain=plain)
        assert tried == [STEM_RUNG] and installed == [] and rows[0] is plain  # never the fallback
    _, tried, _, _ = _run(tmp_path, {}, model=object(), plain=plain, int8_only=True)
    assert tried == ["repaired"]  # no stem for an int8-only target
    rows, tried, _, notes = _run(tmp_path, {}, model=None, plain=plain)
    assert tried == [] and rows == [plain] and notes == []  # no Keras 3 model: no repair to weigh it against


def test_only_int8_passes_the_val_set_cannot_confirm_are_weighed():
    thresholds = {}
    small, large = _result(True, 0.01, 0.993), _result(True, 0.01, 0.996, n=2000)
    failing, dynamic = _result(False, 0.05, 0.94), _result(True, 0.01, 0.993)
    dynamic.precision = "dynamic"
    assert parity.unconfirmed([small, large, failing, dynamic], thresholds) == [small]


def test_without_a_keras_model_the_first_pass_ends_the_ladder(tmp_path):
    rows, tried, _, _ = _run(tmp_path, {"onnx-bias": (True, 0.018, 0.987)}, model=None)
    assert tried == ["onnx-bias"] and rows[0].passed


def test_a_repair_rung_that_passes_first_ends_the_ladder_and_failures_fall_back(tmp_path):
    rows, tried, _, _ = _run(tmp_path, {"onnx-bias": (False, 0.03, 0.974), STEM_RUNG: (True, 0.01, 0.987)},
                             model=object(), int8_only=False)
    assert tried == [STEM_RUNG] and rows[0].passed
    rows, tried, _, _ = _run(tmp_path, {"onnx-bias": (False, 0.03, 0.974), "repaired": (True, 0.01, 0.987)},
                             model=object(), int8_only=True)
    assert tried == ["onnx-bias", "calibration-percentile", "repaired"] and rows[0].passed
    rows, tried, _, _ = _run(tmp_path, {}, model=object())
    assert rows[0] == "fallback" and "repaired+sensitive" in tried


def test_int8_only_targets_get_the_tflite_graph_repair_even_with_a_keras_model(tmp_path):
    """No float stem for an Edge TPU: the all-int8 `repaired` is the only Keras rung, and on the seed-1
    MobileNet it reaches 0.961 where `tflite-rounding` reaches 0.980, so both run."""
    _, tried, _, _ = _run(tmp_path, {}, model=object(), kind="tflite", int8_only=True)
    assert tried == ["tflite-bias", "tflite-rounding", "repaired"]
    _, tried, _, _ = _run(tmp_path, {}, model=object(), kind="tflite")
    assert "tflite-rounding" not in tried and STEM_RUNG in tried


def test_a_rung_that_crashes_is_recorded_and_the_ladder_goes_on(tmp_path):
    """A technique that breaks on an unusual graph (before the fix, MobileNetV3's bare `x + 3.0` ops made the
    weight repair raise AttributeError) costs that rung, not the export."""
    tried, script = [], {"onnx-bias": (False, 0.03, 0.974), "repaired": (True, 0.01, 0.987)}

    def attempt(rung, plain, ctx, cache, notes):
        tried.append(rung.name)
        if rung.name == STEM_RUNG:
            raise AttributeError("'Add' object has no attribute 'get_weights'")
        if rung.name not in script:
            raise fidelity.TledgeError("not scripted")
        return _result(*script[rung.name]), rung.name.encode(), {}
    ctx = fidelity.FidelityContext(lm=None, contract=None, add_norm=None, calib=None, reference=None, val_x=None,
                                   val_y=None, out=tmp_path, thresholds={}, int8_only=False)
    outcome = fidelity.FidelityOutcome(results={})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fidelity, "_attempt", attempt)
        mp.setattr(fidelity, "_install", lambda dst, data: None)
        mp.setattr(fidelity, "_linear_layers", lambda m: 100)
        rows = fidelity._one_file(_result(False, 0.05, 0.94), ctx, object(), _Cache(), outcome)
    assert STEM_RUNG in tried and tried[-1] == "repaired" and rows[0].passed
    crashed = next(a for a in outcome.attempts if a["rung"] == STEM_RUNG)
    assert crashed["error"].startswith("internal error: AttributeError")
    assert any(f"`{STEM_RUNG}` failed on this model" in n for n in outcome.notes)


class _Clock:
    """Stands in for repair_budget's clock: each scripted rung takes `per_rung` seconds."""

    def __init__(self, per_rung: float):
        self.now, self.per_rung = 0.0, per_rung

    def perf_counter(self) -> float:
        return self.now


def _budgeted(tmp_path, script: dict, budget: float | None, per_rung: float = 100.0):
    """Like `_run`, with --repair-time `budget` and a clock that `per_rung` seconds pass in each rung."""
    from tledge.export import repair_budget

    clock, tried = _Clock(per_rung), []

    def attempt(rung, plain, ctx, cache, notes):
        tried.append(rung.name)
        clock.now += clock.per_rung
        if rung.name not in script:
            raise fidelity.TledgeError("not scripted")
        return _result(*script[rung.name]), rung.name.encode(), {}
    ctx = fidelity.FidelityContext(lm=None, contract=None, add_norm=None, calib=None, reference=None, val_x=None,
                                   val_y=None, out=tmp_path, thresholds={}, repair_time=budget)
    outcome = fidelity.FidelityOutcome(results={}, started=0.0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(repair_budget, "time", clock)
        mp.setattr(fidelity, "_attempt", attempt)
        mp.setattr(fidelity, "_install", lambda dst, data: None)
        mp.setattr(fidelity, "_linear_layers", lambda m: 100)
        mp.setattr(fallback, "ship", lambda plain, best, ctx, outcome: ["fallback", best])
        rows = fidelity._one_file(_result(False, 0.05, 0.94), ctx, object(), _Cache(), outcome)
    return rows, tried, outcome


def test_once_the_repair_time_is_spent_no_new_rung_starts_and_the_rest_are_reported(tmp_path):
    _, every, unlimited = _budgeted(tmp_path, {}, budget=None)
    assert len(every) >= 5 and not any("skipped" in a for a in unlimited.attempts)
    # 100 s per rung and a 150 s budget: the first two rungs start (at 0 and 100 s), none after 200 s
    rows, tried, outcome = _budgeted(tmp_path, {}, budget=150.0)
    assert tried == every[:2] and rows[0] == "fallback"  # the best so far is judged: it fails, so the fallback
    skipped = [a for a in outcome.attempts if "skipped" in a]
    assert [a["rung"] for a in skipped] == every[2:]
    assert all(a["skipped"] == "repair time budget spent (200 s of 150 s)" and a["seconds"] is None for a in skipped)
    note = outcome.notes[-1]
    assert note.startswith("model_int8.onnx: the repair time budget (150 s, --repair-time) was spent after 200 s")
    assert f"; rungs not started: {', '.join(every[2:])} (" in note  # every skipped rung is named


def test_a_repair_running_when_the_budget_is_spent_stops_and_is_reported(tmp_path):
    """The ladder hands its rungs a stop callback (tledge.export.repair_budget.stopper): a repair that asks it after
    the budget is spent stops (RepairTimeout), its row says so, and no rung starts after it."""
    from tledge.errors import RepairTimeout
    from tledge.export import repair_budget

    clock, tried = _Clock(0.0), []

    def attempt(rung, plain, ctx, cache, notes):
        tried.append(rung.name)
        clock.now += 60.0  # what runs before the repair's kernels (a conversion: it is not stopped)
        if not rung.repair:  # a graph rung never asks
            return _result(False, 0.05, 0.94), b"", {}
        assert cache.stop() is None
        clock.now += 60.0
        why = cache.stop()  # what repair.quantize_weights asks before each kernel
        if why:
            raise RepairTimeout(f"the weight repair stopped after 3 of 28 kernels: {why}")
        return _result(False, 0.05, 0.94), b"", {}
    ctx = fidelity.FidelityContext(lm=None, contract=None, add_norm=None, calib=None, reference=None, val_x=None,
                                   val_y=None, out=tmp_path, thresholds={}, repair_time=100.0)
    outcome = fidelity.FidelityOutcome(results={}, started=0.0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(repair_budget, "time", clock)
        mp.setattr(fidelity, "_attempt", attempt)
        mp.setattr(fidelity, "_linear_layers", lambda m: 100)
        mp.setattr(fallback, "ship", lambda plain, best, ctx, outcome: ["fallback", best])
        rows = fidelity._one_file(_result(False, 0.05, 0.94), ctx, object(), _Cache(), outcome)
    # the graph rung put behind the stem repair (due before it) still starts; nothing after it does
    assert tried == [STEM_RUNG, "onnx-bias"] and rows[0] == "fallback"
    stopped = outcome.attempts[1]
    assert stopped["rung"] == STEM_RUNG and stopped["error"] == (
        "the weight repair stopped after 3 of 28 kernels: repair time budget spent (120 s of 100 s)")
    assert outcome.attempts[2]["rung"] == "onnx-bias" and "skipped" not in outcome.attempts[2]
    note = f"model_int8.onnx: rung `{STEM_RUNG}` stopped part-way (--repair-time): the weight repair stopped after 3"
    assert outcome.notes[0].startswith(note)
    assert all("skipped" in a for a in outcome.attempts[3:]) and len(outcome.attempts) > 3


def test_a_budget_spent_while_a_pass_is_held_ships_the_held_pass(tmp_path):
    """repaired-stem6 fails, onnx-bias passes unconfirmed and would wait for `repaired`; out of time, only that rung
    is skipped."""
    rows, tried, outcome = _budgeted(tmp_path, {STEM_RUNG: (False, 0.03, 0.967),
                                                "onnx-bias": (True, 0.018, 0.987),
                                                "repaired": (True, 0.009, 0.980)}, budget=150.0)
    assert tried == [STEM_RUNG, "onnx-bias"] and rows[0].passed and rows[0].mean_abs_error == 0.018
    assert [(a["rung"], "skipped" in a) for a in outcome.attempts] == [
        ("plain", False), (STEM_RUNG, False), ("onnx-bias", False), ("repaired", True)]
    assert "kept `onnx-bias`" in outcome.notes[-1] and "not started: repaired" in outcome.notes[-2]


def test_a_budget_the_ladder_fits_in_changes_nothing(tmp_path):
    script = {STEM_RUNG: (False, 0.03, 0.967), f"{STEM_RUNG}+translated": (False, 0.03, 0.967),
              "onnx-bias": (False, 0.03, 0.974), "calibration-percentile": (False, 0.03, 0.974),
              "repaired": (True, 0.01, 0.987)}
    rows, tried, outcome = _budgeted(tmp_path, script, budget=450.0)  # the pass comes at 500 s
    assert tried == [STEM_RUNG, "onnx-bias", f"{STEM_RUNG}+translated", "calibration-percentile", "repaired"]
    assert rows[0].passed
    assert not any("skipped" in a for a in outcome.attempts)


@pytest.mark.parametrize("seconds", [0.0, -1.0, float("nan")])
def test_the_python_api_refuses_a_repair_time_that_is_not_positive(tmp_path, seconds):
    from tledge.errors import TledgeError
    from tledge.export.pipeline import ExportConfig, export

    with pytest.raises(TledgeError, match=r"^--repair-time must be > 0 seconds, got "):
        export(tmp_path / "missing.keras", ExportConfig(out=tmp_path / "out", int8=True, calib="random",
                                                          repair_time=seconds))
    assert not (tmp_path / "out").exists()  # refused before the export folder is made


def test_the_budget_is_shared_so_a_later_file_still_gets_rungs(tmp_path):
    """Two failing files, 100 s per rung, a 290 s budget: the first may start rungs until 145 s (at 0 and 100 s),
    the second until 290 s (its stem repair at 200 s, then the graph rung put behind it at 300 s). Without the
    share the first would take all three and leave none."""
    import time

    from tledge.export import diagnosis, repair_budget, repair_model

    clock, tried = _Clock(100.0), []
    clock.now = time.perf_counter()  # the ladder's start is read from the real clock

    def attempt(rung, plain, ctx, cache, notes):
        tried.append((plain.file, rung.name))
        clock.now += clock.per_rung
        return _result(False, 0.05, 0.94, kind=plain.format), b"", {}
    files = [_result(False, 0.05, 0.94, kind=kind) for kind in ("tflite", "onnx")]
    for f in files:
        (tmp_path / f.file).write_bytes(b"plain")
    ctx = fidelity.FidelityContext(lm=None, contract=None, add_norm=None, calib=None, reference=None, val_x=None,
                                   val_y=None, out=tmp_path, thresholds={}, repair_time=290.0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(repair_budget, "time", clock)
        mp.setattr(repair_model, "pixel_model_and_note", lambda ctx: (object(), None))
        mp.setattr(fidelity, "_attempt", attempt)
        mp.setattr(fidelity, "_linear_layers", lambda m: 100)
        mp.setattr(fallback, "ship", lambda plain, best, ctx, outcome: [best])
        mp.setattr(diagnosis, "explain", lambda ctx, model, plain, concrete: "")
        outcome = fidelity.improve(files, ctx)
    assert [f for f, _ in tried] == ["model_int8.tflite"] * 2 + ["model_int8.onnx"] * 2
    assert tried[2][1] == next(a["rung"] for a in outcome.attempts if a["file"] == "model_int8.onnx"
                               and a["rung"] != "plain")  # the ONNX ladder from its first rung
    first = next(n for n in outcome.notes if n.startswith("model_int8.tflite"))
    assert "its share of the repair time budget (145 of 290 s, split between the failing int8 files, " \
           "--repair-time) was spent after 200 s" in first
    last = next(n for n in outcome.notes if n.startswith("model_int8.onnx"))
    assert "the repair time budget (290 s, --repair-time) was spent after 400 s" in last
    reasons = {a["file"]: a["skipped"] for a in outcome.attempts if "skipped" in a}
    assert reasons == {"model_int8.tflite": "share of the repair time budget spent (200 s of 145 s; budget 290 s)",
                       "model_int8.onnx": "repair time budget spent (400 s of 290 s)"}


class _Built(_Cache):
    def has_tflite(self, stem, ranges="minmax"):  # the TFLite ladder built the stem repair's mse file
        return (stem, ranges) == (fidelity.STEM, "mse")


def test_a_translation_of_a_tflite_file_already_built_runs_right_after_the_first_repair(tmp_path):
    """Translating a TFLite file the TFLite ladder built costs seconds, so it comes before the repairs and
    calibrations still ahead (the twenty-third session's EfficientNetB0 export spent its budget before it)."""
    mse = f"{STEM_RUNG}+mse+translated"
    script = {STEM_RUNG: (False, 0.03, 0.967), mse: (True, 0.01, 0.987)}
    rows, tried, installed, _ = _run(tmp_path, script, model=object(), cache=_Built())
    assert tried == [STEM_RUNG, mse] and installed[-1] == mse and rows[0].passed
    rows, tried, _, _ = _run(tmp_path, script, model=object())  # not built: the rung keeps its place
    assert tried[:3] == [STEM_RUNG, "onnx-bias", f"{STEM_RUNG}+translated"] and mse in tried
    assert tried.index(mse) > tried.index("repaired") and rows[0].passed
    # TFLite files never get a translated rung
    _, tried, _, _ = _run(tmp_path, {STEM_RUNG: (False, 0.03, 0.967)}, model=object(), kind="tflite", cache=_Built())
    assert not any(name.endswith("translated") for name in tried)
