"""The int8 fidelity loop (issue 7): when a plain int8 file misses its parity budget, try repairs in
order of cost, measure each by parity against the ORIGINAL model, keep the first that passes (a graph-level
rung that passes with a weight repair still ahead waits for that repair, and so does a plain pass the val set
cannot confirm: `_one_file`, `parity.unconfirmed`; where the val set is too small to confirm any pass, the
float-stem repair rung runs before the graph-level ones: `_stem_repair_first`).

Rungs (`LADDER`, in order of cost, each one's seconds recorded):
  1. `onnx-bias` (ONNX, any loader): bias correction on the float graph for the plain file's int8
     weights (tledge.quant.onnx_bias; ~2 s); `tflite-bias` (TFLite, any loader): the same on the plain
     int8 file itself, its int32 biases against the fp32 file's weights and tap means (tledge.quant.tflite_bias;
     ~2 s; still all-int8); then, without a Keras 3 model (none could be rebuilt), `tflite-rounding`: the plain int8
     file's weights re-rounded (GPTQ) and its biases re-fit op by op on its own int8 activations
     (tledge.quant.tflite_rounding; ~10-15 s for MobileNet 0.25; still all-int8);
  2. `repaired-stem6` (CPU targets only): BN folding, an exact input grid, adaptive rounding + bias
     correction of every kernel on the calibration images (`repair.apply`), the first 6 convolutions
     and what precedes them kept float (selective quantisation). Before the all-int8 repair: cheaper,
     more faithful, and about as fast on x86 on LiteRT (docs/int8-fidelity.md; it looked faster while the plain
     files paid a [3]-constant normalisation; 6 rather than 4 since the eighteenth session:
     "The float stem: 6 convolutions"); for ONNX then `repaired-stem6+translated`: that rung's int8 TFLite file
     translated to ONNX (tledge.export.onnx_translate), so the ONNX file computes the grids the repair simulated.
     A translated rung whose TFLite file the TFLite ladder already built moves up to just after the first repair
     rung (`_built_translations_early`: seconds, not a repair);
  3. `calibration-percentile` (ONNX): onnxruntime's Percentile calibration instead of MinMax;
  4. `repaired`: the same repair with no float stem (still all-int8, Edge TPU friendly);
  5. `repaired+bias` (ONNX): the same, then the graph bias correction on the file's own weight grid;
     `repaired-stem6+mse`: the stem repair with every activation's upper bound cut by least squared error, in the
     repair's simulation and in the file (tledge.quant.ranges; long-tailed activations such as swish inputs); for ONNX
     first `repaired-stem6+mse+translated` (its TFLite file, translated);
  6. `sensitive` (no Keras 3 model): the activations whose rounding moves the output most, measured on
     held-out calibration images of the export's fp32 ONNX graph, stay precise, cheapest first
     (tledge.quant.sensitivity): ONNX int16, TFLite float ops (the traced function calibrated, the ops
     around the chosen activations denylisted, matched by layer name);
  7. `repaired-stem6+sensitive` (the stem plus the most sensitive activations: TFLite float ops, the repair
     re-run with the layers around them float on their original weights; ONNX int16 activations on the stem
     repair's weights) and `repaired+sensitive` (the same without
     a stem, for models too small for one);
  8. last resort, loudly (tledge.export.fallback): the int8 file is moved to `rejected/` and replaced by fp16
     (TFLite) / fp32 (ONNX), unless the target is int8-only (Edge TPU), where the export fails instead.
`ctx.repair_time`: no rung starts after it and a weight repair running stops (tledge.export.repair_budget).
For int8-only targets the stem and sensitivity rungs never apply (tledge.quant.registry): their ladder
is onnx-bias / tflite-bias (then tflite-rounding without a Keras 3 model), calibration-percentile, repaired,
repaired+bias.

The Keras-level rungs need a Keras 3 model (tledge.export.repair_model): tf_keras files are rebuilt as one
(tledge.quant.rebuild), SavedModels from the export's float TFLite graph (tledge.quant.from_tflite), each
checked equal; where that fails they get the graph-level rungs (onnx-bias, tflite-bias, tflite-rounding,
sensitive), calibration choices and the fallback.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from tledge.artifacts import filename_of
from tledge._deps import blas_threads
from tledge.contract import Contract
from tledge.errors import RepairTimeout, TledgeError
from tledge.export import fallback, repair_budget, shipped
from tledge.export.parity import ParityResult, Thresholds, check_files, confirmable, confirmed
from tledge.io import raise_if_disk


@dataclass(frozen=True)
class Rung:
    name: str
    repair: bool = True  # run repair.apply first (needs a Keras 3 model)
    stem: int = 0  # convolutions kept float (0: all-int8)
    calibrate: str = "minmax"  # ONNX calibration method
    graph: str | None = None  # a tledge.quant technique on the converted graph (any loader)
    mixed: bool = False  # sensitivity-chosen activations kept precise (tledge.quant.sensitivity)
    keras_free: bool = False  # only where no Keras 3 model exists (else the Keras-level rungs do it, and
    # share their repair with the other format)
    ranges: str = "minmax"  # activation grids' ranges in the repair and the file (tledge.quant.ranges)
    translated: bool = False  # ONNX: the rung's int8 TFLite file translated (tledge.export.onnx_translate), not
    # quantised by onnxruntime

    @property
    def techniques(self) -> tuple[str, ...]:
        """The tledge.quant.registry entries this rung applies."""
        names = ("weight-repair",) if self.repair else ()
        names += ("float-layers",) if self.stem else ()
        names += ("percentile-calibration",) if self.calibrate == "percentile" else ()
        names += ("sensitive-precision",) if self.mixed else ()
        names += ("mse-ranges",) if self.ranges == "mse" else ()
        names += ("tflite-translation",) if self.translated else ()
        return names + ((self.graph,) if self.graph else ())


STEM = 6  # convolutions of the float stem (4 until the eighteenth session; docs "The float stem: 6 convolutions")
LADDER: tuple[Rung, ...] = (
    Rung("onnx-bias", repair=False, graph="onnx-bias"),
    Rung("tflite-bias", repair=False, graph="tflite-bias"),  # the same on the int8 TFLite file itself
    Rung("tflite-rounding", repair=False, graph="tflite-rounding", keras_free=True),  # GPTQ + bias, int8 inputs
    Rung(f"repaired-stem{STEM}", stem=STEM),  # CPU targets: the cheaper repair pass, the more faithful file
    Rung(f"repaired-stem{STEM}+translated", stem=STEM, translated=True),  # ONNX: that rung's TFLite file, translated
    Rung("calibration-percentile", repair=False, calibrate="percentile"),
    Rung("repaired"),
    Rung("repaired+bias", graph="onnx-bias"),  # the ONNX grid may not be the repair's (U8U8)
    Rung(f"repaired-stem{STEM}+mse+translated", stem=STEM, ranges="mse", translated=True),  # ONNX, as above
    Rung(f"repaired-stem{STEM}+mse", stem=STEM, ranges="mse"),  # long-tailed activations (swish): finer grids
    Rung("sensitive", repair=False, mixed=True, keras_free=True),  # the export's own float graph
    Rung(f"repaired-stem{STEM}+sensitive", stem=STEM, mixed=True),  # more precise layers where the stem is not enough
    Rung("repaired+sensitive", mixed=True),  # models too small for a stem
)


MIN_LAYERS_PER_STEM = 3  # a float stem of k convolutions needs >= 3k conv/dense layers in the model


def _linear_layers(model) -> int:
    """Conv / depthwise / dense layers, nested models included."""
    kinds = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense", "Conv1D")
    n = 0
    for layer in getattr(model, "layers", []):
        n += _linear_layers(layer) if hasattr(layer, "layers") else type(layer).__name__ in kinds
    return n


@dataclass
class FidelityContext:
    """What the loop needs from the export pipeline."""

    lm: object  # loader.LoadedModel
    contract: Contract
    add_norm: str | None
    calib: np.ndarray
    reference: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray | None
    out: Path
    thresholds: dict[str, Thresholds]
    int8_only: bool = False  # Edge TPU and other int8-only targets: no float stems, no fallback
    threads: int | None = None
    explain: bool = False
    traced: tuple | None = None  # (serve, concrete): the export's own loader.trace, traced here when None
    repair_time: float | None = None  # seconds after which no new rung starts (tledge.export.repair_budget)
    float_tflite_bytes: bytes | None = None  # the fp32 TFLite graph, read or converted once (`float_tflite`)

    def trace(self):
        """The export's (serve, concrete function), traced once."""
        from tledge.export import loader

        if self.traced is None:
            self.traced = loader.trace(self.lm, self.contract, self.add_norm)
        return self.traced

    def float_tflite(self) -> bytes:
        """The export's fp32 TFLite graph: its `model_fp32.tflite`, or where the export wrote none (`--formats onnx`)
        the traced function converted here, once, and written nowhere. The SavedModel rebuild (tledge.export.
        repair_model) and the TFLite graph rungs start from it: an ONNX-only export of a SavedModel got no Keras
        rebuild, so no weight repair (`onnx-bias` shipped where the both-format export's file was `repaired-stem6`,
        and a model no graph rung saves fell back to fp32)."""
        if self.float_tflite_bytes is None:
            from tledge.export import tflite

            fp32 = self.out / filename_of("tflite", "fp32")
            self.float_tflite_bytes = fp32.read_bytes() if fp32.is_file() else tflite.convert(self.trace()[1], "fp32")
        return self.float_tflite_bytes


