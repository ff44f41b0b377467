"""The int8 repair ladder's time budget (`tledge export --repair-time SECONDS`, ExportConfig.repair_time).

The ladder (tledge.export.fidelity) runs for every failing int8 file in turn, one budget for all of them,
counted from the ladder's start (the Keras 3 rebuild included). Once it is spent no new rung starts; the rung
running then finishes (a conversion cannot be stopped half-way without losing its work). The rungs not started
are recorded as attempts rows with a `skipped` reason (parity.md, parity.json) and one note per file (the
terminal summary), and the best file so far is judged as usual: kept if it passes, else the loud fallback.

Why 300 s: MobileNet 0.25 ladders finish within ~30 s of repair, so the default never cuts them; a ResNet50 V2
or DenseNet121 ladder took 20-25 minutes on the 2-core test machine (docs/int8-fidelity.md, "Repair time").
"""
from __future__ import annotations

import time

REPAIR_SECONDS = 300.0  # the default budget (seconds of repair, every failing int8 file together)


def spent(budget: float | None, started: float) -> float | None:
    """Seconds since `started` (time.perf_counter) when they reach `budget` (None: no budget), else None."""
    elapsed = time.perf_counter() - started
    return elapsed if budget is not None and elapsed >= budget else None


def skip(file: str, rungs, budget: float, elapsed: float, attempts: list[dict], notes: list[str]) -> None:
    """Record the rungs of `file` that did not start because the budget was spent."""
    names = [r.name for r in rungs]
    if not names:
        return
    reason = f"repair time budget spent ({elapsed:.0f} s of {budget:g} s)"
    attempts.extend({"file": file, "rung": name, "skipped": reason, "seconds": None} for name in names)
    notes.append(f"{file}: the repair time budget ({budget:g} s, --repair-time) was spent after {elapsed:.0f} s; "
                 f"rung{'s' if len(names) > 1 else ''} not started: {', '.join(names)} (a larger --repair-time "
                 f"tries them)")


def skipped(attempts: list[dict], file: str) -> list[str]:
    """The rungs of `file` skipped for time."""
    return [a["rung"] for a in attempts if a["file"] == file and "skipped" in a]
