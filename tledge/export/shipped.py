"""What the int8 fidelity loop (tledge.export.fidelity) says about the file it ships when a rung passed: which rung,
why, and its batch-1 latency against the plain int8 file it replaced and the fp32 file, measured in turns. (The
last resort, when none passed, is tledge.export.fallback.)"""
from __future__ import annotations

from tledge import artifacts
from tledge.export.parity import TURN_THREADS, ParityResult, latencies_in_turns


def note(plain: ParityResult, best: ParityResult, kept: str, held, outcome, ctx, original: bytes) -> None:
    """Mark the kept rung's attempt row and say in the notes why it ships, and at what latency. `ctx`, `outcome`: the
    loop's FidelityContext and FidelityOutcome; `original`: the plain file's bytes."""
    also = f"; `{held[0]}` passed too, with a larger mean error {held[1].mean_abs_error:.3g}" \
        if held and held[0] != kept else ""
    row = next(a for a in outcome.attempts if a["file"] == plain.file and a["rung"] == kept)
    row["kept"] = True
    why = "passed, but the val set cannot confirm it" if plain.passed else "missed the budget"
    outcome.notes.append(f"{plain.file}: plain {plain.precision} {why} ({_gated(plain)}); "
                         f"kept `{kept}` ({_gated(best)}, mean abs {best.mean_abs_error:.3g}, "
                         f"max abs {best.max_abs_error:.3g}){also}{_latency(plain, kept, row, ctx, original)}")


def _gated(r: ParityResult) -> str:
    """The agreement the gate weighed: top-1, or top-k (with top-1 beside it) for many classes."""
    if r.topk_agreement is not None:
        return f"top-{r.top_k} agreement {r.topk_agreement:.3f}, top-1 {r.top1_agreement:.3f}"
    return f"agreement {r.top1_agreement:.3f}"


def _latency(plain: ParityResult, kept: str, row: dict, ctx, original: bytes) -> str:
    """The kept file's batch-1 latency against the plain file it replaced and the fp32 file, measured in turns
    (`parity.latencies_in_turns`), into its attempt row (`latency_in_turns_ms`); the text for its note."""
    if kept == "plain":
        return ""
    path, fp32 = ctx.out / plain.file, ctx.out / artifacts.lookup(plain.format, "fp32").filename
    try:
        ms = latencies_in_turns({"kept": path, "plain": original, **({"fp32": fp32} if fp32.is_file() else {})},
                                ctx.val_x, suffix=path.suffix)
    except Exception as exc:  # noqa: BLE001 - a figure, never a reason to lose the export
        return f"; latency not measured ({type(exc).__name__}: {exc})"
    row["latency_in_turns_ms"] = {k: round(v, 3) for k, v in ms.items()}
    fp = f", {ms['kept'] / ms['fp32']:.2f}x the fp32 file's" if "fp32" in ms else ""
    return (f"; batch-1 latency {ms['kept']:.2f} ms, {ms['kept'] / ms['plain']:.2f}x the plain file's{fp} (in turns, "
            f"{TURN_THREADS} thread)")