@dataclass
class FidelityOutcome:
    results: dict[str, list[ParityResult]]  # plain int8 file name -> its final row(s)
    attempts: list[dict] = field(default_factory=list)  # every rung tried, with its parity figures
    notes: list[str] = field(default_factory=list)
    explain_md: str = ""
    reused: dict[str, int] = field(default_factory=dict)  # what later rungs took from earlier ones
    started: float = field(default_factory=time.perf_counter)  # the ladder's start, for ctx.repair_time


def improve(failing: Sequence[ParityResult], ctx: FidelityContext) -> FidelityOutcome:
    """Run the ladder for each failing int8 file; return the final parity rows."""
    from tledge.export import diagnosis, repair_model, tflite
    from tledge.export.rungs import Shared

    outcome = FidelityOutcome(results={})
    model, note = repair_model.pixel_model_and_note(ctx)
    cache = Shared(model, ctx.contract, ctx.calib, ctx.out,  # what the rungs share (tledge.export.rungs)
                   trace=ctx.trace, float_ops=tflite.float_ops_for(ctx.int8_only))
    if note:
        outcome.notes.append(note)
    plain_onnx = ctx.out / filename_of("onnx", "int8")
    plain_bytes = plain_onnx.read_bytes() if plain_onnx.is_file() else None  # for the diagnosis
    try:
        with blas_threads(1):
            for k, plain in enumerate(failing, 1):  # the k-th file starts no rung after its share of the budget
                limit = repair_budget.share(ctx.repair_time, k, len(failing))
                outcome.results[plain.file] = _one_file(plain, ctx, model, cache, outcome, limit)
    finally:
        outcome.reused = dict(cache.hits)
        shutil.rmtree(ctx.out / ".fidelity", ignore_errors=True)
    # the per-layer diagnosis is slow (minutes on a loaded 2-core machine): only for --explain, or when
    # the ladder could not deliver
    if ctx.explain or any(not rows[0].passed for rows in outcome.results.values()):
        outcome.explain_md = diagnosis.explain(ctx, model, plain_bytes, lambda: ctx.trace()[1])
    return outcome


