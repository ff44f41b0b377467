"""The int8 fidelity loop's last resort (tledge.export.fidelity): no rung met the budget, so the best int8 file is
kept aside in `rejected/` and a float file of the same format ships, loudly (fp16 TFLite, fp32 ONNX); an int8-only
target (Edge TPU) gets no fallback, and its export fails instead."""
from __future__ import annotations

import shutil
import warnings

from tledge.artifacts import REJECTED
from tledge.errors import TledgeWarning
from tledge.export import repair_budget
from tledge.export.parity import ParityResult, Thresholds, check_files, confirmable


def ship(plain: ParityResult, best: ParityResult, ctx, outcome) -> list[ParityResult]:
    """`ctx`, `outcome`: the loop's FidelityContext and FidelityOutcome. The int8 row stays failed (the export exits
    1: int8 was asked for and not delivered); the float file's row follows it."""
    # what failed the best file: top-1 agreement is not the gate from many classes on (a 10,000-class file was
    # said to miss "agreement 0.926" where a tie rule had failed it)
    why = best.failures[0] if best.failures else f"agreement {best.top1_agreement:.3f}"
    if ctx.int8_only:
        outcome.notes.append(f"{plain.file}: no repair met the int8 budget (best: {why}) and the target is "
                             "int8-only: no fallback")
        return [best]
    rejected = ctx.out / REJECTED
    rejected.mkdir(exist_ok=True)
    shutil.move(str(ctx.out / plain.file), rejected / plain.file)
    kind = plain.format
    fmt = write_float(kind, ctx)
    result = check_files(ctx.reference, [(ctx.out / fmt.filename, kind, fmt.precision)], ctx.val_x,
                         labels=ctx.val_y, thresholds=ctx.thresholds, threads=ctx.threads)[0]
    msg = (f"FALLBACK: {plain.file} could not meet the {plain.precision} budget (best: {why}, after "
           f"{repair_budget.tried(outcome.attempts, plain.file)}); it is kept in "
           f"{REJECTED}/ and {fmt.filename} ships instead" + ("" if result.passed else
                                                            f", though it fails parity too ({result.failures[0]})"
                                                            if result.failures else ", though it fails parity too"))
    msg += unresolved(best, Thresholds.lookup(ctx.thresholds, plain.file, plain.precision))
    warnings.warn(msg, TledgeWarning, stacklevel=3)
    outcome.notes.append(msg)
    best.file = f"{REJECTED}/{plain.file}"
    best.failures = list(best.failures) + [f"fell back to {fmt.filename}"]
    best.passed = False
    return [best, result]


def write_float(kind: str, ctx):
    """The float format that replaces a rejected int8 (or dynamic) file, written unless the export already did."""
    from tledge.export import formats as F

    fmt = F.FORMATS["tflite_fp16" if kind == "tflite" else "onnx_fp32"]
    if not (ctx.out / fmt.filename).is_file():
        serve, concrete = ctx.trace()
        F.write(fmt, ctx.out / fmt.filename, serve=serve, concrete=concrete, contract=ctx.contract,
                calib=ctx.calib, folder=ctx.out)
    return fmt


def unresolved(best: ParityResult, t: Thresholds) -> str:
    """What to add to the FALLBACK line when the val set was too small to tell the best file's agreement from the
    budget (its 95 % interval straddles it, and no result on that many images could be confirmed): on the 49 photos
    of a `tledge train` run's default split, one near-tie flip (48/49 = 0.980 [0.893, 0.996] < 0.98) sent the int8
    TFLite file to rejected/. The gate stays; the line says what would settle it. '' otherwise."""
    from tledge import stats

    ci, share, budget = (best.topk_ci, best.topk_agreement, t.min_topk_agreement) if best.topk_ci is not None else \
        (best.agreement_ci, best.top1_agreement, t.min_agreement)
    if ci is None or budget is None or share is None or share >= budget or confirmable(best, t) or ci[1] < budget:
        return ""
    return (f"; {best.images} val images cannot tell this file from the {budget:g} budget (one image is "
            f"{100 / best.images:.2f} points, its 95 % interval [{ci[0]:.3f}, {ci[1]:.3f}]): --val with "
            f"{stats.images_needed(budget)} or more photos can")