def _applies(rung: Rung, plain: ParityResult, ctx: FidelityContext, model) -> bool:
    from tledge.quant import registry

    if rung.repair and model is None:
        return False
    if rung.keras_free and model is not None and not ctx.int8_only:
        return False  # with a Keras 3 model the repaired variants run (int8-only targets get no stem: both)
    if registry.check(rung.techniques, plain.format, int8_only=ctx.int8_only):
        return False
    if plain.precision == "dynamic":  # int8 weights, float activations: only the weight repair applies
        return rung.repair and not rung.stem and not rung.mixed
    # sensitivity scores on held-out calibration images (every third): 1 or 2 images held out none, and the rung
    # raised ("need at least one array to concatenate")
    return not rung.mixed or ctx.calib is None or len(ctx.calib) >= MIN_SENSITIVITY_IMAGES


MIN_SENSITIVITY_IMAGES = 6  # calibration images the sensitivity rungs need: 2 held out to score on


def _one_file(plain: ParityResult, ctx: FidelityContext, model, cache, outcome: FidelityOutcome,
              limit: float | None = None) -> list[ParityResult]:
    """The ladder for one failing (or unconfirmed: `parity.unconfirmed`) file. A rung that passes ends it, except a pass
    the val set cannot confirm (the lower 95 % bound of its agreement under the budget) while a weight repair is
    still ahead: that pass (a graph-level rung's, or the plain file's) is held, the first repair rung runs too, and
    of the passing files the one with the lower val mean error ships: it ranks them as 1300 other photos do, a flip
    count on 153 cannot (docs/int8-fidelity.md, "Which passing rung ships", "Unconfirmed plain passes"). No rung
    starts `limit` (default: ctx.repair_time) seconds after the ladder's start (tledge.export.repair_budget)."""
    limit = ctx.repair_time if limit is None else limit
    cache.stop = repair_budget.stopper(limit, outcome.started)  # a weight repair running stops there too
    outcome.attempts.append(_row(plain, "plain"))
    cache.original(ctx.out / plain.file)  # kept for the graph rungs: a better rung's file replaces it
    rungs = [r for r in LADDER if _applies(r, plain, ctx, model)
             and not (r.stem and _linear_layers(model) < MIN_LAYERS_PER_STEM * r.stem)]  # a stem of most of it
    best, kept, held = plain, "plain", None  # held: (name, result) of the first pass while the repair rung runs
    deferred: tuple[Rung, ...] = ()
    if plain.passed:  # an unconfirmed plain pass (improve's `unconfirmed`): held while the first repair rung runs
        rungs, held = [r for r in rungs if r.repair][:1], ("plain", plain)
        if not rungs:  # no Keras 3 model: nothing to weigh it against
            return [plain]
    elif not confirmable(plain, _threshold(ctx, plain.file, plain.precision)):
        rungs, deferred = _stem_repair_first(rungs)
    rungs = _built_translations_early(rungs, cache)
    for i, rung in enumerate(rungs):
        if held and (not rung.repair or rung.translated):  # a held pass waits for a further repair, not for another
            continue  # file of one already tried
        elapsed = repair_budget.spent(limit, outcome.started)
        # past the budget no new rung starts (with a pass held, only this repair rung was still to run), except the
        # deferred bias rungs, which were due before the stem repair that `_stem_repair_first` moved ahead of them
        if elapsed is not None and rung not in deferred:
            repair_budget.skip(plain.file, [rung] if held else rungs[i:], limit, ctx.repair_time, elapsed,
                               outcome.attempts, outcome.notes)
            break
        start = time.perf_counter()
        tried = _try_rung(rung, plain, ctx, cache, outcome, start)
        if tried is None:
            if held:
                break
            continue
        result, data, applied = tried
        extra = {"float_layers": applied["float_layers"]} if "float_layers" in applied else {}
        outcome.attempts.append({**_row(result, rung.name), **extra, "seconds": round(time.perf_counter() - start, 2)})
        if _better(result, best):
            best, kept = result, rung.name
            _install(ctx.out / plain.file, data)
        if held:
            break
        if result.passed:
            if rung.repair or confirmed(result, _threshold(ctx, plain.file, plain.precision)) \
                    or not any(r.repair for r in rungs[i + 1:]):
                break
            held = (rung.name, result)
    if not best.passed:
        return fallback.ship(plain, best, ctx, outcome)
    shipped.note(plain, best, kept, held, outcome, ctx, cache.original(ctx.out / plain.file))
    return [best]


def _try_rung(rung: Rung, plain: ParityResult, ctx: FidelityContext, cache, outcome: FidelityOutcome, start):
    """`_attempt` one rung (started at `start`): (result, data, applied), or None when it raised (the error row and
    note recorded)."""
    try:
        return _attempt(rung, plain, ctx, cache, outcome.notes)
    except Exception as exc:  # noqa: BLE001 - one technique failing on an unusual graph must not lose the export
        raise_if_disk(exc)  # a full disk is no rung's failure: the export stops, its folder as it was
        error = str(exc) if isinstance(exc, TledgeError) else f"internal error: {type(exc).__name__}: {exc}"
        outcome.attempts.append({"file": plain.file, "rung": rung.name, "error": error,
                                 "seconds": round(time.perf_counter() - start, 2)})
        if isinstance(exc, RepairTimeout):
            outcome.notes.append(f"{plain.file}: rung `{rung.name}` stopped part-way (--repair-time): {error}")
        if not isinstance(exc, TledgeError):
            outcome.notes.append(f"{plain.file}: rung `{rung.name}` failed on this model ({error}); the "
                                 f"ladder went on without it (a tledge bug: please report it with the model)")
        return None


def _stem_repair_first(rungs: list[Rung]) -> tuple[list[Rung], tuple[Rung, ...]]:
    """On a val set that cannot confirm any pass (`parity.confirmable`), a passing graph-level rung only waits for
    the first repair rung, which ships whenever it passes too (its val mean error was 0.5-0.7x the bias rungs' on
    every zoo model: docs/int8-fidelity.md, "Which passing rung ships"). So a float-stem repair rung (CPU targets)
    runs first and the graph rungs before it only if it fails: 5-9 s less per MobileNet 0.25 export. Returns the
    rungs and the ones moved behind it, which still start after a repair the time budget stopped (they were due
    before it)."""
    first = next((i for i, r in enumerate(rungs) if r.repair), None)
    if first is None or not rungs[first].stem:  # int8-only and dynamic files: the graph rungs stay first
        return rungs, ()
    return [rungs[first], *rungs[:first], *rungs[first + 1:]], tuple(rungs[:first])


def _built_translations_early(rungs: list[Rung], cache) -> list[Rung]:
    """An ONNX rung translating a TFLite file the TFLite ladder has already built costs no repair, calibration or
    onnxruntime quantisation (12-21 s on the family sweep's models alone, up to 114 s for Xception under load: the
    translation and parity): such rungs move up to just after the first repair rung (the twenty-third session's
    EfficientNetB0 export spent its time budget before reaching one)."""
    ready = [r for r in rungs if r.translated and cache.has_tflite(r.stem, r.ranges)]
    rest = [r for r in rungs if r not in ready]
    first = next((i for i, r in enumerate(rest) if r.repair), None)
    if not ready or first is None:
        return rungs
    return [*rest[:first + 1], *ready, *rest[first + 1:]]


def _better(a: ParityResult, b: ParityResult) -> bool:
    """Of two passing files the one with the lower mean error (less noisy than a flip count on few photos);
    otherwise passing first, then agreement, then the typical image's error."""
    if a.passed and b.passed:
        return a.mean_abs_error < b.mean_abs_error
    return (a.passed, a.top1_agreement, -a.median_image_max_abs) > (b.passed, b.top1_agreement, -b.median_image_max_abs)


def _row(r: ParityResult, rung: str) -> dict:
    return {"file": r.file, "rung": rung, "agreement": r.top1_agreement, "accuracy": r.accuracy,
            "max_abs": r.max_abs_error, "mean_abs": r.mean_abs_error, "median_image_max_abs": r.median_image_max_abs,
            "latency_ms": r.latency_ms, "passed": r.passed, "failures": list(r.failures),
            "agreement_ci": r.agreement_ci, "topk_agreement": r.topk_agreement,
            "accuracy_change": r.accuracy_change, "accuracy_change_ci": r.accuracy_change_ci}


def _install(dst: Path, data: bytes) -> None:
    from tledge.io import atomic_write_bytes

    atomic_write_bytes(dst, data)


# ---- one attempt ------------------------------------------------------------------------------
def _attempt(rung: Rung, plain: ParityResult, ctx: FidelityContext, cache,
             notes: list[str]) -> tuple[ParityResult, bytes, dict]:
    """Convert with this rung's repairs into a scratch file, check parity against the original."""
    from tledge.export import mixed
    from tledge.export.tflite import fixed_batch
    from tledge.quant.sensitivity import onnx_overrides

    kind, precision = plain.format, plain.precision
    src = cache.repaired_model(rung.stem, ranges=rung.ranges) if rung.repair else None
    applied = {"int8_repair": rung.name, "float_convolutions": rung.stem,
               "onnx_calibration": rung.calibrate if kind == "onnx" and not rung.translated else None}
    if rung.translated:
        applied["onnx_translated_from"] = "int8 TFLite"
    if rung.ranges != "minmax":
        applied["activation_ranges"] = rung.ranges
    sel = mixed.selection(src, ctx, cache, stem=rung.stem, ranges=rung.ranges) if rung.mixed else None
    key = rung.stem if rung.ranges == "minmax" else (rung.stem, rung.ranges)  # what the converted files are
    # shared under (None: this rung's own model)
    if sel is not None:
        if not sel.layers:
            raise TledgeError(f"no layer worth raising: {sel.summary()}")
        applied.update(mixed.contract_extra(sel, kind))
        if src is None and kind == "tflite":  # no Keras 3 model: calibrate the export's own traced function
            src, key = fixed_batch(ctx.trace()[1]), None  # the TFLite files' batch
        elif src is not None and kind == "tflite":  # float ops: a repair that keeps their original weights
            src, applied["original_weights"] = mixed.float_weights(cache, rung.stem, sel, rung.ranges)
            key = None
    if rung.graph in ("tflite-bias", "tflite-rounding"):  # on the plain file (a repaired file's weights are
        # not the rounding of the fp32 file's: every op would be skipped, and the rung fail)
        data = cache.tflite_graph(rung.graph, cache.original(ctx.out / plain.file), ctx.float_tflite(), applied)
    elif rung.translated:
        data = cache.onnx_translated(src, rung, applied, key)
    elif kind == "tflite":
        data = cache.tflite(src, rung.stem, applied, dynamic=precision == "dynamic", key=key,
                            layers=sel.layers if sel else (), ranges=rung.ranges)
    else:
        data = cache.onnx(src, rung, applied, overrides=onnx_overrides(sel) if sel else None)
    if sel is not None:
        notes.append(mixed.note(plain.file, sel, kind, applied.get("layers_left_int8", [])))
    scratch = cache.scratch / f"{rung.name}_{precision}.{kind}"
    scratch.write_bytes(data)
    result = check_files(ctx.reference, [(scratch, kind, precision)], ctx.val_x, labels=ctx.val_y,
                         thresholds={precision: _threshold(ctx, plain.file, precision)}, threads=ctx.threads)[0]
    result.file = plain.file
    return result, data, applied


def _threshold(ctx: FidelityContext, name: str, precision: str) -> Thresholds:
    return Thresholds.lookup(ctx.thresholds, name, precision)
